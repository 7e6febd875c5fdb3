"""Emptied-layer covers: every level that empties the same layers and keeps every other layer's cover has one verdict.

Global MP often empties whole layers long before it thins the others much: a
GPT-2's output projections (initialised 1/sqrt(2 x layers) smaller than its
other weights) are all gone from about 0.8 sparsity on, a WideResNet's residual
branches one by one. Between the level where a set E of emptied layers appears
and the one where another layer loses a row or column maximum, every level's
masks M lie between two fixed mask sets: the lower L (E empty, every other
layer reduced to its cover S of row and column maxima, cover.py) and the upper
U (E empty, every other layer dense). The flow is monotone in the masks (its
rules never cancel), so M's dead and unused channels lie between U's and L's,
and its reach between L's and U's: where L and U agree, every such level has
their verdict. Its effective weights follow layer by layer: a layer whose
every position L's backward pass reaches keeps all its kept weights effective;
one U reaches nowhere keeps none. Two flows then answer every level with the
same E, however many a report asks for; `plan` keeps them for sets three or
more levels share, where they cost less than the per-level flows they replace.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from collapsekit.analysis.boolops import count_true
from collapsekit.analysis.connectivity import KeptLines
from collapsekit.analysis.cover import NO_COVER, Cover
from collapsekit.analysis.flow import FlowResult, run_flow

WORTH = 3  # levels sharing an emptied set before its two flows pay


@dataclass(frozen=True)
class _Verdict:
    """What L and U agreed on, and per layer whether all its kept weights are effective."""

    collapsed: bool
    dead: dict
    unused: dict
    all_effective: np.ndarray  # bool per prunable layer
    output_alive: float
    conservative: dict

    def at(self, sizes: np.ndarray, pruned: np.ndarray) -> FlowResult:
        kept = (sizes - pruned).astype(np.int64)
        effective = np.zeros_like(kept) if self.collapsed else np.where(self.all_effective, kept, 0)
        return FlowResult(self.collapsed, dict(self.dead), dict(self.unused), effective,
                          0.0 if self.collapsed else self.output_alive, dict(self.conservative))


class EmptiedCovers:
    """The two-flow verdicts of an analysis's emptied-layer sets, built for the sets `plan` marked."""

    def __init__(self, an, cover: Cover):
        self.an, self.cover = an, cover
        self._verdicts: dict[tuple, _Verdict | None] = {}
        self._planned: set[tuple] = set()

    def key(self, pruned: np.ndarray) -> tuple | None:
        """(emptied layers, dense layers without a cover) of masks pruning `pruned` per layer, if every other
        layer keeps its cover; None otherwise, or where no layer is emptied (the plain cover's case)."""
        sizes, full = self.an.index.sizes, self.cover.full
        emptied, dense = [], []
        for i, n in enumerate(pruned):
            n = int(n)
            if n == 0:
                if full[i] == NO_COVER:
                    dense.append(i)
            elif n >= int(sizes[i]):
                emptied.append(i)
            elif not self.an.index.cut(i, n)[0] < full[i]:
                return None
        return (frozenset(emptied), frozenset(dense)) if emptied else None

    def plan(self, pruned_levels) -> None:
        """Marks the emptied sets that at least WORTH of these levels (pruned counts per layer) share."""
        counts = Counter(k for k in map(self.key, pruned_levels) if k is not None)
        self._planned |= {k for k, c in counts.items() if c >= WORTH}

    def verdict(self, pruned: np.ndarray, build: bool = True) -> FlowResult | None:
        """The level's FlowResult where its emptied set's L and U agree; None where they do not, or where its
        set was not planned (or `build` is False) and is not known yet."""
        key = self.key(pruned)
        if key is None:
            return None
        if key not in self._verdicts:
            if not (build and key in self._planned):
                return None
            self._verdicts[key] = self._sandwich(*key)
            if self.key(pruned) != key:  # the flows read covers the first test had not: test again
                return None
        found = self._verdicts[key]
        return None if found is None else found.at(self.an.index.sizes, np.asarray(pruned))

    def _sandwich(self, emptied: frozenset, dense: frozenset) -> _Verdict | None:
        weights = self.an.weights
        names = (frozenset(weights[i].name for i in emptied), frozenset(weights[i].name for i in dense))
        reached: dict[str, bool] = {}
        channel = self.cover.channel_level
        lower = run_flow(self.an.traced, weights, _Bounds(self.cover, *names, upper=False), channel_level=channel,
                         reached=reached)
        upper = run_flow(self.an.traced, weights, _Bounds(self.cover, *names, upper=True), channel_level=channel)
        if (lower.collapsed, lower.dead_channels, lower.unused_channels, lower.output_alive) != (
                upper.collapsed, upper.dead_channels, upper.unused_channels, upper.output_alive):
            return None
        all_effective = np.zeros(len(weights), dtype=bool)
        for i, w in enumerate(weights):
            if i in emptied:
                continue
            if reached.get(w.name, False):
                all_effective[i] = True
            elif upper.effective[i] != 0 and not lower.collapsed:
                return None  # some kept weights effective, some not: only the level's own flow can count them
        return _Verdict(lower.collapsed, lower.dead_channels, lower.unused_channels, all_effective,
                        lower.output_alive, lower.conservative_ops)


class _Bounds:
    """L or U of an emptied set (flow.MaskSource): `emptied` keep nothing; `dense` (and every layer, in U)
    keep everything; the others keep their cover."""

    full_taps = False

    def __init__(self, cover: Cover, emptied: frozenset, dense: frozenset, upper: bool):
        self.cover, self.emptied, self.dense, self.upper = cover, emptied, dense, upper

    def __contains__(self, name: str) -> bool:
        return name in self.cover.position

    def _fill(self, name: str) -> bool | None:
        """False: keeps nothing; True: keeps everything; None: keeps its cover."""
        if name in self.emptied:
            return False
        return True if self.upper or name in self.dense else None

    def _shape(self, name: str):
        return self.cover.an.weights[self.cover.position[name]].shape

    def keep(self, name: str) -> torch.Tensor:
        fill = self._fill(name)
        return self.cover.keep(name) if fill is None else torch.full(self._shape(name), fill)

    def channel_conn(self, name: str):
        fill = self._fill(name)
        if fill is None:
            return self.cover.channel_conn(name)
        kmax = self.cover.an.connectivity.kmax.get(self.cover.position[name])
        return None if kmax is None else torch.full(kmax.shape, fill)

    def kept_lines(self, name: str):
        fill, shape = self._fill(name), self._shape(name)
        if fill is None:
            return self.cover.kept_lines(name)
        if len(shape) != 2:
            return None
        return KeptLines(torch.full((shape[0],), fill), torch.full((shape[1],), fill))

    def kept_count(self, name: str) -> int:
        # Only U's counts are read, and only whether they are 0: every kept weight of a layer it keeps.
        return 0 if name in self.emptied else int(np.prod(self._shape(name)))

    def kept_positions(self, name: str):
        fill = self._fill(name)
        if fill is None:
            return self.cover.kept_positions(name)
        return torch.zeros(0, dtype=torch.int64) if not fill and len(self._shape(name)) == 2 else None

    def effective_count(self, name: str, reached_pairs) -> int:
        if name in self.emptied:
            return 0
        return self.kept_count(name) if not isinstance(reached_pairs, torch.Tensor) else count_true(reached_pairs)

    def pruned_counts(self):
        return None  # not a Global MP level


__all__ = ["EmptiedCovers", "WORTH"]
