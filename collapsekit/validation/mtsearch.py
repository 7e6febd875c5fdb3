"""MT as a hyper-parameter: prune + fine-tune over a sweep of Minimum Threshold values and pick the best.

Accuracy first rises then falls with MT (docs/design.md), so the sweep starts from
`ck.suggest_mt`'s structural floor (the smallest MT that keeps a path) and tries
its `search_range`, plus MT = 0 as the baseline that shows the collapse, plus
the suggestion made with the data (`suggest_mt(..., data=bundle)`: the
smallest MT forecast trainable near the top of the curve). Each point carries
its trainability forecast beside the fine-tuned accuracy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.spec import fraction

# Sweep (percent of all prunable weights) when no MT is needed to avoid collapse:
# around the reference code's default of 0.05 %.
DEFAULT_PERCENTS = (0.01, 0.05, 0.1, 0.5)


@dataclass(frozen=True)
class MTPoint:
    """One MT value of the sweep: what Global MP + MT and the fine-tune gave."""

    mt: int  # weights per layer
    percent: float  # mt as a percent of all prunable weights
    predicted_collapsed: bool
    emptied_layers: int
    accuracy_pruned: float
    accuracy: float  # after fine-tuning
    forecast_trainable: bool | None = None  # the trainability forecast, made before fine-tuning
    trained: bool | None = None  # the task's `trained` (classifier: accuracy > chance + validate's margin)
    perplexity_pruned: float | None = None  # causal LM: right after pruning
    perplexity: float | None = None  # causal LM: after fine-tuning

    def score(self, metric: str) -> float:
        """The point's fine-tuned `metric` ("accuracy" or "perplexity")."""
        return self.perplexity if metric == "perplexity" else self.accuracy

    def to_dict(self) -> dict:
        lm = {} if self.perplexity is None else {"perplexity_pruned": self.perplexity_pruned,
                                                 "perplexity": self.perplexity}
        return {**lm, "mt": self.mt, "percent": self.percent, "predicted_collapsed": self.predicted_collapsed,
                "emptied_layers": self.emptied_layers, "accuracy_pruned": self.accuracy_pruned,
                "accuracy": self.accuracy, "forecast_trainable": self.forecast_trainable, "trained": self.trained}


@dataclass(frozen=True)
class MTSearchResult:
    """The accuracy-vs-MT curve at one sparsity and the best MT (highest accuracy, smallest MT on ties)."""

    sparsity: float
    suggestion: dict  # ck.suggest_mt's MTSuggestion.to_dict()
    points: tuple[MTPoint, ...]
    epochs: int
    metric: str = "accuracy"  # the task's: "perplexity" (lower is better) for a causal LM
    baselines: dict = field(default_factory=dict)  # causal LM: unigram_perplexity, dense_perplexity

    @property
    def best(self) -> MTPoint:
        sign = -1.0 if self.metric == "perplexity" else 1.0  # perplexity: lower is better
        return max(self.points, key=lambda p: (sign * p.score(self.metric), -p.mt))

    def to_dict(self) -> dict:
        """The JSON document `collapsekit mt-search --format json` prints."""
        best = self.best
        lm = {} if self.metric == "accuracy" else {**self.baselines, "best_perplexity": best.perplexity}
        return {"metric": self.metric, **lm, "sparsity": self.sparsity, "epochs": self.epochs,
                "suggestion": self.suggestion, "best_mt": best.mt, "best_percent": best.percent,
                "best_accuracy": best.accuracy, "points": [p.to_dict() for p in self.points]}


def search_mt(model: nn.Module, bundle, sparsity: float, mts=None, epochs: int = 3, lr: float = 0.01,
              batch_size: int = 64, progress: bool = False, **finetune_kwargs) -> MTSearchResult:
    """MTSearchResult of pruning copies of `model` at `sparsity` with each MT and fine-tuning them.

    `mts` are counts per layer; by default 0 plus `suggest_mt(...).search_range`
    (or DEFAULT_PERCENTS of all prunable weights when nothing collapses without
    MT) plus the data-aware suggestion, capped at the largest MT the sparsity
    leaves room for. `suggestion` is `suggest_mt(..., data=bundle)`'s (its `mt`
    trainability-aware, its `floor` structural). `model` is not changed.
    `finetune_kwargs` go to `finetune.finetune`.
    """
    from collapsekit.data.tasks import task_of
    from collapsekit.analysis.analysis import Analysis
    from collapsekit.analysis.magnitudes import resolve_mt
    from collapsekit.validation.trainable import forecast, suggest_mt
    from collapsekit.pruning.prune import apply_masks
    from collapsekit.training.finetune import finetune
    from collapsekit.training.train import score

    sparsity = fraction(sparsity)  # 0.95 or "95%"
    # One trace and one sort serve the suggestion and every MT: only the allocation changes.
    base = Analysis(model, bundle.example_input(), mt=0)
    suggestion = suggest_mt(base, sparsity=sparsity, data=bundle)
    if mts is None:
        mts = default_mts(suggestion)
    # Each MT reads as `mt=` does everywhere: an int is a count, a decimal or "N%" a percent.
    mts = [resolve_mt(m, suggestion.total) for m in mts]
    bad = [m for m in mts if not 0 <= m <= suggestion.max_mt]
    if bad:
        raise CollapsekitError(f"MT {bad} out of range: sparsity {sparsity} leaves room for MT 0..{suggestion.max_mt}")
    mts = sorted(set(mts))
    task = task_of(bundle)
    baseline = task.baseline(bundle)
    dense = task.value(score(model, bundle.test, next(model.parameters()).device, task=task))
    points = []
    for mt in mts:
        an = base.with_mt(mt)
        level = an.level_report(sparsity)
        masks = an.masks(k=level.pruned)
        pruned = copy.deepcopy(model).cpu()
        apply_masks(pruned, masks)
        predicted = forecast(an, bundle, level.pruned, level.collapsed)  # before fine-tuning
        run = finetune(pruned, masks, bundle, epochs, lr, batch_size, progress=progress, **finetune_kwargs)
        points.append(MTPoint(mt=mt, percent=100.0 * mt / suggestion.total, predicted_collapsed=level.collapsed,
                              emptied_layers=len(level.emptied_layers), accuracy_pruned=run.accuracy_before,
                              accuracy=run.accuracy, forecast_trainable=predicted.trainable,
                              trained=task.trained(run.perplexity if task.metric == "perplexity" else run.accuracy,
                                                   baseline, dense),
                              perplexity_pruned=run.perplexity_before, perplexity=run.perplexity))
    baselines = {} if task.metric == "accuracy" else {"unigram_perplexity": baseline, "dense_perplexity": dense}
    return MTSearchResult(sparsity=float(sparsity), suggestion=suggestion.to_dict(), points=tuple(points),
                          epochs=epochs, metric=task.metric, baselines=baselines)


def default_mts(suggestion) -> list[int]:
    """The default sweep: 0, the structural search range (DEFAULT_PERCENTS of all prunable weights when
    nothing collapses without MT) and the suggestion's own MT, capped at the largest MT allowed."""
    grid = suggestion.search_range or tuple(int(round(p / 100 * suggestion.total)) for p in DEFAULT_PERCENTS)
    return sorted({m for m in (0, *grid, suggestion.mt) if m <= suggestion.max_mt})


__all__ = ["search_mt", "default_mts", "MTSearchResult", "MTPoint", "DEFAULT_PERCENTS"]
