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
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

DEFAULT_MARGIN = 0.1  # "above chance" means test accuracy > 1/num_classes + this


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

    @property
    def forecast_agree(self) -> bool:
        """The forecast matches the fine-tune's outcome."""
        return self.forecast_trainable == self.trained

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "predicted_collapsed": self.predicted_collapsed,
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
        return {"model": self.model, "mt": self.mt, "collapse_sparsity": self.collapse_sparsity,
                "dense_accuracy": self.dense_accuracy, "chance": self.chance, "margin": self.margin,
                "epochs": self.epochs, "agreement": self.agreement,
                "structural_agreement": self.structural_agreement, "agreement_rate": self.structural_agreement,
                "levels": [lv.to_dict() for lv in self.levels]}


def validate(model: nn.Module, bundle, sparsities, mt=None, epochs: int = 3, lr: float = 0.01,
             batch_size: int = 64, margin: float = DEFAULT_MARGIN, name: str | None = None, out=None,
             progress: bool = False, **finetune_kwargs) -> ValidationReport:
    """ValidationReport of Global MP (+ MT) at each of `sparsities`: prediction beside prune + fine-tune.

    `model` is left unchanged (each level prunes a deep copy). `finetune_kwargs`
    (device, lr_schedule, label_smoothing, seed, optimizer...) go to
    `finetune.finetune`; with `out`, each level's run goes to `out/s<sparsity>/`.
    """
    from collapsekit.analysis.analysis import Analysis
    from collapsekit.pruning.prune import apply_masks
    from collapsekit.training.finetune import finetune
    from collapsekit.training.train import evaluate
    from collapsekit.validation import trainable
    from collapsekit.validation.probe import output_is_constant

    example = bundle.example_input()
    # One trace and one sort of the magnitudes serve the prediction and every real prune:
    # the analysis's masks are exactly those ck.prune would build.
    an = Analysis(model, example, mt=mt, name=name)
    report = trainable.report(an, sparsities, data=bundle)  # levels carry the forecast, made before fine-tuning
    dense_accuracy = evaluate(model, bundle.test, next(model.parameters()).device)  # where the model lives
    chance = 1.0 / bundle.num_classes
    levels = []
    for level in report.levels:
        pruned = copy.deepcopy(model).cpu()
        masks = an.masks(k=level.pruned)
        apply_masks(pruned, masks)
        constant_after_prune = output_is_constant(pruned, (example,))
        run = finetune(pruned, masks, bundle, epochs, lr, batch_size, progress=progress,
                       out=None if out is None else Path(out) / f"s{level.sparsity:g}", **finetune_kwargs)
        observed = output_is_constant(pruned.cpu(), (example,))
        trained = run.accuracy > chance + margin
        agree = level.collapsed == observed and not (level.collapsed and trained)
        levels.append(LevelValidation(
            sparsity=level.sparsity, predicted_collapsed=level.collapsed, emptied_layers=level.emptied_layers,
            effective_sparsity=level.effective_sparsity, dead_channel_count=level.dead_channel_count,
            accuracy_pruned=run.accuracy_before, accuracy=run.accuracy, trained=trained,
            constant_after_prune=constant_after_prune, observed_collapsed=observed, agree=agree,
            forecast_trainable=level.forecast.trainable, forecast=level.forecast.to_dict()))
    return ValidationReport(model=report.model, mt=report.mt, collapse_sparsity=report.collapse_sparsity,
                            dense_accuracy=dense_accuracy, chance=chance, margin=margin, epochs=epochs,
                            levels=tuple(levels))


__all__ = ["validate", "ValidationReport", "LevelValidation", "DEFAULT_MARGIN"]
