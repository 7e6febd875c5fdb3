"""Cover masks: prove, without running the flow, that a sparsity level leaves the network as connected as dense.

The structural flow is monotone in the masks: keeping more weights never makes
a channel dead, unused or an output constant (flow.py's rules never cancel).
Take, for every layer, the cover S = each row's largest |w| plus each column's
largest |w| (rows: output channels; columns: everything one output reads; at
channel level, convs use their channel connectivity, connectivity.py). One
flow on S tells whether S alone keeps every channel live and used and reaches
every weight position. If it does, any level whose masks contain S (every
layer's cut lies below its smallest row and column maximum: an O(layers) test)
has exactly the dense verdict: not collapsed, no dead or unused channel, every
kept weight effective. Levels below that sparsity then cost no flow at all,
which is most of a large model's report.
"""
from __future__ import annotations

import numpy as np
import torch

from collapsekit.analysis.connectivity import KeptLines
from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.heap import release_after
from collapsekit.analysis.magnitudes import abs_bits

NO_COVER = -1  # a layer whose cover cannot be proven: no cut is below this


def _argmax_cover(bits: torch.Tensor, groups: int = 1) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    """((rows, cols) of the cover: argmax of every row and of every column within its group, the
    smallest of those maxima) for non-negative int32 `bits` [O, C]. Positions, not a mask: a layer's
    cover costs O + C integers until the flow asks for it."""
    o, c = bits.shape
    row_max, row_arg = bits.max(1)
    col_max, col_arg = bits.view(groups, o // groups, c).max(1)  # [groups, C]
    rows = torch.cat([torch.arange(o), (col_arg + torch.arange(groups).view(-1, 1) * (o // groups)).flatten()])
    cols = torch.cat([row_arg, torch.arange(c).repeat(groups)])
    return (rows, cols), int(min(int(row_max.min()), int(col_max.min())))


def _weight_cover(maxima) -> tuple[tuple[torch.Tensor, torch.Tensor], int, tuple[torch.Tensor, torch.Tensor]]:
    """`_argmax_cover` of a weight from its line maxima (magnitudes.line_maxima of |w| bits in the [O, -1]
    view), and the per-row and per-column maxima (connectivity.line_max of a 2-D weight)."""
    row_max, row_arg, col_max, col_arg = maxima
    rows = row_max.numel()
    positions = (torch.cat([torch.arange(rows), col_arg]), torch.cat([row_arg, torch.arange(col_max.numel())]))
    return positions, int(min(int(row_max.min()), int(col_max.min()))), (row_max, col_max)


def _mask_from_positions(positions: tuple[torch.Tensor, torch.Tensor], shape) -> torch.Tensor:
    rows, cols = positions
    mask = torch.zeros(shape[0], int(np.prod(shape[1:])), dtype=torch.bool)
    mask[rows, cols] = True
    return mask.view(shape)


class Cover:
    """The cover masks of an analysis and, per layer, the cut below which a level contains them."""

    def __init__(self, an, channel_level: bool):
        self.an, self.channel_level = an, channel_level
        # per layer: cuts below this contain S (the minimum over the covers the flow asked for)
        self.full = np.full(len(an.weights), np.iinfo(np.int64).max, dtype=np.int64)
        self._keep: dict[str, tuple] = {}  # name -> cover positions (rows, cols) in the [O, -1] view
        self._conn: dict[str, tuple] = {}  # name -> cover positions in the channel connectivity
        self._positions: dict[str, torch.Tensor] = {}  # name -> a 2-D cover as flat positions (kept_positions)
        self.position = {w.name: i for i, w in enumerate(an.weights)}
        self.proven = False
        conn = an.connectivity
        for i, w in enumerate(an.weights):
            if channel_level and i in conn.kmax:
                # The channel-level flow reads a conv module through its channel connectivity (and counts
                # its effective weights from it): that cover is the proof, unless the flow also asks for
                # the full mask (keep), which then adds the weight's own cover.
                if not bool(conn.taps[i].all()):
                    self.full[i] = NO_COVER  # kept weights on taps that never read data are not effective
                    continue
                self._conn[w.name], self.full[i] = _argmax_cover(abs_bits(conn.kmax[i]), self._groups(w))
            else:
                self._element_cover(i)
            release_after(w.numel)
        result_reached: dict[str, bool] = {}
        # First without constant-average questions (a generic network's run each): that flow is only more
        # alive than the exact one, so a death it finds disproves the cover; only a clean one that skipped
        # such a question needs the exact flow.
        result = run_flow(an.traced, an.weights, self, channel_level=channel_level, reached=result_reached,
                          averages=False)
        if result.approximate and self._clean(result, result_reached):
            result_reached = {}
            result = run_flow(an.traced, an.weights, self, channel_level=channel_level, reached=result_reached)
        self.conservative_ops = result.conservative_ops  # what Analysis.conservative_ops reports
        self.proven = self._clean(result, result_reached)
        # The positions stay (O + C integers a layer): emptied.py's flows ask for them again.

    def _clean(self, result, reached: dict[str, bool]) -> bool:
        """The flow on the covers keeps every channel live and used, every output reached, every position."""
        return (not result.collapsed and not result.dead_channels and not result.unused_channels
                and result.output_alive == 1.0 and all(reached.get(w.name, False) for w in self.an.weights))

    def _groups(self, w) -> int:
        return self.an.traced.gm.get_submodule(w.module).groups if w.module else 1

    def contains(self, pruned: np.ndarray) -> bool:
        """True if the Global MP masks that prune `pruned[i]` weights of each layer contain every cover."""
        if not self.proven:
            return False
        for i, n in enumerate(pruned):
            n = int(n)
            if n == 0:
                continue
            if n >= int(self.an.index.sizes[i]):
                return False
            v, _ = self.an.index.cut(i, n)  # kept: bits > v (and some ties at v)
            if not v < self.full[i]:
                return False
        return True

    # the masks interface run_flow asks of S (flow.MaskSource) --------------------------------
    full_taps = False

    def __contains__(self, name: str) -> bool:
        return name in self.position

    def _element_cover(self, i: int) -> None:
        w = self.an.weights[i]
        self._keep[w.name], full, maxima = _weight_cover(self.an.line_maxima(i))
        if len(w.shape) == 2:  # the same read gives the linear's line maxima: the flows need not read it again
            self.an.connectivity.remember_line_max(i, maxima)
        self.full[i] = min(full, int(self.full[i]))

    def keep(self, name: str) -> torch.Tensor:
        if name not in self._keep:
            self._element_cover(self.position[name])
        return _mask_from_positions(self._keep[name], self.an.weights[self.position[name]].shape)

    def channel_conn(self, name: str):
        if name not in self._conn:
            return None
        return _mask_from_positions(self._conn[name], self.an.connectivity.kmax[self.position[name]].shape)

    def kept_lines(self, name: str):
        """Every row and every column of a 2-D weight keeps its maximum: all of them keep a weight,
        so the flow needs no mask of the cover's linear layers where liveness is uniform."""
        shape = self.an.weights[self.position[name]].shape
        if len(shape) != 2:
            return None
        return KeptLines(torch.ones(shape[0], dtype=torch.bool), torch.ones(shape[1], dtype=torch.bool))

    def effective_count(self, name: str, reached_pairs) -> int:
        return 0  # the cover's own effective counts are never read

    def kept_count(self, name: str) -> int:
        return 0  # as effective_count: never read

    def kept_positions(self, name: str) -> torch.Tensor | None:
        """A 2-D weight's cover as flat positions (flow_layers.SparseKeep): O + C of them, no mask."""
        shape = self.an.weights[self.position[name]].shape
        if len(shape) != 2:
            return None
        if name not in self._positions:
            if name not in self._keep:
                self._element_cover(self.position[name])
            rows, cols = self._keep[name]
            self._positions[name] = torch.unique(rows * shape[1] + cols)  # a row's maximum may be its column's
        return self._positions[name]

    def pruned_counts(self):
        return None  # not a Global MP level: no nested run to reuse

