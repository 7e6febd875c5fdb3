"""Global MP masks of one sparsity level, served lazily: full keep-masks or per-channel connectivity.

The channel-level flow only needs, for each conv, whether output channel o
keeps some weight from input channel i through a kernel tap that can read real
input (not only zero padding). That is `max over reachable taps of |w| > v`,
so one reduction of |w| per layer, made once, answers every level with an
`[O, I]` comparison instead of a pass over all weights.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from collapsekit.analysis.boolops import any_true, count_true, greater
from collapsekit.analysis.heap import rows_per_block
from collapsekit.analysis.magnitudes import Allocation, MagnitudeIndex, abs_bits, bits_to_float, line_maxima
from collapsekit.analysis.prunable import PrunableWeight
from collapsekit.analysis.trace import TracedModel

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def reachable_taps(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, in_spatial: tuple[int, ...]) -> torch.Tensor:
    """Bool over the flattened kernel: taps that read an in-bounds input element for some output position."""
    return _taps(module, in_spatial, any)


def full_taps(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, in_spatial: tuple[int, ...]) -> torch.Tensor:
    """Bool over the flattened kernel: taps that read an in-bounds input element at every output position
    (a 'same' 3x3 conv's centre): from a channel live everywhere they make an output live everywhere."""
    return _taps(module, in_spatial, all)


def _taps(module, in_spatial, quantifier) -> torch.Tensor:
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if module.padding_mode != "zeros":
        return torch.ones(int(np.prod(kernel)), dtype=torch.bool)  # reflect/circular pads are real data
    if isinstance(module.padding, str):
        pad = tuple(module._reversed_padding_repeated_twice[::-2][i] for i in range(len(kernel)))
    else:
        pad = module.padding
    per_dim = []
    for k, s, d, p, n in zip(kernel, stride, dilation, pad, in_spatial):
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1 if not isinstance(module.padding, str) else n
        per_dim.append([out > 0 and quantifier(0 <= q * s - p + t * d < n for q in range(max(out, 0)))
                        for t in range(k)])
    taps = [all(c) for c in itertools.product(*per_dim)]
    return torch.tensor(taps, dtype=torch.bool)


class Connectivity:
    """Per-layer max |w| over reachable kernel taps, for the convs the traced graph applies as modules."""

    def __init__(self, traced: TracedModel, weights: list[PrunableWeight], tensors: list[torch.Tensor],
                 index: MagnitudeIndex | None = None):
        # The index answers every level's question; the analysis builds the rest while the index is read,
        # and sets it before any level is asked.
        self.weights, self.tensors, self.index = weights, tensors, index
        self.position = {w.name: i for i, w in enumerate(weights)}
        self.taps: dict[int, torch.Tensor] = {}  # layer -> reachable-tap mask
        self.kmax: dict[int, torch.Tensor] = {}  # layer -> [O, I/groups] float32
        self._line_max: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # 2-D layer -> row, column max bits
        self.full: dict[int, torch.Tensor] = {}  # layer -> taps full at every use (full_taps)
        self._kmax_full: dict[int, torch.Tensor] = {}  # layer -> [O, I/groups] max |w| over those, on demand
        reach: dict[int, torch.Tensor] = {}
        by_module = {w.module: i for i, w in enumerate(weights) if w.kind == "conv"}
        for node in traced.gm.graph.nodes:
            if node.op != "call_module" or node.target not in by_module:
                continue
            module = traced.gm.get_submodule(node.target)
            meta = node.args[0].meta.get("tensor_meta") if node.args else None
            if not isinstance(module, _CONVS) or meta is None:
                continue
            i = by_module[node.target]
            taps = reachable_taps(module, tuple(meta.shape[2:]))
            reach[i] = taps if i not in reach else reach[i] | taps
            full = full_taps(module, tuple(meta.shape[2:]))
            self.full[i] = full if i not in self.full else self.full[i] & full
        for i, taps in reach.items():
            self.kmax[i], self.taps[i] = _tap_max(tensors[i], taps), taps

    def full_kmax(self, i: int) -> torch.Tensor:
        """Like `kmax[i]`, over the taps that are full at every use of conv i (-1 where there are none)."""
        if i not in self._kmax_full:
            self._kmax_full[i] = _tap_max(self.tensors[i], self.full[i])
        return self._kmax_full[i]

    def line_max(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(per row, per column) largest |w| bit pattern of 2-D weight i, read once on first use."""
        if i not in self._line_max:
            row_max, _, col_max, _ = line_maxima(self.tensors[i], self.tensors[i].shape[0])
            self._line_max[i] = (row_max, col_max)
        return self._line_max[i]

    def remember_line_max(self, i: int, maxima: tuple[torch.Tensor, torch.Tensor]) -> None:
        """`line_max(i)` found by another pass over the same weight (the cover's)."""
        self._line_max.setdefault(i, maxima)

    def level(self, alloc: Allocation) -> "LevelMasks":
        return LevelMasks(self, alloc)


_BLOCK = 1 << 20  # weights per block of output channels read at once (temporaries of a few MB)


def _tap_max(t: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """[O, I/groups] float32 largest |w| of conv weight `t` over the kernel taps `taps` (-1 where none),
    a block of output channels at a time."""
    out = torch.full(tuple(t.shape[:2]), -1.0)
    if not bool(taps.any()):
        return out
    w = t.detach().reshape(t.shape[0], t.shape[1], -1)
    every = bool(taps.all())
    rows = rows_per_block(w[0].numel(), _BLOCK)
    with torch.no_grad():
        for a in range(0, w.shape[0], rows):
            block = w[a:a + rows] if every else w[a:a + rows][:, :, taps]
            torch.amax(block.abs().to(torch.float32), -1, out=out[a:a + rows])
    return out


class KeptLines(NamedTuple):
    """Of one 2-D weight at one level: bool per row and per column, true where some weight is kept."""

    rows: torch.Tensor
    cols: torch.Tensor


class LevelMasks:
    """The keep-masks of one Global MP allocation, computed only when and as far as asked."""

    full_taps = False  # see full_taps_only

    def __init__(self, conn: Connectivity, alloc: Allocation):
        self.conn, self.alloc = conn, alloc
        self._conns: dict[str, torch.Tensor | None] = {}  # channel_conn answers: a flow asks twice per conv

    def __contains__(self, name: str) -> bool:
        return name in self.conn.position

    def emptying(self, names) -> "LevelMasks":
        """These masks with every layer in `names` pruned entirely (for sound "still connected" proofs)."""
        return _Emptied(self, frozenset(names))

    def pruned_counts(self) -> np.ndarray:
        """Weights pruned per layer; a mask set with counts <= these everywhere keeps a superset."""
        return np.asarray(self.alloc.pruned)

    def kept_count(self, name: str) -> int:
        """How many weights of `name` these masks keep."""
        i = self.conn.position[name]
        return int(self.conn.index.sizes[i] - self.alloc.pruned[i])

    def kept_lines(self, name: str) -> KeptLines | None:
        """Which rows and which columns of 2-D weight `name` keep some weight, from the per-line maxima
        (no mask is read); None where ties at the cut survive (only the mask can tell)."""
        i = self.conn.position.get(name)
        if i is None or len(self.conn.weights[i].shape) != 2:
            return None
        n, size = int(self.alloc.pruned[i]), int(self.conn.index.sizes[i])
        rows, cols = self.conn.weights[i].shape
        if n == 0 or n == size:
            return KeptLines(torch.full((rows,), n == 0), torch.full((cols,), n == 0))
        v, surviving = self.conn.index.cut(i, n)
        if surviving:
            return None
        row_max, col_max = self.conn.line_max(i)
        return KeptLines(row_max > v, col_max > v)

    def kept_positions(self, name: str) -> torch.Tensor | None:
        """Flat positions of the weights of 2-D `name` these masks keep, where it keeps few of them
        (MagnitudeIndex.kept_positions); None where a mask serves better."""
        i = self.conn.position.get(name)
        if i is None or len(self.conn.weights[i].shape) != 2:
            return None
        return self.conn.index.kept_positions(i, int(self.alloc.pruned[i]), self.conn.tensors[i])

    def keep_list(self) -> list[torch.Tensor]:
        """Every layer's full keep-mask, in prunable order."""
        return [self.keep(w.name) for w in self.conn.weights]

    def _boundary(self, i: int) -> tuple[float, bool] | None:
        """(threshold v, exact) of layer i: kept = |w| > v exactly when no tie at v survives."""
        n, size = int(self.alloc.pruned[i]), int(self.conn.index.sizes[i])
        if n == 0 or n == size:
            return None
        v, surviving = self.conn.index.cut(i, n)
        return bits_to_float(v), surviving == 0

    def keep(self, name: str) -> torch.Tensor:
        """The full bool keep-mask of prunable weight `name`."""
        i = self.conn.position[name]
        return self.conn.index.layer_mask(i, int(self.alloc.pruned[i]), self.conn.tensors[i])

    def channel_conn(self, name: str) -> torch.Tensor | None:
        """Bool [O, I/groups]: a kept weight joins input channel i to output channel o through a
        reachable tap; None where only the full mask will do (not a conv applied as a module)."""
        if name not in self._conns:
            self._conns[name] = self._channel_conn(name)
        return self._conns[name]

    def remember_channel_conn(self, name: str, conn: torch.Tensor) -> None:
        """`channel_conn(name)` found another way (level_flows.py's ranks): no tap maxima are compared again."""
        self._conns.setdefault(name, conn)

    def _channel_conn(self, name: str) -> torch.Tensor | None:
        i = self.conn.position.get(name)
        if i is None or i not in self.conn.kmax:
            return None
        return self._reduced_keep(i, *self._tap_reduction(i))

    def _tap_reduction(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(max |w| per channel pair over the taps that join it, those taps) of conv i."""
        return self.conn.kmax[i], self.conn.taps[i]

    def _reduced_keep(self, i: int, kmax: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        """Bool [O, I/groups]: a kept weight of conv i joins the pair through one of `taps` (kmax: over them)."""
        n, size = int(self.alloc.pruned[i]), int(self.conn.index.sizes[i])
        if n == 0:
            return kmax >= 0
        if n == size:
            return torch.zeros(kmax.shape, dtype=torch.bool)
        v, exact = self._boundary(i)
        if exact:
            return greater(kmax, v)
        keep = self.keep(self.conn.weights[i].name).reshape(*kmax.shape, -1)
        return keep[:, :, taps].any(-1)

    def full_taps_only(self) -> "LevelMasks":
        """These masks with every conv applied as a module keeping only its full taps (`full_taps`).

        A channel-level forward flow on them under-approximates element-level liveness
        (ChannelFlow.layer): its "alive" proves the real masks alive per element."""
        return _FullTaps(self)

    def effective_count(self, name: str, reached_pairs) -> int:
        """Kept weights of `name` on an input-output path, given the channel pairs the flow reached
        (bool [O, I/groups], or flow_layers.EVERYWHERE)."""
        i = self.conn.position[name]
        kept_total = int(self.conn.index.sizes[i] - self.alloc.pruned[i])
        conn = self.channel_conn(name)
        taps = self.conn.taps[i]
        if not isinstance(reached_pairs, torch.Tensor):  # EVERYWHERE: every pair
            if bool(taps.all()):
                return kept_total
            reached_pairs = torch.ones(conn.shape, dtype=torch.bool)
        lost = conn & ~reached_pairs
        if bool(taps.all()):
            if not any_true(lost):
                return kept_total
            n = int(self.alloc.pruned[i])
            v, surviving = self.conn.index.cut(i, n) if n > 0 else (-1, 0)
            if surviving == 0:  # kept = |w| bits > v exactly: read the lost pairs alone
                w = self.conn.tensors[i].detach().reshape(*conn.shape, -1)[lost]
                return kept_total - count_true(greater(abs_bits(w), v))
        keep = self.keep(name).reshape(*conn.shape, -1)
        return int(keep[reached_pairs][:, taps].sum())


class _Emptied(LevelMasks):
    """A LevelMasks whose layers in `names` keep nothing; no weight of theirs is read."""

    def __init__(self, base: LevelMasks, names: frozenset):
        super().__init__(base.conn, base.alloc)
        self.names = names

    def pruned_counts(self) -> np.ndarray:
        counts = np.array(self.alloc.pruned, copy=True)
        for name in self.names:
            counts[self.conn.position[name]] = self.conn.index.sizes[self.conn.position[name]]
        return counts

    def keep(self, name: str) -> torch.Tensor:
        if name in self.names:
            return torch.zeros(self.conn.weights[self.conn.position[name]].shape, dtype=torch.bool)
        return super().keep(name)

    def kept_count(self, name: str) -> int:
        return 0 if name in self.names else super().kept_count(name)

    def kept_positions(self, name: str) -> torch.Tensor | None:
        return torch.zeros(0, dtype=torch.int64) if name in self.names else super().kept_positions(name)

    def kept_lines(self, name: str) -> KeptLines | None:
        if name in self.names:
            rows, cols = self.conn.weights[self.conn.position[name]].shape[:2]
            return KeptLines(torch.zeros(rows, dtype=torch.bool), torch.zeros(cols, dtype=torch.bool))
        return super().kept_lines(name)

    def channel_conn(self, name: str) -> torch.Tensor | None:
        i = self.conn.position.get(name)
        if name in self.names and i in self.conn.kmax:
            return torch.zeros(self.conn.kmax[i].shape, dtype=torch.bool)
        return super().channel_conn(name)


class _FullTaps(LevelMasks):
    """A LevelMasks whose convs join a channel pair only through a tap full at every use (forward flows only)."""

    full_taps = True

    def __init__(self, base: LevelMasks):
        super().__init__(base.conn, base.alloc)

    def _tap_reduction(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conn.full_kmax(i), self.conn.full[i]
