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

from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.magnitudes import abs_bits

_NEVER = -1  # a layer whose cover cannot be proven: no cut is below this


def _argmax_cover(bits: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, int]:
    """(bool [O, C] cover: argmax of every row and of every column within its group, the smallest of
    those maxima) for non-negative int32 `bits` [O, C]."""
    o, c = bits.shape
    row_max, row_arg = bits.max(1)
    grouped = bits.view(groups, o // groups, c)
    col_max, col_arg = grouped.max(1)  # [groups, C]
    cover = torch.zeros(o, c, dtype=torch.bool)
    cover[torch.arange(o), row_arg] = True
    rows = (col_arg + torch.arange(groups).view(-1, 1) * (o // groups)).flatten()
    cover[rows, torch.arange(c).repeat(groups)] = True
    return cover, int(min(int(row_max.min()), int(col_max.min())))


class Cover:
    """The cover masks of an analysis and, per layer, the cut below which a level contains them."""

    def __init__(self, an, channel_level: bool):
        self.an, self.channel_level = an, channel_level
        self.full = np.full(len(an.weights), _NEVER, dtype=np.int64)  # per layer: cuts below this contain S
        self._keep: dict[str, torch.Tensor] = {}
        self._conn: dict[str, torch.Tensor] = {}
        self.position = {w.name: i for i, w in enumerate(an.weights)}
        self.proven = False
        conn = an.connectivity
        for i, w in enumerate(an.weights):
            bits = abs_bits(an.tensors[i]).reshape(w.shape[0], -1)
            cover, full = _argmax_cover(bits)
            self._keep[w.name] = cover.view(w.shape)
            del bits
            if channel_level and i in conn.kmax:
                if not bool(conn.taps[i].all()):
                    continue  # kept weights on taps that never read data are not effective: no shortcut
                kmax = conn.kmax[i]
                groups = self._groups(w)
                self._conn[w.name], full_conn = _argmax_cover(abs_bits(kmax), groups)
                full = min(full, full_conn)
            self.full[i] = full
        result_reached: dict[str, bool] = {}
        result = run_flow(an.traced, an.weights, self, channel_level=channel_level, reached=result_reached)
        self.proven = (not result.collapsed and not result.dead_channels and not result.unused_channels
                       and result.output_alive == 1.0
                       and all(result_reached.get(w.name, False) for w in an.weights))
        self._keep.clear()
        self._conn.clear()

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

    # the masks interface run_flow asks of S -------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.position

    def keep(self, name: str) -> torch.Tensor:
        return self._keep[name]

    def channel_conn(self, name: str):
        return self._conn.get(name)

    def effective_count(self, name: str, reached_pairs) -> int:
        return 0  # the cover's own effective counts are never read

