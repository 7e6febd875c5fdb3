"""Minimum Threshold suggestion: the smallest MT with which Global MP at a sparsity keeps the net alive.

A question asked of an Analysis: each candidate MT changes only the allocation of
the one magnitude index, and each check is one forward structural flow.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from collapsekit.analysis.analysis import Analysis
from collapsekit.analysis.magnitudes import MagnitudeIndex, resolve_mt
from collapsekit.errors import CollapsekitError
from collapsekit.spec import fraction

REQUIREMENTS = ("every_output", "any_output")


@dataclass(frozen=True)
class MTSuggestion:
    """The smallest per-layer MT count that keeps the net from collapsing structurally at `sparsity`."""

    sparsity: float
    mt: int  # 0 when no MT is needed, or none helps (see `reason`)
    percent: float  # `mt` as a percent of all prunable weights (the reference --min-threshold)
    search_range: tuple[int, ...]  # MT counts to try, log-spaced from mt to max(8*mt, reference 0.05 %)
    collapses_without_mt: bool
    max_mt: int  # the largest MT the sparsity leaves room for
    total: int
    evaluations: int  # structural flow runs spent
    reason: str
    structural_floor: int | None = None  # with data: the structural answer, kept as the lower bound
    forecasts: tuple[dict, ...] = field(default=())  # with data: {mt, trainable, quality, ...} per candidate MT
    forecast_trainable: bool | None = None  # with data: is `mt` forecast trainable
    seconds: float = field(default=0.0, compare=False)  # wall time of the suggestion itself

    @property
    def floor(self) -> int:
        """The structural floor: the smallest MT at which a kept path reaches what `require` asks (a lower bound)."""
        return self.mt if self.structural_floor is None else self.structural_floor

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "mt": self.mt, "floor": self.floor, "percent": self.percent,
                "search_range": list(self.search_range), "collapses_without_mt": self.collapses_without_mt,
                "max_mt": self.max_mt, "total": self.total, "evaluations": self.evaluations,
                "reason": self.reason, "forecasts": [dict(f) for f in self.forecasts], "seconds": self.seconds,
                "forecast_trainable": self.forecast_trainable}


def suggest_mt(model, example_inputs=None, sparsity: float | None = None, include: list[str] | None = None,
               exclude: list[str] | None = None, require: str = "every_output") -> MTSuggestion:
    """MTSuggestion: the smallest MT count with which Global MP at `sparsity` keeps the net alive.

    The data-aware suggestion (`ck.suggest_mt(..., data=bundle)`: the MT the
    trainability forecast calls trainable, this answer kept as `floor`) runs
    the model on data, so it lives in `collapsekit.validation.trainable`.

    `model` is an nn.Module (traced and indexed once here) or an Analysis already
    built. `require` says what "alive" means, as the report's levels read it:
    `"every_output"` (default) asks that a kept path reach every output element
    (`level.outputs_reached == 1`: every class logit can still move);
    `"any_output"` only that some does (`not level.collapsed`), which can leave a
    net whose cut logits are constants. With MT 0, `collapses_without_mt` is
    exactly the report's verdict at `sparsity`: "outputs cut" (or collapsed) for
    `"every_output"`, collapsed for `"any_output"`.

    Bisection over the count between 0 and the largest MT the sparsity allows;
    collapse need not be monotone in MT, so the answer is a verified boundary:
    `mt` does not collapse and `mt - 1` does. The model is never changed.
    """
    started = time.perf_counter()
    if require not in REQUIREMENTS:
        raise CollapsekitError(f"require must be 'every_output' or 'any_output', got {require!r}")
    if sparsity is None:
        raise CollapsekitError("suggest_mt needs a sparsity")
    sparsity = fraction(sparsity)  # 0.95 or "95%"
    an = Analysis.of(model, example_inputs, include, exclude, mt=0)
    return replace(_structural(an, sparsity, require), seconds=time.perf_counter() - started)


def _structural(an: Analysis, sparsity: float, require: str) -> MTSuggestion:
    """The structural floor (see suggest_mt) and the search range above it."""
    total = an.total
    k = an.count(sparsity)
    runs = 0

    def collapses(mt_count: int) -> bool:
        nonlocal runs
        runs += 1
        # The report's `outputs_reached` at the same masks, per element: 0 is `collapsed`, < 1 "outputs cut".
        reached = an.with_mt(mt_count).outputs_reached(k, channel_level=False)
        return reached == 0.0 if require == "any_output" else reached < 1.0

    max_mt = largest_mt(an.index, k)
    base = dict(sparsity=float(sparsity), total=total, max_mt=max_mt)
    if not collapses(0):
        return MTSuggestion(mt=0, percent=0.0, search_range=(), collapses_without_mt=False, evaluations=runs,
                            reason="every output stays reachable at this sparsity without MT" if require == "every_output"
                            else "the network does not collapse at this sparsity without MT", **base)
    if max_mt == 0 or collapses(max_mt):
        return MTSuggestion(mt=0, percent=0.0, search_range=(), collapses_without_mt=True, evaluations=runs,
                            reason=f"no MT helps: even MT={max_mt}, the largest this sparsity leaves room "
                                   "for, cuts an output; lower the sparsity", **base)
    lo, hi = 0, max_mt  # collapses(lo) and not collapses(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if collapses(mid):
            lo = mid
        else:
            hi = mid
    # Candidates for the empirical (accuracy) search, each checked not to collapse: from
    # the floor up to 8x it, or to the reference code's default (0.05 % of the prunable
    # weights) when that is larger; a floor this thin often keeps paths too weak to train.
    top = min(max(8 * hi, reference_mt(total)), max_mt)
    grid = sorted({int(round(v)) for v in np.geomspace(hi, top, 5)}) if top > hi else [hi]
    search = tuple(m for m in grid if m == hi or not collapses(m))
    return MTSuggestion(mt=hi, percent=100.0 * hi / total, search_range=search, collapses_without_mt=True,
                        evaluations=runs, reason=f"MT={hi} keeps a path to every output; MT={lo} does not" if require == "every_output"
                        else f"MT={hi} keeps a path; MT={lo} collapses", **base)


def reference_mt(total: int) -> int:
    """The reference code's default Minimum Threshold, 0.05 % of the prunable weights, as a count."""
    return resolve_mt(0.05, total)


def largest_mt(index: MagnitudeIndex, k: int) -> int:
    """The largest MT count with which `k` weights can still be pruned (max_count is non-increasing)."""
    lo, hi = 0, int(index.sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if index.max_count(mid) >= k:
            lo = mid
        else:
            hi = mid - 1
    return lo


__all__ = ["suggest_mt", "MTSuggestion", "reference_mt", "largest_mt"]
