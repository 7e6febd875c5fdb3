"""Data-aware entry points: the trainability forecast composed with the analysis (report levels, the MT suggestion).

The analysis (analysis/) answers from the masks alone and never runs the model;
the forecast runs a masked copy on data and its probe trains it, so what
combines the two lives here, above pruning and training: `analyze(...,
data=bundle)` fills `level.forecast`, `suggest_mt(..., data=bundle)` picks the
MT, `forecast(an, bundle, k)` answers one level. `ck.analyze` and
`ck.suggest_mt` are these functions.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from collapsekit.files.stream import Checkpoint, materialize
from collapsekit.analysis.analysis import Analysis, analyze as _analyze, sparsity_levels
from collapsekit.analysis.suggest import MTSuggestion, suggest_mt as _suggest_mt
from collapsekit.validation.forecast import MODEL, Forecast, Forecaster

SHORT_LOSS = "probe_short_loss_after"  # the loss after the short probe: the same steps for every candidate
CANDIDATES = 7  # log-spaced MTs from the structural floor to the largest MT, each forecast once


def forecaster(an: Analysis, bundle) -> Forecaster:
    """The Forecaster of `an`'s model on a batch of `bundle`'s training data, built once per data set.

    Kept on the analysis (shared by its `with_mt` copies: the dense reference does not depend on MT).
    """
    cache = an._forecasters
    if id(bundle) not in cache:
        # Streamed: the forecast runs the model, so it runs on the checkpoint's values (Invariant 9).
        model = an.model if an.checkpoint is None else materialize(an.model, Checkpoint(an.checkpoint))
        cache[id(bundle)] = (bundle, Forecaster.from_bundle(model, bundle, bottlenecks=an.bottlenecks))
    return cache[id(bundle)][1]


def forecast(an: Analysis, bundle, k: int, collapsed: bool | None = None, probe: bool | None = None) -> Forecast:
    """Forecast for the masks that prune `k` weights under `an`'s MT: will masked fine-tuning train them?

    A structurally collapsed level is a constant function: untrainable, probability 0,
    without measuring (pass `collapsed` when the flow has already run). `probe` as in
    `Forecaster.__call__` (None: where the one-pass probability is unsure). Made once per MT, count and data set
    (`mt-search` asks again for the candidates `suggest_mt` forecast).
    """
    if collapsed is None:
        collapsed = an.collapsed_at(k)
    if collapsed:
        return Forecast(trainable=False, evidence={}, reason="collapsed: no kept path", batch=0, probability=0.0)
    fc = forecaster(an, bundle)
    key = (an.mt, k, probe)  # the same masks (the analysis's copies share `fc`), the same seeded forecast
    if key not in fc.made:
        fc.made[key] = fc(an.masks(k=k), probe=probe)
    return fc.made[key]


def report(an: Analysis, sparsities=None, data=None, **kwargs):
    """`an.report(...)`, each level carrying its forecast when `data` is given."""
    rep = an.report(sparsities, data=data, **kwargs)
    return rep if data is None else annotate(rep, an, data)


def annotate(rep, an: Analysis, bundle):
    """The CollapseReport `rep` (of `an`) with `level.forecast` filled for every level."""
    levels = tuple(replace(lv, forecast=forecast(an, bundle, lv.pruned, lv.collapsed)) for lv in rep.levels)
    return replace(rep, levels=levels)


def analyze(model, example_inputs=None, sparsities=None, mt=None, include=None, exclude=None, progress: bool = False,
            name: str | None = None, exact="auto", data=None, checkpoint=None):
    """`collapsekit.analysis.analysis.analyze` (same arguments); with `data` (a DataBundle) each level also carries
    `level.forecast`, made on the analysis built once for the report."""
    if data is None:
        return _analyze(model, example_inputs, sparsities, mt, include, exclude, progress, name, exact, None,
                        checkpoint)
    sparsity_levels(sparsities)  # a bad level is refused before any work
    extra = {} if isinstance(model, Analysis) else {"exact": exact, "checkpoint": checkpoint, "progress": progress}
    an = Analysis.of(model, example_inputs, include, exclude, mt, **extra)
    return report(an, sparsities, data=data, progress=progress, name=name)


def suggest_mt(model, example_inputs=None, sparsity: float | None = None, include=None, exclude=None, data=None,
               **kwargs) -> MTSuggestion:
    """MTSuggestion (`collapsekit.analysis.suggest.suggest_mt`, other keywords passed on); with `data`, `mt` is the
    smallest MT the forecast calls trainable near the top of its quality curve (`trainable_mt`), the structural
    answer kept as `floor`."""
    started = time.perf_counter()
    an = Analysis.of(model, example_inputs, include, exclude, mt=0)
    structural = _suggest_mt(an, sparsity=sparsity, **kwargs)
    if data is None:
        return structural
    return replace(trainable_mt(an, structural, data), seconds=time.perf_counter() - started)


def candidate_mts(structural: MTSuggestion) -> list[int]:
    """MTs the data-aware suggestion forecasts: the floor, its search range, and CANDIDATES log-spaced to max_mt."""
    top = structural.max_mt
    grid = {structural.mt, *structural.search_range}
    if top > 0:
        grid |= {int(round(v)) for v in np.geomspace(max(1, structural.mt), top, CANDIDATES)}
    return sorted(m for m in grid if structural.mt <= m <= top)


def sweep_mts(an: Analysis, structural: MTSuggestion) -> list[int]:
    """MT 0 (the collapse baseline) and every candidate: what the calibration fine-tunes per sweep."""
    return sorted({0, *candidate_mts(structural)})


def choose(candidates: list[dict]) -> dict:
    """The candidate to suggest. Among those forecast trainable whose probe ran (SHORT_LOSS given: the loss on the
    held-aside batch after the short probe's steps, the same steps for every candidate), the one whose loss is
    lowest (the smallest MT on ties): accuracy first rises then falls with MT (Gupta et al.), and where the first
    steps leave the pruned net tells that curve's top apart better than a saturated probability does. Otherwise the
    highest forecast probability, the smallest MT on ties (analyses/README.md: suggestion hit rate,
    leave-one-architecture-out)."""
    probed = [c for c in candidates if c["probability"] >= 0.5 and SHORT_LOSS in c]
    if probed:
        return min(probed, key=lambda c: (c[SHORT_LOSS], c["mt"]))
    return max(candidates, key=lambda c: (round(c["probability"], 6), -c["mt"]))


def trainable_mt(an: Analysis, structural: MTSuggestion, bundle) -> MTSuggestion:
    """`structural` with `mt` replaced by `choose`'s pick among `candidate_mts`, each forecast once (no fine-tuning)."""
    k = an.count(structural.sparsity)
    forecasts = []
    for mt in candidate_mts(structural):
        f = forecast(an.with_mt(mt), bundle, k)
        forecasts.append({"mt": mt, "probability": f.probability, "trainable": f.trainable,
                          **{key: float(f.evidence.get(key, 0.0)) for key in MODEL.features},
                          **({SHORT_LOSS: float(f.evidence[SHORT_LOSS])} if SHORT_LOSS in f.evidence else {})})
    pick = choose(forecasts)
    if pick["trainable"]:
        how = ("trains furthest in the probe's steps" if SHORT_LOSS in pick else "is the likeliest to train")
        reason = (f"MT={pick['mt']} {how} of {len(forecasts)} candidates (p={pick['probability']:.2f}); "
                  f"structural floor {structural.mt}")
    else:
        reason = (f"no MT from {structural.mt} to {structural.max_mt} is forecast trainable at this sparsity; "
                  f"MT={pick['mt']} is the likeliest (p={pick['probability']:.2f}); structural floor {structural.mt}")
    return replace(structural, mt=pick["mt"], percent=100.0 * pick["mt"] / an.total, structural_floor=structural.mt,
                   forecasts=tuple(forecasts), forecast_trainable=bool(pick["trainable"]), reason=reason)


__all__ = ["analyze", "suggest_mt", "forecast", "forecaster", "report", "annotate", "trainable_mt", "candidate_mts",
           "sweep_mts", "choose", "CANDIDATES", "SHORT_LOSS"]
