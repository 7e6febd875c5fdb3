"""Trainability forecast: measurements at the pruned weights on a batch of data say whether fine-tuning will work.

A kept input-to-output path (`level.collapsed is False`) is necessary for a
pruned network to train, not sufficient: Global MP can leave a path whose
product of kept weights is so small that the output barely moves with the
input, and gradients barely reach the layers. Lee et al. ("A Signal
Propagation Perspective for Pruning Neural Networks at Initialization", ICLR
2020) show that trainability after pruning is governed by how faithfully the
pruned network propagates signal forward (its input-output Jacobian) and
gradient backward; SynFlow (Tanaka et al., NeurIPS 2020) scores the same thing
as the product of weight magnitudes along kept paths; GraSP (Wang et al., ICLR
2020) as the gradient norm the pruned net preserves. Here the three are
measured directly, on the real pruned weights and real data, with one forward
and one backward pass (no fine-tuning):

- `signal`: the spread of the logits over the batch (their standard deviation
  per class, averaged) relative to the dense model's on the same batch: the
  finite-difference version of the Jacobian's scale;
- `gradient`: per prunable layer, the norm of the loss gradient on its kept
  weights relative to the norm of those weights (how far one SGD step moves
  the layer); the evidence keeps the smallest over layers and how many layers
  it reaches at all;
- `accuracy_pruned`: top-1 accuracy on the batch right after pruning.

BatchNorm is measured the way fine-tuning runs it: in train mode, on batch
statistics. Masked fine-tuning trains with batch statistics, so a vanishing
signal that BN re-normalises is one fine-tuning can use, while eval mode with
the dense running statistics would call it dead (its numbers are kept in the
evidence as `signal_eval` and `accuracy_pruned_eval`, never used by the rule).

The rule (`decide`) was calibrated on digits by
analyses/trainability_forecast.py (thresholds and the runs behind them in
analyses/README.md); it is a forecast, checked against real fine-tunes by
`validate` and `mt-search`, and never mixed into `collapsed`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from collapsekit.errors import CollapsekitError
from collapsekit.pruning.prune import apply_masks

BATCH = 256  # training examples per measurement: enough for stable per-class spreads, cheap on CPU
SEED = 0

# Calibrated thresholds (analyses/trainability_forecast.py, calibration runs; see analyses/README.md), per
# regime: with batch norm on batch statistics the logit spread is re-normalised at every BN, so a pruned
# net keeps far more of it, and its layers' gradients are scale-free; without, both shrink together.
THRESHOLDS = {
    "plain": {"signal": 3e-3, "gradient_relative_min": 0.3},
    "batch_norm": {"signal": 0.05, "gradient_relative_min": 0.05},
}
TINY = 1e-12


@dataclass(frozen=True)
class Forecast:
    """Will masked fine-tuning lift the pruned network above chance? `trainable` and the measurements behind it."""

    trainable: bool
    evidence: dict  # name -> float (see `measure`)
    reason: str  # which measurement decided
    batch: int  # training examples measured

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "reason": self.reason, "batch": self.batch,
                "evidence": dict(self.evidence)}


@dataclass(frozen=True)
class _Dense:
    """What the dense model gives on the measurement batch: the reference for `signal`."""

    spread: float
    spread_eval: float
    accuracy: float
    ratios: dict  # weight name -> |grad| / |weight| of the dense model (every weight of 2+ dimensions)


@dataclass
class Forecaster:
    """Forecasts for one model and one data batch: built once, called with each level's masks.

    The dense model's spread on the batch is measured once here; each call
    prunes a copy (the user's model is never touched).
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    margin: float = 0.1
    bottlenecks: frozenset | None = None  # layers every path crosses; None: every layer counts as one
    rows: Callable | None = None  # logits -> [predictions, classes] (a causal LM's tokens); None: flatten(1)
    chance: float | None = None  # what "accurate right after pruning" must beat; None: 1 / num_classes
    dense: _Dense = field(init=False)

    def __post_init__(self):
        if any(p.is_meta for p in self.model.parameters()):
            raise CollapsekitError("the trainability forecast runs the model on data: load its weights first "
                                   "(a meta-device model has none)")
        net = _copy(self.model, {})
        spread, _, acc = _forward(net, self.x, self.y, train=True, rows=self.rows)
        spread_eval, _, _ = _forward(net, self.x, self.y, train=False, rows=self.rows)
        if spread <= TINY:
            raise CollapsekitError("the dense model's output does not vary over the data batch: "
                                   "nothing to compare the pruned model with")
        full = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in self.model.named_parameters() if p.ndim > 1}
        ratios, _, _ = _gradients(net, self.x, self.y, full, rows=self.rows)
        self.dense = _Dense(spread=spread, spread_eval=spread_eval, accuracy=acc, ratios=ratios)

    @classmethod
    def from_bundle(cls, model: nn.Module, bundle, batch: int = BATCH, seed: int = SEED, margin: float = 0.1,
                    bottlenecks=None) -> "Forecaster":
        """A Forecaster on `batch` training examples of `bundle` (a `collapsekit.data.DataBundle`), drawn with `seed`.

        `bottlenecks` (weight names of layers no path avoids, `Analysis.graph`)
        limits the gradient test to them: a bypassable layer that gradient
        misses costs capacity, not trainability (its shortcut carries the signal).
        A causal LM's every next-token prediction counts as one example: `batch`
        predictions, in whole sequences, and its chance is the most frequent token's share.
        """
        from collapsekit.data.tasks import task_of

        task = task_of(bundle)
        x, y = bundle.train.tensors[:2]
        if len(x) == 0:
            raise CollapsekitError(f"data set {bundle.name!r} has no training examples to forecast with")
        per_example = y[0].numel()  # predictions per example: 1 for a label, the context for an LM
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:max(2, batch // per_example)]
        rows = None if task.name == "classification" else (lambda t: task.flat(t, t)[0])
        return cls(model, x[idx], y[idx] if rows is None else y[idx].reshape(-1), bundle.num_classes, margin,
                   None if bottlenecks is None else frozenset(bottlenecks), rows=rows,
                   chance=None if rows is None else task.forecast_chance(y[idx], bundle.num_classes))

    def measure(self, masks: dict[str, torch.Tensor]) -> dict:
        """The evidence at the weights `masks` (name -> bool keep) leave: floats, see the module docstring."""
        return measure(self.model, masks, self.x, self.y, self.dense, self.bottlenecks, self.rows)

    def __call__(self, masks: dict[str, torch.Tensor]) -> Forecast:
        """Forecast for the model pruned with `masks`."""
        evidence = self.measure(masks)
        chance = 1.0 / self.num_classes if self.chance is None else self.chance
        trainable, reason = decide(evidence, chance, self.margin)
        return Forecast(trainable=trainable, evidence=evidence, reason=reason, batch=int(len(self.x)))


def decide(evidence: dict, chance: float, margin: float = 0.1) -> tuple[bool, str]:
    """(trainable, reason) from the evidence: the calibrated rule.

    Accuracy already above chance + margin right after pruning (BN on batch
    statistics) means the pruned net works before any training. Otherwise it
    must both carry signal forward (`signal`, the logit spread relative to the
    dense model's) and let gradient reach every layer that keeps weights, each
    at a fair share of what the dense model's same layer gets
    (`gradient_relative_min`): Lee et al.'s two conditions for trainability
    after pruning (forward signal, backward gradient), with THRESHOLDS for
    networks with and without batch norm.
    """
    if evidence["accuracy_pruned"] > chance + margin:
        return True, "accurate right after pruning"
    if evidence["gradient_reach"] < 1.0:
        return False, f"gradient reaches {evidence['gradient_reach']:.0%} of the layers that keep weights"
    regime = "batch_norm" if evidence.get("batch_norm") else "plain"
    for key, least in THRESHOLDS[regime].items():
        if evidence[key] < least:
            return False, f"{key} {evidence[key]:.2g} < {least:g} ({regime.replace('_', ' ')})"
    return True, f"signal and gradient reach every layer ({regime.replace('_', ' ')})"


def measure(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
            dense: _Dense, bottlenecks: frozenset | None = None, rows: Callable | None = None) -> dict:
    """Evidence dict of `model` pruned with `masks` on the batch (x, y), relative to the dense reference.

    Keys: signal (train-mode BN spread / dense), signal_eval (eval mode, for
    contrast), accuracy_pruned (train-mode BN), accuracy_pruned_eval,
    gradient_min / gradient_median (relative kept-weight gradient over layers
    that keep weights), gradient_reach (fraction of those layers whose kept
    gradient is non-zero), gradient_relative_min / _median (each layer's
    relative gradient over the dense model's; reach and these two over the
    `bottlenecks` only, when given), batch_norm (1.0 if the model has any), loss.
    """
    net = _copy(model, masks)
    spread_eval, _, acc_eval = _forward(net, x, y, train=False, rows=rows)
    by_layer, logits, loss = _gradients(net, x, y, masks, rows=rows)
    spread = _spread(logits)
    out = logits
    ratios = sorted(by_layer.values())
    # Each layer's gradient relative to what the dense model's same layer gets: free of the scale
    # each architecture gives its layers (batch norm makes pre-BN weights scale-invariant).
    # Only bottlenecks must learn: a bypassable branch gradient misses is capacity lost, not the path.
    judged = {n: r for n, r in by_layer.items() if not bottlenecks or n in bottlenecks} or by_layer
    relative = sorted(r / dense.ratios[n] for n, r in judged.items() if dense.ratios.get(n, 0.0) > TINY)
    norm2 = sum((r * float(net.get_parameter(n).detach()[masks[n]].norm())) ** 2 for n, r in by_layer.items())
    reached = sum(r > TINY for r in judged.values())
    return {
        "signal": spread / dense.spread,
        "signal_eval": spread_eval / dense.spread_eval if dense.spread_eval > TINY else 0.0,
        "accuracy_pruned": float((out.argmax(1) == y).float().mean()),
        "class_signal": class_signal(logits, y),
        "ncm_accuracy": ncm_accuracy(logits, y),
        "accuracy_pruned_eval": acc_eval,
        "gradient_min": ratios[0] if ratios else 0.0,
        "gradient_median": ratios[len(ratios) // 2] if ratios else 0.0,
        "gradient_reach": reached / len(judged) if judged else 0.0,
        "gradient_relative_min": relative[0] if relative else 0.0,
        "gradient_relative_median": relative[len(relative) // 2] if relative else 0.0,
        "gradient_norm": math.sqrt(norm2),
        "loss": float(loss.detach()),
        "batch": float(len(y)),
        "batch_norm": float(any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())),
    }


def _gradients(net: nn.Module, x, y, masks: dict, rows: Callable | None = None
               ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """({weight name: |grad| / |weight| over its kept entries}, logits, loss) of one train-mode-BN pass.

    Only weights in `masks` that keep something: an emptied layer is the
    structural verdict's business.
    """
    _bn_mode(net, train=True)
    net.zero_grad(set_to_none=True)
    out = _logits(net(x), rows)
    if out.shape[1] <= int(y.max()):
        raise CollapsekitError(f"the model gives {out.shape[1]} outputs per example but the data has label "
                               f"{int(y.max())}: the forecast needs one logit per class")
    loss = F.cross_entropy(out, y)
    loss.backward()
    ratios = {}
    for name, p in net.named_parameters():
        keep = masks.get(name)
        if keep is None or not keep.any():
            continue
        w = float(p.detach()[keep].norm())
        g = float(p.grad[keep].norm()) if p.grad is not None else 0.0
        ratios[name] = g / w if w > TINY else (math.inf if g > TINY else 0.0)
    return ratios, out.detach(), loss.detach()


def class_signal(out: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the outputs' variance over the batch that the labels explain (between-class / total, R^2).

    Scale-free, so batch norm's re-normalisation of a faint signal does not
    inflate it: noise amplified to unit variance explains ~(classes - 1) / batch.
    """
    centred = out - out.mean(0)
    total = float((centred ** 2).sum())
    if total <= TINY:
        return 0.0
    between = sum(float((y == c).sum()) * float((centred[y == c].mean(0) ** 2).sum()) for c in y.unique())
    return between / total


def ncm_accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of nearest-class-mean on the outputs, means from one half of the batch, scored on the other.

    The class information a re-fitted last layer could read, whatever the kept
    last-layer weights do with it now.
    """
    half = len(y) // 2
    fit, test = slice(0, half), slice(half, None)
    classes = y[fit].unique()
    if len(classes) < 2:
        return 0.0
    # Centred and scaled per unit (so one loud unit does not decide alone, and a faint signal
    # riding on a large constant does not drown in rounding); distances computed directly.
    centre, scale = out[fit].mean(0), out[fit].std(0)
    scale = scale.clamp_min(float(scale.max()) * 1e-6 + TINY)
    z = (out - centre) / scale
    means = torch.stack([z[fit][y[fit] == c].mean(0) for c in classes])
    pred = classes[((z[test][:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    return float((pred == y[test]).float().mean())


def _copy(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A float32 CPU deep copy with `masks` applied (+0.0 at pruned positions)."""
    net = copy.deepcopy(model).cpu().float()
    if masks:  # {} is the dense reference
        apply_masks(net, masks)  # the one masked write ck.prune uses
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _forward(net: nn.Module, x, y, train: bool, rows: Callable | None = None) -> tuple[float, torch.Tensor, float]:
    """(spread, logits, accuracy) of one no-grad pass with BN on batch (train) or running statistics."""
    _bn_mode(net, train)
    with torch.no_grad():
        out = _logits(net(x), rows)
    return _spread(out), out, float((out.argmax(1) == y).float().mean())


def _bn_mode(net: nn.Module, train: bool) -> None:
    """Everything in eval mode (no dropout noise), batch norms in `train` mode: batch statistics as in fine-tuning."""
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(train)


def _logits(out, rows: Callable | None = None) -> torch.Tensor:
    from collapsekit.validation.probe import flat_outputs

    tensors = flat_outputs(out)
    if not tensors:
        raise CollapsekitError("the model returned no tensor: cannot forecast trainability")
    return (tensors[0].flatten(1) if rows is None else rows(tensors[0])).float()


def _spread(out: torch.Tensor) -> float:
    """Mean over output units of the standard deviation over the batch: how much the output follows the data."""
    return float(out.std(dim=0, unbiased=False).mean())


__all__ = ["Forecast", "Forecaster", "decide", "measure", "class_signal", "ncm_accuracy", "THRESHOLDS", "BATCH"]
