"""One sorted view of all prunable |w|: exact Global MP counts, thresholds, critical sparsities, MT.

Global MP (Gupta et al., "Is Complexity Required for Neural Network Pruning?")
prunes the `round(s * N)` smallest magnitudes of all N prunable weights. The
index sorts each layer's magnitudes once (one float32 copy of the weights) and
answers every later question by binary search, so a whole report, or a prune,
costs one sort.

Pruning order, which makes every count exact and every mask deterministic:
ascending |w|, then layer order (parameter order), then flat index. Weights that
are already zero therefore go first. Masks are nested: a higher sparsity prunes
a superset.

Minimum Threshold (MT): each layer keeps its `min(MT, size)` last weights in
that order (its largest), and the global order runs over the remaining ones.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from collapsekit.errors import CollapsekitError
from collapsekit.analysis.prunable import PrunableWeight

_FLOAT32_INF_BITS = 0x7F800000


def resolve_mt(mt, total: int) -> int:
    """The per-layer MT count for `mt`, read the same in Python and on the command line.

    An integer (``96``, ``"96"``) is a count of weights per layer; a decimal
    (``0.05``, ``"0.05"``) or ``"N%"`` is a percent of all `total` prunable weights,
    as the reference code's ``--min-threshold`` (Gupta et al.; default 0.05 %). A
    positive percent keeps at least one weight. None means no MT.
    """
    if mt is None or mt is False:
        return 0
    value = _mt_from_text(mt) if isinstance(mt, str) else mt
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CollapsekitError(f"MT must be a count (96) or a percent (0.05 or 0.05%), got {type(mt).__name__}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise CollapsekitError(f"MT count must be >= 0, got {mt!r}")
        return int(value)
    if math.isnan(value) or not 0.0 <= value <= 100.0:
        raise CollapsekitError(f"MT percent must lie in [0, 100], got {mt!r}")
    return max(1, round(value / 100.0 * total)) if value > 0 else 0


def _mt_from_text(text: str) -> int | float:
    """"96" -> 96 (a count); "0.05", "1e-3" and "0.05%" -> percents as floats."""
    body = text.strip()
    try:
        if body.endswith("%"):
            return float(body[:-1])
        try:
            return int(body)
        except ValueError:
            return float(body)
    except ValueError:
        raise CollapsekitError(f"MT {text!r} is neither a count (96) nor a percent (0.05 or 0.05%)") from None


def sparsity_to_count(sparsity: float, total: int) -> int:
    """`round(s * N)`, the exact number of weights Global MP prunes (Invariant 1)."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise CollapsekitError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0):
        raise CollapsekitError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    return int(round(s * total))


@dataclass(frozen=True)
class Allocation:
    """How many weights each layer loses at one global count `k`, and the threshold |w| reached."""

    k: int
    pruned: np.ndarray  # int64 per layer
    threshold: float  # magnitude of the last weight pruned (0.0 when k == 0)


def _sorted_magnitudes(weight: PrunableWeight, tensor: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        mags = tensor.detach().abs().flatten().to(device="cpu", dtype=torch.float32)
    arr = mags.numpy()  # `abs()` made a fresh tensor: sorting it in place is safe
    arr.sort(kind="quicksort")
    if arr.size and np.isnan(arr[-1]):  # NaN sorts last
        raise CollapsekitError(f"weight {weight.name} contains NaN; cannot rank magnitudes")
    return arr


class MagnitudeIndex:
    """Per-layer ascending |w| of the prunable weights; answers Global MP questions by search."""

    def __init__(self, weights: list[PrunableWeight], tensors: list[torch.Tensor]):
        self.weights = list(weights)
        self.sizes = np.array([t.numel() for t in tensors], dtype=np.int64)
        self.total = int(self.sizes.sum())
        # numpy sorts without the GIL, so layers sort in parallel threads; each
        # thread holds only its own layer's copy, which becomes the index.
        workers = max(1, min(len(tensors), torch.get_num_threads(), 8))
        with ThreadPoolExecutor(workers) as pool:
            self._sorted = list(pool.map(_sorted_magnitudes, weights, tensors))

    # -- allocation ---------------------------------------------------------------------
    def protected(self, mt_count: int) -> np.ndarray:
        """Weights each layer keeps whatever the sparsity: `min(MT, size)`."""
        return np.minimum(self.sizes, int(mt_count))

    def max_count(self, mt_count: int = 0) -> int:
        """The largest k Global MP can prune with this MT."""
        return int((self.sizes - self.protected(mt_count)).sum())

    def allocate(self, k: int, mt_count: int = 0) -> Allocation:
        """Exact per-layer pruned counts for a global count `k` (ties: layer order)."""
        limits = self.sizes - self.protected(mt_count)
        if k < 0 or k > int(limits.sum()):
            raise CollapsekitError(
                f"cannot prune {k} of {self.total} weights with MT={mt_count} per layer: "
                f"at most {int(limits.sum())} are prunable (lower the sparsity or the MT)")
        if k == 0:
            return Allocation(0, np.zeros(len(self.sizes), dtype=np.int64), 0.0)
        t = self._kth_value(k, limits)
        lt = self._count(t, limits, "left")
        eq = self._count(t, limits, "right") - lt
        need = k - int(lt.sum())
        before = np.concatenate([[0], np.cumsum(eq)[:-1]])
        ties = np.clip(need - before, 0, eq)
        return Allocation(k, lt + ties, float(t))

    def _count(self, value: float, limits: np.ndarray, side: str) -> np.ndarray:
        v = np.float32(value)
        return np.array([np.searchsorted(a[:n], v, side=side) for a, n in zip(self._sorted, limits)],
                        dtype=np.int64)

    def _kth_value(self, k: int, limits: np.ndarray) -> np.float32:
        # Smallest magnitude v with #{candidates <= v} >= k. Non-negative float32s order
        # like their bit patterns, so bisect on the integers: 32 rounds, whatever N is.
        lo, hi = 0, _FLOAT32_INF_BITS
        while lo < hi:
            mid = (lo + hi) // 2
            v = np.array(mid, dtype=np.int32).view(np.float32)
            if int(self._count(v, limits, "right").sum()) >= k:
                hi = mid
            else:
                lo = mid + 1
        return np.array(lo, dtype=np.int32).view(np.float32)

    def release(self, i: int) -> None:
        """Frees layer i's sorted copy once no further question about it will be asked."""
        self._sorted[i] = self._sorted[i][:0].copy()

    # -- per-layer questions ------------------------------------------------------------
    def critical_counts(self, mt_count: int = 0) -> np.ndarray:
        """For each layer, the smallest global k that empties it (-1 where MT keeps it non-empty)."""
        limits = self.sizes - self.protected(mt_count)
        out = np.full(len(self.sizes), -1, dtype=np.int64)
        for i, (arr, n) in enumerate(zip(self._sorted, limits)):
            if n < self.sizes[i] or n == 0:
                continue
            top = arr[-1]
            lt = self._count(top, limits, "left")
            le = self._count(top, limits, "right")
            # Everything smaller, the ties of earlier layers, and all of this layer's ties.
            out[i] = int(lt.sum()) + int((le - lt)[:i].sum()) + int(le[i] - lt[i])
        return out

    def critical_sparsities(self, mt_count: int = 0) -> np.ndarray:
        """Each layer's critical sparsity `k_crit / N`; 1.0 where it never empties."""
        counts = self.critical_counts(mt_count)
        return np.where(counts < 0, 1.0, counts / self.total)

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
        arr = self._sorted[i]
        v = arr[n - 1]
        lt = int(np.searchsorted(arr, v, side="left"))
        eq = int(np.searchsorted(arr, v, side="right")) - lt
        with torch.no_grad():
            mags = tensor.detach().abs().to(torch.float32)
            vt = torch.tensor(float(v), dtype=torch.float32, device=tensor.device)
            keep = mags > vt
            if n - lt < eq:  # some ties at v survive: the later ones in flat order
                flat_ties = torch.nonzero((mags == vt).flatten()).flatten()
                keep.view(-1)[flat_ties[n - lt:]] = True
        return keep
