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

Levels that empty the same layers but thin the others past their covers have a
lower bound of their own: the sparsest of them (`SparsestOfSet`). Global MP's
masks are nested, so each denser level of the set keeps every weight the sparsest
keeps and no weight of E; where the sparsest level's own flow is clean (nothing
collapsed, dead or unused, every output reached, every position of every other
layer reached), each of them is too, with all its kept weights effective outside
E. That flow is one the report needs anyway. A layer it reaches nowhere (the
input projection of a branch whose output projection is in E) takes one more
flow, on the upper bound U, to show no denser level reaches it either. GPT-2
124M at 128 tokens: two flows answer its twelve levels 0.85-0.999, where the
covers' pair answered ten of them and the last two needed a flow each.
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
        return _agreement(weights, emptied, lower, reached, lambda: run_flow(
            self.an.traced, weights, _Bounds(self.cover, *names, upper=True), channel_level=channel))


def _agreement(weights, emptied, lower: FlowResult, reached: dict, upper) -> _Verdict | None:
    """The verdict every masks between a lower and an upper bound share, where the bounds' flows agree on it;
    `upper()` runs the upper bound's flow, only where the lower one alone does not decide (None: not worth
    a flow, no verdict then)."""
    all_effective = np.zeros(len(weights), dtype=bool)
    others = [i for i in range(len(weights)) if i not in emptied]
    all_effective[[i for i in others if reached.get(weights[i].name, False)]] = True
    if (not lower.collapsed and not lower.dead_channels and not lower.unused_channels
            and lower.output_alive == 1.0 and all(all_effective[i] for i in others)):
        return _Verdict(False, {}, {}, all_effective, 1.0, lower.conservative_ops)  # the upper can only agree
    if upper is None:
        return None
    up = upper()
    if (lower.collapsed, lower.dead_channels, lower.unused_channels, lower.output_alive) != (
            up.collapsed, up.dead_channels, up.unused_channels, up.output_alive):
        return None
    if not lower.collapsed and any(not all_effective[i] and up.effective[i] != 0 for i in others):
        return None  # some kept weights effective, some not: only the level's own flow can count them
    return _Verdict(lower.collapsed, lower.dead_channels, lower.unused_channels, all_effective,
                    lower.output_alive, lower.conservative_ops)


class SparsestOfSet:
    """Verdicts of a report's levels from the flow of the sparsest level that empties the same layers."""

    def __init__(self, an):
        self.an = an
        self._bounds: dict[frozenset, tuple[np.ndarray, _Verdict]] = {}  # E -> (sparsest pruned, its verdict)

    def _emptied(self, pruned: np.ndarray) -> frozenset:
        return frozenset(np.flatnonzero(np.asarray(pruned) >= self.an.index.sizes).tolist())

    def plan(self, counts, answered) -> dict[bytes, FlowResult]:
        """Runs the flow of the sparsest of every two or more of `counts` (weights pruned) that empty the same
        layers and need a flow, unless `answered(pruned)` (a cover or an emptied-layer cover gives the sparsest
        its verdict without one); the upper bound's flow (the set emptied, every other layer dense) only where
        WORTH levels share it. Returns the levels' flows it ran, by their pruned counts' bytes."""
        sets: dict[frozenset, list[int]] = {}
        for k in sorted(counts, reverse=True):  # sparsest first
            pruned = self.an.level(k).alloc.pruned
            emptied = self._emptied(pruned)
            if emptied not in sets:  # its sparsest level: where it is answered without a flow, so are the others
                sets[emptied] = None if answered(pruned) else [k]
            elif sets[emptied] is not None and not self.an.cover().contains(pruned):
                sets[emptied].append(k)
        weights, ran = self.an.weights, {}
        for emptied, ks in sets.items():
            if ks is None or len(ks) < 2:
                continue
            k = ks[0]
            pruned = self.an.level(k).alloc.pruned
            reached: dict[str, bool] = {}
            channel = self.an.channel_level
            with self.an.timings.stage("flow per level"):
                lower = ran[np.asarray(pruned).tobytes()] = run_flow(
                    self.an.traced, weights, self.an.level(k), channel_level=channel, reached=reached)
            names = frozenset(weights[i].name for i in emptied)
            upper = _Bounds(self.an.cover(), names, frozenset(), upper=True)
            # The upper bound of a set that empties nothing is the dense model, which the proven cover says is
            # clean: it agrees with a clean lower flow only, which needs no upper one.
            worth = len(ks) >= WORTH and not (not emptied and self.an.cover().proven)
            verdict = _agreement(weights, emptied, lower, reached, None if not worth else lambda: run_flow(
                self.an.traced, weights, upper, channel_level=channel))
            if verdict is not None:
                self._bounds[emptied] = (np.asarray(pruned).copy(), verdict)
        return ran

    def verdict(self, pruned: np.ndarray) -> FlowResult | None:
        """The FlowResult of masks pruning `pruned` per layer where a clean sparsest level of their emptied set
        nests in them; None otherwise."""
        found = self._bounds.get(self._emptied(pruned))
        if found is None or not bool(np.all(np.asarray(pruned) <= found[0])):
            return None
        return found[1].at(self.an.index.sizes, np.asarray(pruned))


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


__all__ = ["EmptiedCovers", "SparsestOfSet", "WORTH"]
