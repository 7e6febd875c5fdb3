"""One histogram view of all prunable |w|: exact Global MP counts, thresholds, critical sparsities, MT.

Global MP (Gupta et al., "Is Complexity Required for Neural Network Pruning?")
prunes the `round(s * N)` smallest magnitudes of all N prunable weights. The
float32 bit patterns of non-negative numbers order like the numbers, so the
index keeps, per layer, a cumulative histogram of the high 16 bits of |w|
(2**15 bins, one read of the weights) and, only for the few bins a question
lands in, the sorted exact bit patterns found there (one more read, batched for
many questions). Every count stays exact to the weight while the index holds a
few hundred kilobytes per layer instead of a sorted copy of the weights; the
weights themselves are read again, a chunk at a time, when a new bin is needed.

Pruning order, which makes every count exact and every mask deterministic:
ascending |w|, then layer order (parameter order), then flat index. Weights that
are already zero therefore go first. Masks are nested: a higher sparsity prunes
a superset.

Minimum Threshold (MT): each layer keeps its `min(MT, size)` last weights in
that order (its largest), and the global order runs over the remaining ones.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch

from collapsekit.analysis.boolops import greater
from collapsekit.analysis.heap import rows_per_block
from collapsekit.analysis.threads import in_threads
from collapsekit.errors import CollapsekitError
from collapsekit.spec import fraction, read_number
from collapsekit.analysis.prunable import PrunableWeight
from collapsekit.analysis.timing import progress as bar

_FLOAT32_INF_BITS = 0x7F800000
_ABS_BITS = 0x7FFFFFFF  # clears the sign: |w| as a float32 bit pattern
_SHIFT = 16  # a bin holds the |w| sharing their high 16 bits (sign, exponent, 7 mantissa bits)
_BINS = 1 << (31 - _SHIFT)
SPARSE = 0.02  # a layer keeping at most this share of its weights is served by kept positions (kept_positions)
_CHUNK = 1 << 20  # weights per read: bounds every temporary to a few MB
# A cache miss (a count in a bin not read yet) fetches neighbouring bins too, up to
# this fraction of all weights, so a bisection over counts costs one or two reads.
_WINDOW = 1 / 64
_WINDOW_MIN = 1 << 16


def resolve_mt(mt, total: int) -> int:
    """The per-layer MT count for `mt`, read the same in Python and on the command line.

    An integer (``96``, ``"96"``) is a count of weights per layer; a decimal
    (``0.05``, ``"0.05"``) or ``"N%"`` is a percent of all `total` prunable weights,
    as the reference code's ``--min-threshold`` (Gupta et al.; default 0.05 %). A
    positive percent keeps at least one weight. None means no MT.
    """
    if mt is None or mt is False:
        return 0
    value, percent = read_number(mt, "MT", "a count (96) nor a percent (0.05 or 0.05%)")
    value = float(value) if percent else value
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise CollapsekitError(f"MT count must be >= 0, got {mt!r}")
        return int(value)
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 100.0:
        raise CollapsekitError(f"MT percent must lie in [0, 100], got {mt!r}")
    return max(1, round(value / 100.0 * total)) if value > 0 else 0


def sparsity_to_count(sparsity: float, total: int) -> int:
    """`round(s * N)`, the exact number of weights Global MP prunes (Invariant 1)."""
    s = fraction(sparsity)  # 0.95 or "95%"
    if not (0.0 <= s < 1.0):
        hint = f" (for {s:g} percent write {s:g}%)" if 1.0 <= s < 100.0 else ""
        raise CollapsekitError(f"sparsity must lie in [0, 1), got {sparsity!r}{hint}")
    return int(round(s * total))


@dataclass(frozen=True)
class Allocation:
    """How many weights each layer loses at one global count `k`, and the threshold |w| reached."""

    k: int
    pruned: np.ndarray  # int64 per layer
    threshold: float  # magnitude of the last weight pruned (0.0 when k == 0)


def bits_to_float(bits: int) -> float:
    """The non-negative float32 whose bit pattern is `bits`."""
    return float(np.array(bits, dtype=np.int32).view(np.float32))


def abs_bits(tensor: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of |w| in float32 (on the tensor's device): ordered exactly like |w|.

    bf16 and fp16 widen to float32 exactly, so their order is kept too.
    """
    t = tensor.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    t = t.contiguous()
    if t.device.type == "cpu":  # numpy's & runs about 2x torch's on this CPU build (boolops.py)
        return torch.from_numpy(np.bitwise_and(t.numpy().view(np.int32), np.int32(_ABS_BITS)))
    return t.view(torch.int32) & _ABS_BITS


def line_maxima(tensor: torch.Tensor, rows: int, floor: int | None = None):
    """(row max, row argmax, column max, column argmax) of |w| bit patterns in the weight's
    [rows, -1] view, read a block of rows at a time (no whole-weight temporary).

    With `floor`, the same pass also reads the weights whose |w| bits are >= floor (as `_read_top`:
    flat positions, bit patterns) and returns (maxima, top): one pass over the layer, not two.
    """
    flat = tensor.detach().reshape(rows, -1)
    cols = flat.shape[1]
    step = rows_per_block(cols, _CHUNK)
    row_max, row_arg, col_max, col_arg = [], [], None, None
    top = _TopReader(floor, flat.numel()) if floor is not None else None
    for start in range(0, rows, step):
        bits = abs_bits(flat[start:start + step]).cpu()
        if top is not None:
            top.add(bits.numpy().reshape(-1), start * cols)
        rm, ra = bits.max(1)
        cm, ca = bits.max(0)
        row_max.append(rm)
        row_arg.append(ra)
        if col_max is None:
            col_max, col_arg = cm, ca + start
        else:
            better = cm > col_max
            col_max, col_arg = torch.where(better, cm, col_max), torch.where(better, ca + start, col_arg)
    maxima = torch.cat(row_max), torch.cat(row_arg), col_max, col_arg
    return maxima if top is None else (maxima, top.result())


class _TopReader:
    """Collects the flat positions and bit patterns of the weights whose |w| bits are >= `floor`, a chunk
    at a time (kept_positions' read of a layer's top weights)."""

    def __init__(self, floor: int, size: int):
        self.floor, self.size, self.positions, self.found = floor, size, [], []

    def add(self, bits: np.ndarray, start: int) -> None:
        at = np.flatnonzero(bits >= self.floor)
        self.positions.append(at + start)
        self.found.append(bits[at])

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = np.int32 if self.size < 2**31 else np.int64
        positions = np.concatenate(self.positions) if self.positions else np.zeros(0, np.int64)
        found = np.concatenate(self.found) if self.found else np.zeros(0, np.int32)
        return torch.from_numpy(positions.astype(dtype)), torch.from_numpy(found)


def _chunks(tensor: torch.Tensor):
    """The flat |w| bit patterns of `tensor` as numpy int32 arrays of at most _CHUNK weights."""
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        part = flat[start:start + _CHUNK]
        if part.device.type != "cpu":
            part = part.to("cpu")
        yield abs_bits(part).numpy()


_LITTLE_ENDIAN = sys.byteorder == "little"


def _bins_of(bits: np.ndarray) -> np.ndarray:
    """The bin (high 16 bits) of each int32 bit pattern: a view of their high halves where the machine
    is little-endian (no shifted copy), else the shift."""
    if _LITTLE_ENDIAN and bits.ndim == 1 and bits.flags.c_contiguous:
        return bits.view(np.uint16)[1::2]
    return bits >> _SHIFT


Runs = tuple  # (sorted distinct bit patterns, int64 running counts): one bin of one layer


def _runs(sorted_bits: np.ndarray) -> Runs:
    """Run-length form of sorted bits: a bin of bf16 weights (one value) costs two numbers."""
    if sorted_bits.size == 0:
        return sorted_bits, np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(np.diff(sorted_bits)) + 1
    values = sorted_bits[np.concatenate([[0], change])]
    return values, np.concatenate([change, [sorted_bits.size]]).astype(np.int64)


def _below(runs: Runs, u: int, side: str) -> int:
    """How many bits of `runs` are < u (side "left") or <= u ("right")."""
    values, ends = runs
    j = int(np.searchsorted(values, u, side=side))
    return int(ends[j - 1]) if j else 0


def _nth(runs: Runs, p: int) -> int:
    """The p-th (0-based) bit pattern of `runs` in ascending order."""
    values, ends = runs
    return int(values[int(np.searchsorted(ends, p, side="right"))])


class MagnitudeIndex:
    """Per-layer histograms of |w| bit patterns; answers Global MP questions exactly by counting.

    `tensors` may be any sequence whose items are read when a question needs them
    (live parameters, or tensors memory-mapped from a checkpoint); it is kept, not
    copied, and the weights must not change while the index is in use
    (`release(i)` ends the use of layer i).
    """

    def __init__(self, weights: list[PrunableWeight], tensors, progress: bool = False):
        self.weights = list(weights)
        self._tensors = tensors
        self.sizes = np.array([w.numel for w in self.weights], dtype=np.int64)
        self.total = int(self.sizes.sum())
        # cum[i, b]: weights of layer i in bins below b; top[i]: its largest |w| bits.
        self._cum = np.zeros((len(self.weights), _BINS + 1), dtype=np.int64)
        self._top = np.zeros(len(self.weights), dtype=np.int64)
        for i, w in bar(enumerate(self.weights), "index", progress, total=len(self.weights)):
            hist = torch.zeros(_BINS, dtype=torch.int64)
            top = -1
            for bits in _chunks(tensors[i]):
                top = max(top, int(bits.max()))
                hist += torch.bincount(torch.from_numpy(bits >> _SHIFT), minlength=_BINS)
            if top > _FLOAT32_INF_BITS:
                raise CollapsekitError(f"weight {w.name} contains NaN; cannot rank magnitudes")
            np.cumsum(hist.numpy(), out=self._cum[i, 1:])
            self._top[i] = top
        self._per_bin = np.diff(self._cum.sum(0))  # weights of all layers per bin
        self._fine: dict[int, list[Runs]] = {}  # bin -> per layer, the bits found in that bin
        self._local: dict[tuple[int, int], Runs] = {}  # (layer, bin) read for one layer only
        self._tops: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}  # layer -> (floor, positions, bits)
        self._densest_kept: dict[int, int] = {}  # layer -> fewest pruned kept_positions will be asked (expect_kept)
        self._released: set[int] = set()
        self._cuts: dict[tuple[int, int], tuple[int, int]] = {}  # (layer, pruned) -> cut
        self._critical: dict[int, np.ndarray] = {}  # MT -> critical_counts
        self._allocations: dict[tuple[int, int], Allocation] = {}  # (k, MT) -> allocate's answer

    def __getstate__(self) -> dict:
        """Pickled (built in a forked child and sent back: forked.Beside) without the weights, which stay
        where they are: `attach` gives them back."""
        return {**self.__dict__, "_tensors": None}

    def attach(self, tensors) -> None:
        """The weights of an index that came from another process (the same ones it was built from)."""
        self._tensors = tensors

    # -- reading bins -------------------------------------------------------------------
    def prefetch(self, ks, mt_count: int = 0) -> None:
        """Reads, in one pass over the weights, every bin the allocations of counts `ks` land in,
        and the bins of the layers' largest magnitudes (critical_counts)."""
        limits = self.sizes - self.protected(mt_count)
        self._fetch({self._bin_of_kth(int(k), limits) for k in ks if 0 < int(k) <= int(limits.sum())}
                    | self._top_bins(mt_count))

    def _top_bins(self, mt_count: int) -> set[int]:
        limits = self.sizes - self.protected(mt_count)
        return {int(self._top[i]) >> _SHIFT for i, n in enumerate(limits) if n == self.sizes[i] and n > 0}

    def _fetch(self, bins) -> None:
        bins = sorted(b for b in set(bins) if b not in self._fine)
        if not bins:
            return
        if self._released:
            raise RuntimeError("magnitude index asked for new bins after a layer was released")
        table = np.zeros(_BINS, dtype=bool)
        table[bins] = True
        edges = np.array([b << _SHIFT for b in bins] + [(bins[-1] + 1) << _SHIFT], dtype=np.int64)

        def read(i: int) -> list[np.ndarray]:
            parts = [bits[np.take(table, _bins_of(bits))] for bits in _chunks(self._tensors[i])]
            found = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int32)
            cuts = np.searchsorted(found, edges)
            return [found[cuts[j]:cuts[j + 1]] for j in range(len(bins))]

        per_layer = in_threads(read, range(len(self.weights)), torch.get_num_threads(), cost=self.sizes.__getitem__)
        for j, b in enumerate(bins):
            self._fine[b] = [_runs(layer[j]) for layer in per_layer]

    def _fetch_around(self, b: int) -> None:
        """Reads bin `b` and its neighbours while they hold at most _WINDOW of all weights."""
        counts = self._per_bin
        budget, lo, hi = max(int(self.total * _WINDOW), _WINDOW_MIN), b, b
        held = int(counts[b])
        while True:
            grown = False
            for nb in (lo - 1, hi + 1):
                if 0 <= nb < _BINS and nb not in self._fine and held + int(counts[nb]) <= budget:
                    held += int(counts[nb])
                    lo, hi, grown = min(lo, nb), max(hi, nb), True
            if not grown:
                break
        self._fetch(b for b in range(lo, hi + 1) if counts[b] > 0 or b in (lo, hi))

    def _bin(self, b: int) -> list[Runs]:
        if b not in self._fine:
            self._fetch_around(b)
        return self._fine[b]

    def _layer_bin(self, i: int, b: int) -> Runs:
        """Layer i's sorted bits in bin b, read from that layer alone when not fetched for all."""
        if b in self._fine:
            return self._fine[b][i]
        if (i, b) not in self._local:
            lo, hi = b << _SHIFT, (b + 1) << _SHIFT
            parts = [bits[(bits >= lo) & (bits < hi)] for bits in _chunks(self._tensors[i])]
            self._local[(i, b)] = _runs(np.sort(np.concatenate(parts)))
        return self._local[(i, b)]

    # -- counting -----------------------------------------------------------------------
    def _counts(self, u: int, side: str) -> np.ndarray:
        """Per layer, how many |w| bit patterns are < u (side "left") or <= u ("right")."""
        b = u >> _SHIFT
        return self._cum[:, b] + np.array([_below(r, u, side) for r in self._bin(b)], dtype=np.int64)

    def _bin_of_kth(self, k: int, limits: np.ndarray) -> int:
        # Smallest bin b with #{candidates in bins <= b} >= k; candidates are each
        # layer's `limits` smallest, so a layer contributes min(cum, limit).
        lo, hi = 0, _BINS - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if int(np.minimum(self._cum[:, mid + 1], limits).sum()) >= k:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _kth_value(self, k: int, limits: np.ndarray) -> int:
        """Bit pattern of the k-th smallest candidate magnitude (1-based)."""
        b = self._bin_of_kth(k, limits)
        below = np.minimum(self._cum[:, b], limits)
        rank = k - int(below.sum())  # 1-based rank inside bin b
        # Each layer's candidates inside bin b: its runs, counted up to what its limit leaves in the bin.
        values, steps = [], []
        for (v, ends), m in zip(self._bin(b), np.maximum(0, limits - self._cum[:, b])):
            if m > 0 and v.size:
                capped = np.minimum(ends, m)
                values.append(v)
                steps.append(np.diff(capped, prepend=0))
        # The smallest pattern with `rank` candidates at or below it: where the running count over the bin's
        # 2^_SHIFT patterns reaches it (a count per pattern, no sort of the merged runs; float64 counts are
        # exact below 2^53).
        base = b << _SHIFT
        per_pattern = np.bincount(np.concatenate(values) - base, weights=np.concatenate(steps),
                                  minlength=1 << _SHIFT)
        return base + int(np.searchsorted(np.cumsum(per_pattern), rank, side="left"))

    # -- allocation ---------------------------------------------------------------------
    def protected(self, mt_count: int) -> np.ndarray:
        """Weights each layer keeps whatever the sparsity: `min(MT, size)`."""
        return np.minimum(self.sizes, int(mt_count))

    def max_count(self, mt_count: int = 0) -> int:
        """The largest k Global MP can prune with this MT."""
        return int((self.sizes - self.protected(mt_count)).sum())

    def allocate(self, k: int, mt_count: int = 0) -> Allocation:
        """Exact per-layer pruned counts for a global count `k` (ties: layer order); remembered per (k, MT),
        its counts read-only: a report asks for one level's masks several times (its cover, emptied-set and
        flow questions), and on a transformer's 70+ layers an allocation costs milliseconds."""
        key = (int(k), int(mt_count))
        if key not in self._allocations:
            alloc = self._allocate(*key)
            alloc.pruned.setflags(write=False)
            self._allocations[key] = alloc
        return self._allocations[key]

    def _allocate(self, k: int, mt_count: int) -> Allocation:
        limits = self.sizes - self.protected(mt_count)
        if k < 0 or k > int(limits.sum()):
            raise CollapsekitError(
                f"cannot prune {k} of {self.total} weights with MT={mt_count} per layer: "
                f"at most {int(limits.sum())} are prunable (lower the sparsity or the MT)")
        if k == 0:
            return Allocation(0, np.zeros(len(self.sizes), dtype=np.int64), 0.0)
        u = self._kth_value(k, limits)
        lt = np.minimum(self._counts(u, "left"), limits)
        eq = np.minimum(self._counts(u, "right"), limits) - lt
        need = k - int(lt.sum())
        before = np.concatenate([[0], np.cumsum(eq)[:-1]])
        ties = np.clip(need - before, 0, eq)
        return Allocation(k, lt + ties, bits_to_float(u))

    def release(self, i: int) -> None:
        """Ends the use of layer i (its weights may change now): drops what was read of it."""
        self._released.add(i)
        self._cuts = {key: cut for key, cut in self._cuts.items() if key[0] != i}
        for key in [key for key in self._local if key[0] == i]:
            del self._local[key]
        self._tops.pop(i, None)

    # -- per-layer questions ------------------------------------------------------------
    def critical_counts(self, mt_count: int = 0) -> np.ndarray:
        """For each layer, the smallest global k that empties it (-1 where MT keeps it non-empty);
        computed once per MT (a report asks for its layers and for its boundary)."""
        if int(mt_count) not in self._critical:
            self._critical[int(mt_count)] = self._critical_counts(int(mt_count))
        return self._critical[int(mt_count)].copy()

    def _critical_counts(self, mt_count: int) -> np.ndarray:
        limits = self.sizes - self.protected(mt_count)
        out = np.full(len(self.sizes), -1, dtype=np.int64)
        eligible = [i for i, n in enumerate(limits) if n == self.sizes[i] and n > 0]
        self._fetch(self._top_bins(mt_count))  # one read for every layer's top (none after prefetch)
        for i in eligible:
            top = int(self._top[i])
            lt = np.minimum(self._counts(top, "left"), limits)
            le = np.minimum(self._counts(top, "right"), limits)
            # Everything smaller, the ties of earlier layers, and all of this layer's ties.
            out[i] = int(lt.sum()) + int((le - lt)[:i].sum()) + int(le[i] - lt[i])
        return out

    def critical_sparsities(self, mt_count: int = 0) -> np.ndarray:
        """Each layer's critical sparsity `k_crit / N`; 1.0 where it never empties."""
        counts = self.critical_counts(mt_count)
        return np.where(counts < 0, 1.0, counts / self.total)

    def cut(self, i: int, n: int) -> tuple[int, int]:
        """(v, surviving) for layer i with its first `n` weights in pruning order pruned (0 < n < size):
        it keeps every |w| whose bit pattern exceeds v, plus its last `surviving` ties at v in flat order.

        When n ends a histogram bin, v is that bin's top pattern (no tie survives) and no
        weight needs reading. Answers are kept: a flow asks for each layer's cut several times."""
        if (i, n) not in self._cuts:
            self._cuts[(i, n)] = self._cut(i, n)
        return self._cuts[(i, n)]

    def _cut(self, i: int, n: int) -> tuple[int, int]:
        row = self._cum[i]
        j = int(np.searchsorted(row, n, side="left"))  # row[j-1] < n <= row[j]
        if row[j] == n:
            return (j << _SHIFT) - 1, 0
        b = j - 1
        run = self._layer_bin(i, b)
        v = _nth(run, int(n - 1 - row[b]))
        le = int(row[b]) + _below(run, v, "right")
        return v, le - n

    def kept_positions(self, i: int, n: int, tensor: torch.Tensor) -> torch.Tensor | None:
        """Flat positions (ascending; int32 where the layer allows, as they are kept) of layer i's kept weights when its first `n` in pruning order
        are pruned, where it keeps at most SPARSE of its weights; None where it keeps more.

        At high sparsity the flow's questions about a layer (which rows keep a weight
        reading a live input, how many kept weights lie on a path) cost O(kept) from
        these, where a keep-mask costs several passes over every weight. The weights
        at or above the first cut asked are read once and kept (positions and bit
        patterns, at most SPARSE of the layer); sparser cuts select from them.
        """
        size = int(self.sizes[i])
        if n <= 0 or size - n > SPARSE * size:
            return None
        if n >= size:
            return torch.zeros(0, dtype=torch.int32 if size < 2**31 else torch.int64)
        v, surviving = self.cut(i, n)
        top = self._tops.get(i)
        if top is None or v < top[0]:
            floor = self._top_floor(i, n)
            top = self._tops[i] = (floor, *self._read_top(tensor, floor))
        _, positions, bits = top
        kept = positions[bits > v]
        if surviving:  # the ties at v that survive are the last ones in flat order
            kept = torch.sort(torch.cat([kept, positions[bits == v][-surviving:]])).values
        return kept

    def _top_floor(self, i: int, n: int) -> int:
        """The |w| bits down to which layer i's top weights are read when its first `n` are pruned: the cut of
        the densest level `expect_kept` was told of, where that is denser."""
        return self.cut(i, min(n, self._densest_kept.get(i, n)))[0]

    def expect_kept(self, allocations) -> None:
        """Tells kept_positions which allocations it will be asked about: its first read of a layer's top weights
        then reaches down to the densest of them that the layer's positions serve, and every other level selects
        from that read. Asked in another order (a report's sparsest level first, its others in forked workers),
        each denser level re-read the whole layer: ViT-base's forked phase read its 86 M weights three times."""
        for alloc in allocations:
            for i, n in enumerate(np.asarray(alloc.pruned).tolist()):
                size = int(self.sizes[i])
                if 0 < n < size and size - n <= SPARSE * size:
                    self._densest_kept[i] = min(self._densest_kept.get(i, n), n)

    @staticmethod
    def _read_top(tensor: torch.Tensor, v: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat positions as int32 where they fit, bit patterns) of the weights whose |w| bits are >= v."""
        top, start = _TopReader(v, tensor.numel()), 0
        for bits in _chunks(tensor):
            top.add(bits, start)
            start += bits.size
        return top.result()

    def line_maxima(self, i: int, tensor: torch.Tensor, rows: int) -> tuple:
        """magnitudes.line_maxima of layer i, reading in the same pass the top weights that kept_positions
        will be asked for (`expect_kept`) where they are not read yet: the cover's reads and the first
        sparse flow's were two passes over every linear weight (ViT-base: 0.6 s and 0.4 s)."""
        n = self._densest_kept.get(i)
        if n is None or i in self._tops:
            return line_maxima(tensor, rows)
        floor = self._top_floor(i, n)
        maxima, top = line_maxima(tensor, rows, floor)
        self._tops[i] = (floor, *top)
        return maxima

    def layer_masks(self, alloc: Allocation, tensors: list[torch.Tensor]):
        """Yields (index, bool keep-mask) per layer for `alloc`, one layer in memory at a time."""
        for i, (t, n) in enumerate(zip(tensors, alloc.pruned)):
            yield i, self.layer_mask(i, int(n), t)

    def layer_mask(self, i: int, n: int, tensor: torch.Tensor) -> torch.Tensor:
        """Keep-mask of layer `i` when its first `n` weights in pruning order are pruned."""
        size = int(self.sizes[i])
        if n <= 0:
            return torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        if n >= size:
            return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
        v, surviving = self.cut(i, n)
        flat_in = tensor.detach().reshape(-1)
        keep = torch.empty(size, dtype=torch.bool, device=tensor.device)
        with torch.no_grad():
            for start in range(0, size, _CHUNK):
                greater(abs_bits(flat_in[start:start + _CHUNK]), v, out=keep[start:start + _CHUNK])
            # The ties at v that survive are the last ones in flat order.
            for start in reversed(range(0, size, _CHUNK)) if surviving else ():
                ties = torch.nonzero(abs_bits(flat_in[start:start + _CHUNK]) == v).flatten()
                take = ties[max(0, ties.numel() - surviving):]
                keep[start + take] = True
                surviving -= take.numel()
                if surviving == 0:
                    break
        return keep.view(tensor.shape)
