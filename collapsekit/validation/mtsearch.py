"""MT as a hyper-parameter: prune + fine-tune a set of Minimum Threshold values at one sparsity and pick the best.

Accuracy first rises then falls with MT (docs/design.md), so the candidates start
from `ck.suggest_mt`'s structural floor (the smallest MT that keeps a path) and
its `search_range`, plus MT = 0 as the baseline that shows the collapse, plus
the suggestion made with the data (`suggest_mt(..., data=bundle)`). Each point
carries its trainability forecast beside the fine-tuned accuracy.

By default the candidates race by successive halving (`halving`, on an Optuna
study: `study`): in the forecast's order each gets a short part of its
fine-tuning run, the better half goes on, until one is left and finishes its
run; the whole search costs at most a third of fine-tuning every candidate
(SHARE; with so few candidates that a third cannot pay for one whole run,
every rung is shorter, the last one too). A structurally collapsed candidate is a constant function whatever
its weights (invariant 4), so it is measured without training. `full=True` is
the exhaustive sweep: every candidate, collapsed ones too, fine-tuned for every
epoch. With `storage` (an Optuna database URL) several processes share one
search and a rerun of a finished one trains nothing.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from collapsekit.analysis.analysis import Analysis
from collapsekit.analysis.magnitudes import resolve_mt
from collapsekit.data.tasks import TASKS, task_of
from collapsekit.errors import CollapsekitError
from collapsekit.files.runstate import fingerprint
from collapsekit.pruning.prune import apply_masks
from collapsekit.training import distributed
from collapsekit.training.device import resolve_device
from collapsekit.training.train import evaluate, score
from collapsekit.validation.halving import rung_steps
from collapsekit.validation.pausable import PausableRun
from collapsekit.validation.trainable import forecast, suggest_mt

# Sweep (percent of all prunable weights) when no MT is needed to avoid collapse:
# around the reference code's default of 0.05 %.
DEFAULT_PERCENTS = (0.01, 0.05, 0.1, 0.5)
SHARE = 1 / 3  # the halving search's budget, as a fraction of the exhaustive sweep's fine-tuning


@dataclass(frozen=True)
class Metric:
    """What the search ranks candidates by: a number measured on the test set, and which way is better.

    `evaluate(model, bundle)` measures it on the model's device; `epoch_key` is
    the entry of `train.fit`'s per-epoch metrics holding the same number (None:
    none does); `floor(bundle)` is the best a constant function scores (the
    largest class share): a value no better says nothing about how a run will
    go; `trained(value, bundle)` says the value means the net learned.
    """

    name: str
    maximize: bool
    evaluate: Callable
    floor: Callable
    trained: Callable
    epoch_key: str | None = None
    baselines: dict | None = None  # reported beside the points (a causal LM's unigram and dense perplexity)


def _accuracy(model: nn.Module, bundle) -> float:
    return evaluate(model, bundle.test, next(model.parameters()).device)


def _constant(bundle) -> float:
    labels = bundle.test.tensors[1]
    return float(labels.bincount().max()) / len(labels)


def _above_chance(accuracy: float, bundle) -> bool:
    return TASKS["classification"].trained(accuracy, 1.0 / bundle.num_classes, None)  # validate's "trained"


ACCURACY = Metric("accuracy", maximize=True, evaluate=_accuracy, floor=_constant, trained=_above_chance,
                  epoch_key="test_acc")


def search_metric(bundle, model: nn.Module | None = None) -> Metric:
    """The metric the MT search optimises on `bundle`: test accuracy for a classifier; for a causal LM test
    perplexity (lower is better), whose floor is the unigram perplexity (the best constant function) and whose
    `trained` is the task's, against the dense `model`'s perplexity."""
    task = task_of(bundle)
    if task.metric == "accuracy":
        return ACCURACY

    def perplexity(net: nn.Module, data) -> float:
        return task.value(score(net, data.test, next(net.parameters()).device, task=task))

    unigram = task.baseline(bundle)
    dense = perplexity(model, bundle) if model is not None else None
    return Metric("perplexity", maximize=False, evaluate=perplexity, floor=lambda data: unigram,
                  trained=lambda value, data: task.trained(value, unigram, dense), epoch_key="test_perplexity",
                  baselines={"unigram_perplexity": unigram, "dense_perplexity": dense})


@dataclass(frozen=True)
class MTPoint:
    """One candidate MT: what Global MP + MT and the fine-tune gave, and how far its fine-tune went."""

    mt: int  # weights per layer
    percent: float  # mt as a percent of all prunable weights
    predicted_collapsed: bool
    emptied_layers: int
    accuracy_pruned: float
    accuracy: float  # after fine-tuning for `budget` epochs
    forecast_trainable: bool | None = None  # the trainability forecast, made before fine-tuning
    trained: bool | None = None  # accuracy > chance + validate's margin
    budget: float | None = None  # fine-tuning epochs this point reached (the search's epochs: the whole run)
    forecast_probability: float | None = None  # the forecast's probability of training, where it gives one
    metric: str = "accuracy"  # what `accuracy_pruned` and `accuracy` hold: a causal LM's are perplexities
    diverged: bool = False  # its fine-tune's loss became NaN or infinite: `accuracy` is NaN, it ranks last

    @property
    def perplexity_pruned(self) -> float | None:
        """A causal LM's perplexity right after pruning (None for a classifier)."""
        return None if self.metric == "accuracy" else self.accuracy_pruned

    @property
    def perplexity(self) -> float | None:
        """A causal LM's perplexity after fine-tuning (None for a classifier)."""
        return None if self.metric == "accuracy" else self.accuracy

    def to_dict(self) -> dict:
        """Plain JSON: a diverged run's NaN metric is null."""
        after = None if math.isnan(self.accuracy) else self.accuracy
        lm = {} if self.metric == "accuracy" else {"perplexity_pruned": self.accuracy_pruned, "perplexity": after}
        return {**lm, "mt": self.mt, "percent": self.percent, "predicted_collapsed": self.predicted_collapsed,
                "emptied_layers": self.emptied_layers, "accuracy_pruned": self.accuracy_pruned,
                "accuracy": after, "forecast_trainable": self.forecast_trainable,
                "forecast_probability": self.forecast_probability, "trained": self.trained, "budget": self.budget,
                "diverged": self.diverged}


@dataclass(frozen=True)
class MTSearchResult:
    """The accuracy-vs-MT points at one sparsity and the MT the search picks (`suggestion["mt"]`).

    `suggestion` is `suggest_mt(..., data=bundle)`'s document with `mt` the
    search's pick and `forecast_mt` the forecast's own suggestion.
    `fine_tune_epochs` is what this call trained (0 for a finished study).
    """

    sparsity: float
    suggestion: dict
    points: tuple[MTPoint, ...]
    epochs: int
    search: str = "full"  # "halving" or "full"
    fine_tune_epochs: float | None = None
    study: str | None = None
    metric: str = "accuracy"  # "perplexity" (lower is better) for a causal LM
    baselines: dict | None = None  # causal LM: unigram_perplexity, dense_perplexity

    @property
    def best(self) -> MTPoint:
        """The picked point: the suggestion's MT, else the best metric (smallest MT on ties)."""
        pick = [p for p in self.points if p.mt == self.suggestion.get("mt")]
        sign = -1.0 if self.metric == "perplexity" else 1.0
        return pick[0] if pick else max(self.points, key=lambda p: (not math.isnan(p.accuracy), sign * p.accuracy
                                                                    if not math.isnan(p.accuracy) else 0.0, -p.mt))

    def to_dict(self) -> dict:
        """The JSON document `collapsekit mt-search --format json` prints."""
        best = self.best
        lm = {} if self.metric == "accuracy" else {**(self.baselines or {}), "best_perplexity": best.accuracy}
        return {"metric": self.metric, **lm, "sparsity": self.sparsity, "epochs": self.epochs, "search": self.search,
                "fine_tune_epochs": self.fine_tune_epochs, "full_sweep_epochs": self.epochs * len(self.points),
                "study": self.study, "suggestion": self.suggestion, "best_mt": best.mt,
                "best_percent": best.percent, "best_accuracy": best.accuracy,
                "points": [p.to_dict() for p in self.points]}


@dataclass(frozen=True)
class _Candidate:
    """One MT before fine-tuning: its masks, the static prediction and the forecast."""

    mt: int
    masks: dict
    collapsed: bool
    emptied_layers: int
    forecast: object  # forecast.Forecast

    @property
    def probability(self) -> float:
        """The forecast's probability of training; from `trainable` (and its signal) where it gives none."""
        p = getattr(self.forecast, "probability", None)
        return float(p) if p is not None else float(self.forecast.trainable)

    def order_key(self):
        return (self.collapsed, -self.probability, -float(self.forecast.evidence.get("signal", 0.0)), self.mt)


def search_mt(model: nn.Module | Analysis, bundle, sparsity: float, mts=None, epochs: int = 3, lr: float = 0.01,
              batch_size: int = 64, progress: bool = False, full: bool = False, storage: str | None = None,
              study_name: str | None = None, heartbeat: int | None = None, **finetune_kwargs) -> MTSearchResult:
    """MTSearchResult of pruning copies of `model` at `sparsity` with each candidate MT and fine-tuning them.

    `mts` are the candidates (read as `mt=` everywhere); by default 0 plus
    `suggest_mt(...).search_range` (or DEFAULT_PERCENTS of all prunable weights
    when nothing collapses without MT) plus the data-aware suggestion, capped at
    the largest MT the sparsity leaves room for. By default successive halving
    picks one, spending about SHARE of the exhaustive sweep; `full=True` runs
    the sweep itself. `model` may be an `Analysis` of the model (its forecasts are reused). `storage`
    (`sqlite:///FILE.db`, a PostgreSQL/MySQL URL)
    and `study_name` let several processes share the search; `heartbeat` is
    their heartbeat (seconds). `model` is not changed; `finetune_kwargs` go to
    `finetune.finetune`.
    """
    from collapsekit.validation import study as shared  # Optuna loads here, not with every command

    if storage is not None and distributed.env_world_size() > 1:
        raise CollapsekitError("--storage shares a search between separate processes; under torchrun every rank "
                               "already runs the whole search: use one or the other")
    # One trace and one sort serve the suggestion and every MT: only the allocation changes. An Analysis passed in
    # is used as it is, with the forecasts it has made (the same MT and count: the same seeded forecast).
    if isinstance(model, Analysis) and model.checkpoint is not None:
        raise CollapsekitError("the MT search fine-tunes the model: analyse it with its weights loaded, not streamed")
    base = Analysis.of(model, bundle.example_input(), mt=0)
    model = base.model  # the model itself, or its copy with lazy modules initialised (the user's stays as it was)
    metric = search_metric(bundle, model)
    aware = suggest_mt(base, sparsity=sparsity, data=bundle)
    mts = default_mts(aware) if mts is None else mts
    # Each MT reads as `mt=` does everywhere: an int is a count, a decimal or "N%" a percent.
    mts = [resolve_mt(m, aware.total) for m in mts]
    bad = [m for m in mts if not 0 <= m <= aware.max_mt]
    if bad:
        raise CollapsekitError(f"MT {bad} out of range: sparsity {sparsity} leaves room for MT 0..{aware.max_mt}")
    candidates = sorted((_candidate(base, bundle, sparsity, mt) for mt in sorted(set(mts))),
                        key=_Candidate.order_key)
    racing = candidates if full else [c for c in candidates if not c.collapsed]
    per_epoch = steps_per_epoch(len(bundle.train), batch_size, distributed.env_world_size())
    total = epochs * per_epoch
    steps = [total] if full else rung_steps(len(racing), total, SHARE * len(candidates) * total)
    plan = shared.SearchPlan(candidates=tuple(c.mt for c in racing), steps=tuple(steps), steps_per_epoch=per_epoch,
                             run_steps=total, maximize=metric.maximize, floor=metric.floor(bundle),
                             config=_config(model, bundle, sparsity, epochs, lr, batch_size, full, metric, racing,
                                            steps, finetune_kwargs))
    by_mt = {c.mt: c for c in candidates}
    pruned_values = {c.mt: _pruned_value(model, c, metric, bundle, finetune_kwargs.get("device")) for c in candidates}

    def start_run(mt: int):
        pruned = apply_masks(copy.deepcopy(model).cpu(), by_mt[mt].masks)
        return PausableRun(pruned, by_mt[mt].masks, bundle, epochs, evaluate=lambda m: metric.evaluate(m, bundle),
                           epoch_metric=metric.epoch_key, lr=lr, batch_size=batch_size, **finetune_kwargs)

    done = None
    if racing:
        with shared.quiet_optuna():
            study = shared.open_study(plan, storage, study_name, heartbeat or shared.HEARTBEAT)
            done = shared.work(study, plan, start_run, progress=progress)
    points = []
    for c in sorted(candidates, key=lambda c: c.mt):
        reached = done.values.get(c.mt, {}) if done else {}
        step = max(reached, default=0)
        value = reached[step] if reached else pruned_values[c.mt]
        diverged = bool(reached) and math.isnan(value)
        points.append(MTPoint(mt=c.mt, percent=100.0 * c.mt / aware.total, predicted_collapsed=c.collapsed,
                              emptied_layers=c.emptied_layers, accuracy_pruned=pruned_values[c.mt], accuracy=value,
                              forecast_trainable=c.forecast.trainable, trained=metric.trained(value, bundle),
                              budget=round(step / per_epoch, 4),
                              forecast_probability=getattr(c.forecast, "probability", None), metric=metric.name,
                              diverged=diverged))
    if racing and all(p.diverged for p in points if p.mt in {c.mt for c in racing}):
        raise CollapsekitError(f"every candidate's fine-tune diverged (loss NaN or infinite); lower the lr (now {lr})")
    pick = done.state.winner if done else aware.mt
    skipped = len(candidates) - len(racing)
    how = (f"the best of {len(racing)} candidates fine-tuned for {epochs} epochs each" if full else
           f"successive halving over {len(racing)} candidates" + (f" ({skipped} collapsed: not trained)" if skipped
                                                                   else "")
           + f", the last left after rungs at {', '.join(f'{s / per_epoch:.3g}' for s in steps)} epochs")
    suggestion = {**aware.to_dict(), "mt": pick, "percent": 100.0 * pick / aware.total, "forecast_mt": aware.mt,
                  "reason": how if racing else f"every candidate collapses; {aware.reason}"}
    return MTSearchResult(sparsity=float(sparsity), suggestion=suggestion, points=tuple(points), epochs=epochs,
                          search="full" if full else "halving",
                          fine_tune_epochs=round(done.steps_trained / per_epoch, 4) if done else 0.0,
                          study=done.study_name if done and storage is not None else None, metric=metric.name,
                          baselines=metric.baselines)


def steps_per_epoch(examples: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one fine-tuning epoch: a rank's shard over its share of the global batch, as `finetune`."""
    if world_size > 1:
        return math.ceil(math.ceil(examples / world_size) / max(1, batch_size // world_size))
    return math.ceil(examples / batch_size)


def default_mts(suggestion) -> list[int]:
    """The default candidates: 0, the structural search range (DEFAULT_PERCENTS of all prunable weights when
    nothing collapses without MT) and the suggestion's own MT, capped at the largest MT allowed."""
    grid = suggestion.search_range or tuple(int(round(p / 100 * suggestion.total)) for p in DEFAULT_PERCENTS)
    return sorted({m for m in (0, *grid, suggestion.mt) if m <= suggestion.max_mt})


def _candidate(base, bundle, sparsity: float, mt: int) -> _Candidate:
    an = base.with_mt(mt)
    level = an.level_report(sparsity)
    return _Candidate(mt=mt, masks=an.masks(k=level.pruned), collapsed=level.collapsed,
                      emptied_layers=len(level.emptied_layers),
                      forecast=forecast(an, bundle, level.pruned, level.collapsed))  # before any fine-tuning


def _pruned_value(model: nn.Module, c: _Candidate, metric: Metric, bundle, device) -> float:
    """The metric of the pruned copy before fine-tuning, on the fine-tuning device."""
    pruned = apply_masks(copy.deepcopy(model).to(resolve_device(device or "auto")), c.masks)
    return float(metric.evaluate(pruned, bundle))


def _config(model, bundle, sparsity, epochs, lr, batch_size, full, metric, racing, steps, finetune_kwargs) -> dict:
    """What processes sharing a study must agree on: the same model, data, candidates and fine-tuning."""
    settings = {k: str(v) for k, v in sorted(finetune_kwargs.items()) if k != "device"}
    return {"search": "full" if full else "halving", "sparsity": float(sparsity), "epochs": int(epochs),
            "lr": float(lr), "batch_size": int(batch_size), "finetune": settings, "metric": metric.name,
            "floor": metric.floor(bundle),
            "data": bundle.name, "train_examples": len(bundle.train), "model_sha256": fingerprint(model),
            "candidates": [c.mt for c in racing], "steps": list(steps)}


__all__ = ["search_mt", "default_mts", "steps_per_epoch", "search_metric", "Metric", "ACCURACY", "MTSearchResult",
           "MTPoint", "DEFAULT_PERCENTS", "SHARE"]
