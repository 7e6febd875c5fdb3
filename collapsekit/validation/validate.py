"""Predicted vs observed collapse: the analyzer's verdict per sparsity beside a real Global MP prune and fine-tune.

For each level, one prepared analysis gives the prediction (collapsed, emptied
layers, effective sparsity) and the Global MP masks (exactly `ck.prune`'s) that
prune a copy of the model, which is checked by a forward pass (`probe.output_is_constant`) and fine-tuned masked
(`finetune.finetune`). A level agrees when the forward check sees collapse
exactly where the analyzer predicts it, and no network predicted collapsed
trains above chance (a collapsed network is a constant function, so its
accuracy is at most the largest class share).

Beside that structural check, each level carries the data-aware trainability
forecast (`forecast.Forecast`, measured on a batch of the training data before
fine-tuning) and the outcome it forecasts: `trained`, the fine-tuned accuracy
above chance + margin. `agreement` is the fraction of levels where the two
match; the structural check's fraction is `structural_agreement`.

On a causal LM (a text bundle) the metric is perplexity, lower is better: the
baseline is the unigram perplexity of the test text (the best any constant
function reaches, so a collapsed LM cannot beat it: `collapsekit.data.tasks`),
and `trained` means closing at least `margin` (default half) of the gap from
the unigram to the dense model in log perplexity (docs/language-models.md).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from collapsekit.data.tasks import task_of
from collapsekit.analysis.analysis import Analysis
from collapsekit.pruning.prune import apply_masks
from collapsekit.training.finetune import finetune
from collapsekit.training.train import score
from collapsekit.validation import trainable
from collapsekit.validation.probe import output_is_constant

DEFAULT_MARGIN = 0.1  # "above chance" means test accuracy > 1/num_classes + this (a causal LM's: tasks.CausalLM)


@dataclass(frozen=True)
class LevelValidation:
    """One sparsity level: the prediction, what a real prune + fine-tune did, and whether they agree."""

    sparsity: float
    predicted_collapsed: bool
    emptied_layers: tuple[str, ...]
    effective_sparsity: float
    dead_channel_count: int
    accuracy_pruned: float  # right after pruning, before fine-tuning
    accuracy: float  # after fine-tuning
    trained: bool  # accuracy > chance + margin
    constant_after_prune: bool  # forward check on the pruned model, real weights
    observed_collapsed: bool  # forward check on the pruned model after fine-tuning
    agree: bool  # the structural check: predicted collapse matches the forward checks and the outcome
    forecast_trainable: bool | None = None  # the trainability forecast, made before fine-tuning
    forecast: dict | None = None  # forecast.Forecast.to_dict(): its evidence and reason
    perplexity_pruned: float | None = None  # causal LM: test perplexity right after pruning
    perplexity: float | None = None  # causal LM: after fine-tuning

    @property
    def forecast_agree(self) -> bool:
        """The forecast matches the fine-tune's outcome."""
        return self.forecast_trainable == self.trained

    def to_dict(self) -> dict:
        lm = {} if self.perplexity is None else {"perplexity_pruned": self.perplexity_pruned,
                                                 "perplexity": self.perplexity}
        return {**lm, "sparsity": self.sparsity, "predicted_collapsed": self.predicted_collapsed,
                "emptied_layers": list(self.emptied_layers), "effective_sparsity": self.effective_sparsity,
                "dead_channel_count": self.dead_channel_count, "accuracy_pruned": self.accuracy_pruned,
                "accuracy": self.accuracy, "trained": self.trained,
                "constant_after_prune": self.constant_after_prune, "observed_collapsed": self.observed_collapsed,
                "agree": self.agree, "forecast_trainable": self.forecast_trainable,
                "forecast_agree": self.forecast_agree, "forecast": self.forecast}


@dataclass(frozen=True)
class ValidationReport:
    """Predicted vs observed collapse over sparsity levels (docs/design.md: the `validate` stage)."""

    model: str
    mt: int
    collapse_sparsity: float  # predicted by the analyzer
    dense_accuracy: float
    chance: float  # 1 / num_classes
    margin: float
    epochs: int
    levels: tuple[LevelValidation, ...] = field(default=())
    metric: str = "accuracy"  # the task's: "perplexity" for a causal LM
    unigram_perplexity: float | None = None  # causal LM: the best constant function's test perplexity
    dense_perplexity: float | None = None  # causal LM: the unpruned model's

    @property
    def structural_agreement(self) -> float:
        """Fraction of levels whose structural prediction the prune + fine-tune confirmed."""
        return sum(lv.agree for lv in self.levels) / len(self.levels) if self.levels else 1.0

    agreement_rate = structural_agreement  # the name before the forecast existed

    @property
    def agreement(self) -> float:
        """Fraction of levels where the trainability forecast matched the fine-tune's outcome (`trained`)."""
        return sum(lv.forecast_agree for lv in self.levels) / len(self.levels) if self.levels else 1.0

    def at(self, sparsity: float) -> LevelValidation:
        """The level validated at `sparsity` (nearest within 1e-9)."""
        for lv in self.levels:
            if abs(lv.sparsity - sparsity) < 1e-9:
                return lv
        raise KeyError(f"sparsity {sparsity} was not validated")

    def to_dict(self) -> dict:
        """The JSON document `collapsekit validate --format json` prints."""
        lm = {} if self.metric == "accuracy" else {"unigram_perplexity": self.unigram_perplexity,
                                                   "dense_perplexity": self.dense_perplexity}
        return {"metric": self.metric, **lm, "model": self.model, "mt": self.mt,
                "collapse_sparsity": self.collapse_sparsity,
                "dense_accuracy": self.dense_accuracy, "chance": self.chance, "margin": self.margin,
                "epochs": self.epochs, "agreement": self.agreement,
                "structural_agreement": self.structural_agreement, "agreement_rate": self.structural_agreement,
                "levels": [lv.to_dict() for lv in self.levels]}


def validate(model: nn.Module, bundle, sparsities, mt=None, epochs: int = 3, lr: float = 0.01,
             batch_size: int = 64, margin: float | None = None, name: str | None = None, out=None,
             progress: bool = False, **finetune_kwargs) -> ValidationReport:
    """ValidationReport of Global MP (+ MT) at each of `sparsities`: prediction beside prune + fine-tune.

    `model` is left unchanged (each level prunes a deep copy). `finetune_kwargs`
    (device, lr_schedule, label_smoothing, seed, optimizer...) go to
    `finetune.finetune`; with `out`, each level's run goes to `out/s<sparsity>/`.
    `margin` defaults to the task's (0.1 of accuracy; half the unigram-to-dense
    gap for an LM).
    """
    example = bundle.example_input()
    # One trace and one sort of the magnitudes serve the prediction and every real prune:
    # the analysis's masks are exactly those ck.prune would build.
    an = Analysis(model, example, mt=mt, name=name)
    model = an.model  # the model itself, or its copy with lazy modules initialised (the user's stays as it was)
    report = trainable.report(an, sparsities, data=bundle)  # levels carry the forecast, made before fine-tuning
    task = task_of(bundle)
    margin = task.default_margin if margin is None else margin
    dense = score(model, bundle.test, next(model.parameters()).device, task=task)  # where the model lives
    baseline = task.baseline(bundle)
    levels = []
    for level in report.levels:
        pruned = copy.deepcopy(model).cpu()
        masks = an.masks(k=level.pruned)
        apply_masks(pruned, masks)
        constant_after_prune = output_is_constant(pruned, (example,))
        run = finetune(pruned, masks, bundle, epochs, lr, batch_size, progress=progress,
                       out=None if out is None else Path(out) / f"s{level.sparsity:g}", **finetune_kwargs)
        observed = output_is_constant(pruned.cpu(), (example,))
        value = run.accuracy if task.metric == "accuracy" else run.perplexity
        trained = task.trained(value, baseline, task.value(dense), margin)
        agree = level.collapsed == observed and not (level.collapsed and trained)
        levels.append(LevelValidation(
            sparsity=level.sparsity, predicted_collapsed=level.collapsed, emptied_layers=level.emptied_layers,
            effective_sparsity=level.effective_sparsity, dead_channel_count=level.dead_channel_count,
            accuracy_pruned=run.accuracy_before, accuracy=run.accuracy, trained=trained,
            constant_after_prune=constant_after_prune, observed_collapsed=observed, agree=agree,
            forecast_trainable=level.forecast.trainable, forecast=level.forecast.to_dict(),
            perplexity_pruned=run.perplexity_before, perplexity=run.perplexity))
    lm = task.metric == "perplexity"
    return ValidationReport(model=report.model, mt=report.mt, collapse_sparsity=report.collapse_sparsity,
                            dense_accuracy=dense["accuracy"], chance=1.0 / bundle.num_classes, margin=margin,
                            epochs=epochs, levels=tuple(levels), metric=task.metric,
                            unigram_perplexity=baseline if lm else None,
                            dense_perplexity=dense.get("perplexity"))


__all__ = ["validate", "ValidationReport", "LevelValidation", "DEFAULT_MARGIN"]
