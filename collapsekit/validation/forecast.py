"""Trainability forecast: scale-free measurements at the pruned weights on a data batch, read by a small logistic
model as the probability that masked fine-tuning lifts the pruned net above chance.

A kept input-to-output path (`level.collapsed is False`) is necessary for a
pruned network to train, not sufficient: Global MP can leave a path whose
product of kept weights is so small that the output barely moves with the
input, and gradients barely reach the layers. Lee et al. ("A Signal
Propagation Perspective for Pruning Neural Networks at Initialization", ICLR
2020) show that trainability after pruning is governed by how faithfully the
pruned network propagates signal forward and gradient backward; SynFlow
(Tanaka et al., NeurIPS 2020) scores the product of weight magnitudes along
kept paths, GraSP (Wang et al., ICLR 2020) the gradient norm the pruned net
keeps. Here both are measured on the real pruned weights and real data, with
one forward and one backward pass, each made free of the network's depth and
width by construction (`FEATURES`):

- `loss_kept`: (H - L_pruned) / (H - L_dense), the share of the dense model's
  loss gain over the uninformed predictor (H, the entropy of the batch's
  targets: log(classes) for balanced classes, the unigram entropy for a
  language model) that the pruned net keeps right after pruning; clipped to
  [-1, 1]. Loss-based, so it does not assume a classifier;
- `signal_per_layer`: log(spread of the outputs over the batch relative to the
  dense model's) divided by the number of bottleneck layers (those every path
  crosses): the attenuation per layer, where the raw ratio is a product over
  depth;
- `gradient_log_median` / `gradient_log_min`: per judged layer, log of the
  relative gradient (|grad| / |weight| over kept entries) over the dense
  model's same layer, median and minimum over the bottleneck layers that keep
  weights: per-layer normalised, whatever scale an architecture gives its
  layers;
- `class_signal_kept`: the fraction of the outputs' variance the targets
  explain (R^2, scale-free) relative to the dense model's;
- `dense_gain`: (H - L_dense) / H, how much the dense model itself beats the
  uninformed predictor: a pruned copy of a net near chance has little to recover.

`probability` is a logistic model per task (`models_for`), fitted by
analyses/trainability_forecast.py (calibration domain, leave-one-architecture-out
and held-out agreement in analyses/README.md); `trainable = probability >= 0.5`.
A classifier with training data is always probed (`PROBE_BAND` is all of [0, 1]):
`sgdprobe.py` runs the real fine-tune's first masked steps (SGD lr 0.01, batch 64,
half an epoch; up to 1.5 epochs, half of validate's fine-tune, while the prune stays
below the `trained` bar) and `PROBE_MODEL` reads what they did: the accuracy on the
held-aside measurement batch after them against the `trained` bar
(`probe_accuracy_margin`), the weakest layer's relative gradient after them
(`after_gradient_log_min`) and the class information the pruned weights keep
before any step (`class_signal_kept`). Without data for the steps (or `probe=False`)
`MODEL` reads the one-pass FEATURES. A causal LM's own model (`LM_MODEL`, fitted
on LMs only, read per token, `measuring.flat`) reads the one pass's LM_FEATURES. Every
measurement, the probe's cost as a fraction of one fine-tune epoch included,
stays in `evidence`.

BatchNorm is measured the way fine-tuning runs it: in train mode, on batch
statistics (masked fine-tuning trains with them, so a vanishing signal BN
re-normalises is one fine-tuning can use). It is a forecast, checked against
real fine-tunes by `validate` and `mt-search`, never mixed into `collapsed`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from collapsekit.data.tasks import TASKS, task_of
from collapsekit.errors import CollapsekitError
from collapsekit.validation.measuring import TINY, bn_mode, clip, flat, loss_of, masked_copy, outputs
from collapsekit.validation.sgdprobe import Probe

BATCH = 256  # training examples per measurement: enough for stable spreads, cheap on CPU
SEED = 0
LOG_CLIP = 10.0  # log-ratios beyond e^10 carry no more information and would let one layer decide alone

FEATURES = ("loss_kept", "signal_per_layer", "gradient_log_median", "gradient_log_min", "class_signal_kept",
            "dense_gain")
PROBE_FEATURES = ("probe_accuracy_margin", "after_gradient_log_min", "class_signal_kept")
LM_FEATURES = ("loss_kept", "signal_per_layer")  # what carries across the calibration LMs (analyses/README.md)
PROBE_BAND = (0.0, 1.0)  # one-pass probabilities the probe is run for (auto mode): all of them (analyses/README.md)


@dataclass(frozen=True)
class LogisticModel:
    """p = sigmoid(bias + sum_i weights[i] * x[features[i]]): a few parameters, fitted by `fit`."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float

    def logit(self, evidence: dict) -> float:
        return self.bias + sum(w * float(evidence.get(f, 0.0)) for f, w in zip(self.features, self.weights))

    def probability(self, evidence: dict) -> float:
        return _sigmoid(self.logit(evidence))

    def to_dict(self) -> dict:
        return {"features": list(self.features), "weights": list(self.weights), "bias": self.bias}


# One model per task, each fitted on that task's calibration architectures by analyses/trainability_forecast.py
# (analyses/README.md: leave-one-architecture-out and held-out agreement). Classifiers: MODEL reads the one pass,
# PROBE_MODEL the probe's readings (it decides wherever the probe ran); causal LMs: LM_MODEL, one pass.
MODEL = LogisticModel(FEATURES, (2.311, 1.358, 0.7115, 0.2574, 5.433, 1.674), -3.232)
PROBE_MODEL = LogisticModel(PROBE_FEATURES, (24.95, 0.3772, 2.058), -0.9079)
LM_MODEL = LogisticModel(LM_FEATURES, (1.398, 2.556), 5.919)


def models_for(task: str) -> tuple[LogisticModel, LogisticModel | None]:
    """(one-pass model, probe model or None) that read the evidence of `task` (a collapsekit.data.tasks name)."""
    return (LM_MODEL, None) if task == "causal_lm" else (MODEL, PROBE_MODEL)


def fit(evidences: list[dict], labels: list[bool], features: tuple[str, ...] = FEATURES,
        l2: float = 1.0) -> LogisticModel:
    """LogisticModel fitted by Newton's method (iteratively reweighted least squares) with an L2 penalty `l2`
    on standardised weights (the intercept is not penalised), returned in the evidence's own units."""
    x = np.array([[float(e.get(f, 0.0)) for f in features] for e in evidences], dtype=np.float64)
    y = np.array(labels, dtype=np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([np.ones((len(x), 1)), (x - mu) / sd])
    beta = np.zeros(z.shape[1])
    penalty = np.diag([0.0] + [l2] * len(features))
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-z @ beta))
        grad = z.T @ (p - y) + penalty @ beta
        hess = z.T @ (z * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    weights = beta[1:] / sd
    return LogisticModel(tuple(features), tuple(float(w) for w in weights), float(beta[0] - weights @ mu))


@dataclass(frozen=True)
class Forecast:
    """Will masked fine-tuning lift the pruned network above chance? Its probability and the measurements behind it."""

    trainable: bool  # probability >= 0.5
    evidence: dict  # name -> float (see `measure`, and the probe's keys when it ran)
    reason: str
    batch: int  # training examples measured
    probability: float = 0.0

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "probability": self.probability, "reason": self.reason,
                "batch": self.batch, "evidence": dict(self.evidence)}


@dataclass(frozen=True)
class Dense:
    """What the dense model gives on the measurement batch: the reference every measurement is relative to."""

    spread: float
    loss: float
    entropy: float  # of the batch's targets: the uninformed predictor's loss
    class_signal: float
    ratios: dict  # weight name -> |grad| / |weight| of the dense model (every weight of 2+ dimensions)
    accuracy: float = 0.0  # top-1 on the batch
    chance: float = 0.0  # top-1 of a constant prediction (the task's `forecast_chance`)


@dataclass
class Forecaster:
    """Forecasts for one model and one data batch: built once, called with each level's masks.

    The dense reference is measured once here; each call prunes a copy (the
    user's model is never touched). `probe_data` (the training set) enables the
    probe; `probe_steps` and `probe_batch` bound it.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    margin: float = 0.1
    bottlenecks: frozenset | None = None  # layers every path crosses; None: every layer counts as one
    probe_data: object = None  # a TensorDataset to draw the probe's steps from
    held: torch.Tensor | None = None  # indices of (x, y) in probe_data: the probe's steps leave them aside
    task: str = "classification"  # the data's task (collapsekit.data.tasks): which fitted model reads the evidence
    dense: Dense = field(init=False)

    def __post_init__(self):
        if any(p.is_meta for p in self.model.parameters()):
            raise CollapsekitError("the trainability forecast runs the model on data: load its weights first "
                                   "(a meta-device model has none)")
        net = masked_copy(self.model, {})
        full = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in self.model.named_parameters() if p.ndim > 1}
        ratios, out, loss = _gradients(net, self.x, self.y, full)
        spread = _spread(out)
        if spread <= TINY:
            raise CollapsekitError("the dense model's output does not vary over the data batch: "
                                   "nothing to compare the pruned model with")
        scores, target = flat(out, self.y)
        chance = TASKS[self.task].forecast_chance(self.y, self.num_classes) if self.task in TASKS else 0.0
        self.dense = Dense(spread=spread, loss=float(loss), entropy=target_entropy(self.y),
                           class_signal=class_signal(out, self.y), ratios=ratios,
                           accuracy=float((scores.argmax(1) == target).float().mean()), chance=chance)
        self._probe = None
        self.made = {}  # (MT, pruned count, probe) -> Forecast: trainable.forecast's, made once

    @classmethod
    def from_bundle(cls, model: nn.Module, bundle, batch: int = BATCH, seed: int = SEED, margin: float = 0.1,
                    bottlenecks=None) -> "Forecaster":
        """A Forecaster on `batch` training examples of `bundle` (a `collapsekit.data.DataBundle`), drawn with `seed`.

        `bottlenecks` (weight names of layers no path avoids, `Analysis.bottlenecks`)
        limits the gradient and depth measurements to them: a bypassable layer that
        gradient misses costs capacity, not trainability (its shortcut carries the signal).
        """
        x, y = bundle.train.tensors[:2]
        if len(x) == 0:
            raise CollapsekitError(f"data set {bundle.name!r} has no training examples to forecast with")
        # A causal LM's every next-token prediction counts as one example: `batch` predictions, in whole sequences.
        per_example = y[0].numel()
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:max(2, batch // per_example)]
        return cls(model, x[idx], y[idx], bundle.num_classes, margin,
                   None if bottlenecks is None else frozenset(bottlenecks), bundle.train, idx, task_of(bundle).name)

    def measure(self, masks: dict[str, torch.Tensor]) -> dict:
        """The evidence at the weights `masks` (name -> bool keep) leave: floats, see `measure`."""
        return measure(self.model, masks, self.x, self.y, self.dense, self.bottlenecks)

    def measure_net(self, net: nn.Module, masks: dict[str, torch.Tensor]) -> dict:
        """The evidence of another net of the same architecture (the probe's stepped copy), against this dense one."""
        return measure(net, masks, self.x, self.y, self.dense, self.bottlenecks)

    def __call__(self, masks: dict[str, torch.Tensor], probe: bool | None = None) -> Forecast:
        """Forecast for the model pruned with `masks`; `probe`: None runs the probe where the task has a probe model
        and the one-pass probability is within PROBE_BAND, True always (its evidence recorded), False never."""
        evidence = self.measure(masks)
        one, probed = models_for(self.task)
        p = one.probability(evidence)
        evidence["probability_one_pass"] = p
        auto = probed is not None and PROBE_BAND[0] <= p <= PROBE_BAND[1]
        ran = self.probe_data is not None and bool(probe or (probe is None and auto))
        if ran:
            evidence.update(self.probe(masks, evidence))
            if probed is not None:
                p = probed.probability(evidence)
        trainable = p >= 0.5
        return Forecast(trainable=trainable, evidence=evidence, reason=explain(evidence, p, ran and probed is not None),
                        batch=int(len(self.x)), probability=p)

    def probe(self, masks: dict[str, torch.Tensor], evidence: dict) -> dict:
        """The probe's evidence for `masks` (sgdprobe.py), the dense run over the same steps made once."""
        if self._probe is None:
            self._probe = Probe(self, FEATURES)
        return self._probe(masks)


def explain(evidence: dict, p: float, probed: bool) -> str:
    """One line: the probability and what the measurements say."""
    head = f"p={p:.2f}"
    if probed:
        return (f"{head} with the probe: after {evidence['probe_steps']:.0f} masked fine-tune steps "
                f"({evidence['probe_epochs']:.2g} epoch) it keeps "
                f"{evidence['probe_loss_kept']:.2f} of the dense loss gain, {evidence['probe_accuracy_kept']:.2f} of "
                f"its accuracy over chance (one pass: p={evidence['probability_one_pass']:.2f})")
    return (f"{head}: loss gain kept {evidence['loss_kept']:.2f}, signal per layer "
            f"{math.exp(evidence['signal_per_layer']):.2g}x, weakest layer gradient "
            f"{math.exp(evidence['gradient_log_min']):.2g}x dense")


def measure(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
            dense: Dense, bottlenecks: frozenset | None = None) -> dict:
    """Evidence dict of `model` pruned with `masks` on the batch (x, y), relative to the dense reference.

    The model's FEATURES (module docstring) and, for reading: signal (output
    spread / dense), loss, accuracy_pruned (top-1 where the outputs are class
    scores), gradient_min / gradient_median (relative kept-weight gradient
    over layers that keep weights), gradient_reach (fraction of the judged
    layers whose kept gradient is non-zero), depth (bottleneck layers counted),
    batch_norm (1.0 if the model has any).
    """
    net = masked_copy(model, masks)
    by_layer, out, loss = _gradients(net, x, y, masks)
    spread = _spread(out)
    ratios = sorted(by_layer.values())
    judged = {n: r for n, r in by_layer.items() if not bottlenecks or n in bottlenecks} or by_layer
    logs = sorted(_logclip(r / dense.ratios[n]) for n, r in judged.items() if dense.ratios.get(n, 0.0) > TINY)
    depth = max(1, len(bottlenecks) if bottlenecks else len(masks))
    signal = spread / dense.spread
    gain = dense.entropy - dense.loss
    loss = float(loss)
    scores, target = flat(out, y)
    accuracy = float((scores.argmax(1) == target).float().mean())
    lift = dense.accuracy - dense.chance
    return {
        "loss_kept": clip((dense.entropy - loss) / gain, -1.0, 1.0) if gain > TINY else 0.0,
        "signal_per_layer": _logclip(signal) / depth,
        "gradient_log_median": logs[len(logs) // 2] if logs else -LOG_CLIP,
        "gradient_log_min": logs[0] if logs else -LOG_CLIP,
        "class_signal_kept": clip(class_signal(out, y) / dense.class_signal, 0.0, 2.0)
        if dense.class_signal > TINY else 0.0,
        "dense_gain": clip(gain / dense.entropy, -1.0, 1.0) if dense.entropy > TINY else 0.0,
        "signal": signal,
        "loss": loss,
        "accuracy_kept": clip((accuracy - dense.chance) / lift, -1.0, 2.0) if lift > TINY else 0.0,
        "accuracy_pruned": accuracy,
        "gradient_min": ratios[0] if ratios else 0.0,
        "gradient_median": ratios[len(ratios) // 2] if ratios else 0.0,
        "gradient_reach": sum(r > TINY for r in judged.values()) / len(judged) if judged else 0.0,
        "depth": float(depth),
        "batch": float(len(y)),
        "batch_norm": float(any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())),
    }


def target_entropy(y: torch.Tensor) -> float:
    """Entropy (nats) of the targets' empirical distribution: the loss of the best input-blind predictor."""
    counts = torch.bincount(y.reshape(-1)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def class_signal(out: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the outputs' variance over the batch that the targets explain (between-class / total, R^2).

    Scale-free, so batch norm's re-normalisation of a faint signal does not
    inflate it: noise amplified to unit variance explains ~(classes - 1) / batch.
    """
    out, y = flat(out, y)
    centred = out - out.mean(0)
    total = float((centred ** 2).sum())
    if total <= TINY:
        return 0.0
    between = sum(float((y == c).sum()) * float((centred[y == c].mean(0) ** 2).sum()) for c in y.unique())
    return between / total


def _gradients(net: nn.Module, x, y, masks: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """({weight name: |grad| / |weight| over its kept entries}, outputs, loss) of one train-mode-BN pass.

    Only weights in `masks` that keep something: an emptied layer is the
    structural verdict's business.
    """
    bn_mode(net, train=True)
    net.zero_grad(set_to_none=True)
    out = outputs(net(x))
    loss = loss_of(out, y)
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


def _spread(out: torch.Tensor) -> float:
    """Mean over output units of the standard deviation over the batch: how much the output follows the data."""
    return float(out.flatten(1).std(dim=0, unbiased=False).mean())


def _logclip(r: float) -> float:
    return clip(math.log(r) if r > 0 else -LOG_CLIP, -LOG_CLIP, LOG_CLIP)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


__all__ = ["Forecast", "Forecaster", "LogisticModel", "MODEL", "PROBE_MODEL", "LM_MODEL", "models_for", "FEATURES",
           "PROBE_FEATURES", "LM_FEATURES", "PROBE_BAND", "fit", "measure", "class_signal", "target_entropy", "loss_of",
           "BATCH"]
