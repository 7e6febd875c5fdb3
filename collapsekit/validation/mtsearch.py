"""MT as a hyper-parameter: prune + fine-tune over a sweep of Minimum Threshold values and pick the best.

Accuracy first rises then falls with MT (DESIGN.md), so the sweep starts from
`ck.suggest_mt` (the smallest MT that keeps a path) and tries its
`search_range`, plus MT = 0 as the baseline that shows the collapse.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch.nn as nn

from collapsekit.errors import CollapsekitError

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

    def to_dict(self) -> dict:
        return {"mt": self.mt, "percent": self.percent, "predicted_collapsed": self.predicted_collapsed,
                "emptied_layers": self.emptied_layers, "accuracy_pruned": self.accuracy_pruned,
                "accuracy": self.accuracy}


@dataclass(frozen=True)
class MTSearchResult:
    """The accuracy-vs-MT curve at one sparsity and the best MT (highest accuracy, smallest MT on ties)."""

    sparsity: float
    suggestion: dict  # ck.suggest_mt's MTSuggestion.to_dict()
    points: tuple[MTPoint, ...]
    epochs: int

    @property
    def best(self) -> MTPoint:
        return max(self.points, key=lambda p: (p.accuracy, -p.mt))

    def to_dict(self) -> dict:
        """The JSON document `collapsekit mt-search --format json` prints."""
        best = self.best
        return {"sparsity": self.sparsity, "epochs": self.epochs, "suggestion": self.suggestion,
                "best_mt": best.mt, "best_percent": best.percent, "best_accuracy": best.accuracy,
                "points": [p.to_dict() for p in self.points]}


def search_mt(model: nn.Module, bundle, sparsity: float, mts=None, epochs: int = 3, lr: float = 0.01,
              batch_size: int = 64, progress: bool = False, **finetune_kwargs) -> MTSearchResult:
    """MTSearchResult of pruning copies of `model` at `sparsity` with each MT and fine-tuning them.

    `mts` are counts per layer; by default 0 plus `suggest_mt(...).search_range`
    (or DEFAULT_PERCENTS of all prunable weights when nothing collapses without
    MT), capped at the largest MT the sparsity leaves room for. `model` is not
    changed. `finetune_kwargs` go to `finetune.finetune`.
    """
    from collapsekit.analysis.analysis import Analysis
    from collapsekit.analysis.suggest import suggest_mt
    from collapsekit.pruning.prune import apply_masks
    from collapsekit.training.finetune import finetune

    # One trace and one sort serve the suggestion and every MT: only the allocation changes.
    base = Analysis(model, bundle.example_input(), mt=0)
    suggestion = suggest_mt(base, sparsity=sparsity)
    if mts is None:
        grid = suggestion.search_range or tuple(int(round(p / 100 * suggestion.total)) for p in DEFAULT_PERCENTS)
        mts = [m for m in (0, *grid) if m <= suggestion.max_mt]
    bad = [m for m in mts if not 0 <= int(m) <= suggestion.max_mt]
    if bad:
        raise CollapsekitError(f"MT {bad} out of range: sparsity {sparsity} leaves room for MT 0..{suggestion.max_mt}")
    mts = sorted({int(m) for m in mts})
    points = []
    for mt in mts:
        an = base.with_mt(mt)
        level = an.level_report(sparsity)
        masks = an.masks(k=level.pruned)
        pruned = copy.deepcopy(model).cpu()
        apply_masks(pruned, masks)
        run = finetune(pruned, masks, bundle, epochs, lr, batch_size, progress=progress, **finetune_kwargs)
        points.append(MTPoint(mt=mt, percent=100.0 * mt / suggestion.total, predicted_collapsed=level.collapsed,
                              emptied_layers=len(level.emptied_layers), accuracy_pruned=run.accuracy_before,
                              accuracy=run.accuracy))
    return MTSearchResult(sparsity=float(sparsity), suggestion=suggestion.to_dict(), points=tuple(points),
                          epochs=epochs)


def to_text(result: MTSearchResult) -> str:
    """The accuracy-vs-MT table `collapsekit mt-search` prints, the best row marked."""
    s = result.suggestion
    best = result.best
    lines = [f"sparsity {result.sparsity:g}: suggested MT {s['mt']} ({s['percent']:.4g} % of {s['total']} "
             f"prunable weights; {s['reason']})",
             f"{'MT':>8} {'percent':>9} {'predicted':>10} {'emptied':>8} {'acc pruned':>11} {'acc tuned':>10}"]
    for p in result.points:
        mark = "  <- best" if p is best else ""
        lines.append(f"{p.mt:>8} {p.percent:>9.4f} {'collapsed' if p.predicted_collapsed else 'alive':>10} "
                     f"{p.emptied_layers:>8} {p.accuracy_pruned:>11.4f} {p.accuracy:>10.4f}{mark}")
    curve = np.array([p.accuracy for p in result.points])
    lines.append(f"best MT {best.mt} ({best.percent:.4g} %): accuracy {best.accuracy:.4f} "
                 f"(range {curve.min():.4f}-{curve.max():.4f} over {len(curve)} values, {result.epochs} epochs each)")
    return "\n".join(lines)


__all__ = ["search_mt", "MTSearchResult", "MTPoint", "to_text", "DEFAULT_PERCENTS"]
