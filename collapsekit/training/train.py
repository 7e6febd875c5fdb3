"""Dense training and evaluation: one `fit` loop that masked fine-tuning reuses through callbacks."""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from collapsekit import data as datasets
from collapsekit.errors import CollapsekitError, TrainingDiverged, first_line
from collapsekit.files import checkpoint
from collapsekit.models import resolve
from collapsekit.data.tasks import TASKS, Task, model_logits, task_of
from collapsekit.training.device import resolve_device
from collapsekit.analysis.timing import tqdm_class

CLASSIFICATION = TASKS["classification"]


@dataclass(frozen=True)
class TrainResult:
    """Final test accuracy (an LM's: next-token accuracy, and its perplexity) and one dict per epoch.

    History entries: {epoch, loss, train_acc, test_acc, seconds, lr}, plus
    train_perplexity and test_perplexity for a causal LM.
    """

    accuracy: float
    history: list = field(default_factory=list)
    perplexity: float | None = None  # causal LM: test perplexity

    def to_dict(self) -> dict:
        """The JSON document the CLI prints (no perplexity key for a classifier)."""
        return {k: v for k, v in asdict(self).items() if not (k == "perplexity" and v is None)}


# Defaults per model family, measured on digits (see README): CNNs with BN take
# SGD at 0.1; the MLP and LeNet-5 at 0.05; recurrent cells prefer Adam.
FAMILY_DEFAULTS: dict[str, dict] = {
    "mlp": dict(epochs=20, lr=0.05, batch_size=64, optimizer="sgd", weight_decay=5e-4),
    "lenet": dict(epochs=20, lr=0.05, batch_size=32, optimizer="sgd", weight_decay=5e-4),
    "cnn": dict(epochs=8, lr=0.05, batch_size=32, optimizer="sgd", weight_decay=5e-4),
    "rnn": dict(epochs=30, lr=1e-2, batch_size=64, optimizer="adam", weight_decay=0.0),
    # Causal LMs, whatever the architecture: AdamW with warm-up and cosine decay, as LM recipes use;
    # measured on the embedded text with llama_tiny (docs/language-models.md).
    "lm": dict(epochs=1, lr=3e-3, batch_size=8, optimizer="adamw", weight_decay=0.01, lr_schedule="warmup_cosine"),
}
_FAMILY_PREFIXES = [("lenet_300", "mlp"), ("mlp", "mlp"), ("lenet", "lenet"), ("fastgrnn", "rnn"),
                    ("lstm", "rnn"), ("gru", "rnn"), ("rnn", "rnn")]


# Nets that downsample 32x: at digits' native 8x8 their last stages see 1x1
# maps (depthwise 3x3 convs keep only the centre tap); MobileNet-V1 reaches
# ~90 % there but ~99 % at 32x32.
MIN_INPUT_SIZE: dict[str, int] = {"mobilenet": 32}


def default_input_size(spec: str, data_name: str) -> int | None:
    """Image size to train `spec` on `data_name` when none is given: None keeps the data's native size."""
    name = spec.rpartition(":")[2].lower()
    if data_name not in datasets.names() or datasets.is_sequence(data_name):
        return None
    floor = next((size for prefix, size in MIN_INPUT_SIZE.items() if name.startswith(prefix)), None)
    native = datasets.native_shape(data_name)[2]
    return floor if floor is not None and native < floor else None


def defaults_for(spec: str, task: Task | None = None) -> dict:
    """Training defaults (epochs, lr, batch_size, optimizer, weight_decay) for a model spec's family.

    The task comes first: every causal LM takes the "lm" family's, which adds its lr_schedule.
    """
    name = spec.rpartition(":")[2].lower()
    family = next((fam for prefix, fam in _FAMILY_PREFIXES if name.startswith(prefix)), "cnn")
    if task is not None and task.name == "causal_lm":
        family = "lm"
    return dict(FAMILY_DEFAULTS[family])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so a run and its initialisation repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batches(dataset: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
    # In-memory TensorDatasets are sliced directly: a DataLoader would collate
    # one sample at a time, which dominates a small model's epoch on CPU.
    if isinstance(dataset, TensorDataset):
        n = len(dataset)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                yield tuple(t[start:start + batch_size] for t in dataset.tensors)
            else:
                idx = order[start:start + batch_size]
                yield tuple(t[idx] for t in dataset.tensors)
    else:
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


@torch.no_grad()
def score(model: nn.Module, dataset: Dataset, device="cpu", batch_size: int = 512, task: Task = CLASSIFICATION
          ) -> dict:
    """`task.score`'s {accuracy, loss[, perplexity]} of `model` on `dataset` in eval mode (its mode is restored).

    Sums run over every scored prediction (an LM's every target token), so the
    loss is the mean cross-entropy per prediction and perplexity its exp.
    """
    device = resolve_device(device)
    if len(dataset) == 0:
        raise CollapsekitError("cannot evaluate on an empty data set")
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    try:
        for x, y in _batches(dataset, batch_size, shuffle=False):
            batch = task.batch_sums(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
            loss_sum, correct, count = loss_sum + batch[0], correct + batch[1], count + batch[2]
    finally:
        model.train(was_training)
    return task.score(loss_sum, correct, count)


def evaluate(model: nn.Module, dataset: Dataset, device="cpu", batch_size: int = 512,
             task: Task = CLASSIFICATION) -> float:
    """Top-1 accuracy of `model` on `dataset` in eval mode (an LM's: next-token accuracy)."""
    return score(model, dataset, device, batch_size, task)["accuracy"]


def _make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise CollapsekitError(f"unknown optimizer {name!r} (use sgd, adam or adamw)")


# warmup_cosine: the fraction of a decay's steps spent warming up, from 0 (as transformers'
# get_cosine_schedule_with_warmup, whose first step also has factor 0).
WARMUP = 0.05
# Learning-rate factor at progress t in [0, 1) of a decay, set before every step.
LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    # Linear decay to zero: Zimmer et al.'s short retraining after pruning.
    "linear": lambda t: 1.0 - t,
    "constant": lambda t: 1.0,
    # Linear warm-up over the first WARMUP of the steps, then cosine to zero: the usual LM recipe
    # (Loshchilov & Hutter's cosine, with the warm-up of Goyal et al. / GPT-2 and LLaMA training).
    "warmup_cosine": lambda t: (t / WARMUP if t < WARMUP
                                else 0.5 * (1.0 + math.cos(math.pi * (t - WARMUP) / (1.0 - WARMUP)))),
}


def augment_flip_crop(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Images [N, C, H, W] randomly flipped left-right and shifted by up to `pad` pixels (zero fill), per sample."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chan, rows, cols]


class Callback:
    """What `fit` calls around its epochs and steps; every method here does nothing, subclasses override some.

    As OpenLTH's `train()` hands its optimizer to callbacks, each call receives
    the run's one optimizer, so a callback reads or changes its state (masked
    fine-tuning zeroes momentum and Adam moments at pruned positions) without
    torch's process-wide optimizer hooks. `step` counts optimizer steps from 0
    over the whole run; a resumed run continues the count.
    """

    def on_epoch_begin(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Before the first step of 1-based `epoch`."""

    def on_before_step(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Gradients are computed; `optimizer.step()` comes next."""

    def on_step_end(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Right after `optimizer.step()`."""

    def on_epoch_end(self, epoch: int, metrics: dict, optimizer: torch.optim.Optimizer) -> None:
        """After the epoch's test; entries added to `metrics` reach later callbacks and the history."""


class EpochEnd(Callback):
    """A plain `fn(epoch, metrics)` run after each epoch (a progress line, a snapshot)."""

    def __init__(self, fn: Callable[[int, dict], None]):
        self.fn = fn

    def on_epoch_end(self, epoch: int, metrics: dict, optimizer) -> None:
        self.fn(epoch, dict(metrics))


def lr_segment(epoch: int, restarts, epochs: int) -> tuple[int, int]:
    """(first epoch, number of epochs) of the learning-rate segment holding 1-based `epoch`.

    The decay starts from the peak again at each epoch in `restarts` (IMP's
    rounds); (1,) is one decay over the whole run.
    """
    starts = sorted(restarts)
    first = max(s for s in starts if s <= epoch)
    nxt = min((s for s in starts if s > epoch), default=epochs + 1)
    return first, nxt - first


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a function of (seed, epoch) only, so an epoch run after a resume repeats exactly."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


def fit(model: nn.Module, bundle, epochs: int, lr: float, batch_size: int, device, seed: int,
        optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4, lr_schedule: str = "cosine",
        label_smoothing: float = 0.0, callbacks: Sequence[Callback] = (), progress: bool = True,
        augment: bool = False, start_epoch: int = 0, optimizer_state: dict | None = None,
        lr_restarts: Sequence[int] = (1,), epoch_data: Callable[[int], Dataset] | None = None) -> TrainResult:
    """TrainResult of training `model` in place on `bundle.train`, testing on `bundle.test` after each epoch.

    One optimizer serves the whole run. The learning rate follows `lr_schedule`
    ("cosine", "linear" or "constant") per step from `lr` to 0, starting over
    at each epoch of `lr_restarts`. `callbacks` (`Callback`s) are called in
    order around every epoch and optimizer step. Each epoch shuffles and seeds
    torch, numpy and python from `epoch_seed(seed, epoch)`, so
    `start_epoch=e` with the optimizer's `optimizer_state` after epoch e (and
    the weights then) runs epochs e+1.. exactly as an uninterrupted run would;
    the history holds those epochs only. `epoch_data(epoch)` gives an epoch's
    training set (a DDP rank's shard; default `bundle.train`). `augment` flips
    and shifts image batches (CIFAR). The loss and the test metrics are the
    bundle's task's (`collapsekit.data.tasks`): cross-entropy per class label,
    or per next token for a causal LM (which also logs perplexities).
    """
    device = resolve_device(device)
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise CollapsekitError(f"need epochs >= 0, batch size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if lr_schedule not in LR_SCHEDULES:
        raise CollapsekitError(f"unknown learning-rate schedule {lr_schedule!r} (use {', '.join(LR_SCHEDULES)})")
    if not 0 <= start_epoch <= epochs:
        raise CollapsekitError(f"start epoch {start_epoch} outside 0..{epochs}")
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _make_optimizer(optimizer, params, lr, momentum, weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    factor = LR_SCHEDULES[lr_schedule]
    task = task_of(bundle)
    generator = torch.Generator()

    tqdm = tqdm_class()
    bar = tqdm(total=(epochs - start_epoch) * math.ceil(len(bundle.train) / batch_size), desc="train", unit="step",
               leave=False, dynamic_ncols=True, disable=not (progress and sys.stderr.isatty()))
    history = []
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            start = time.perf_counter()
            seed_everything(epoch_seed(seed, epoch))
            generator.manual_seed(epoch_seed(seed, epoch))
            train = bundle.train if epoch_data is None else epoch_data(epoch)
            steps_per_epoch = math.ceil(len(train) / batch_size)
            bar.total = (epochs - start_epoch) * steps_per_epoch  # a shard may be smaller than bundle.train
            first, length = lr_segment(epoch, lr_restarts, epochs)
            model.train()
            for cb in callbacks:
                cb.on_epoch_begin(epoch, opt)
            loss_sum, correct, seen = 0.0, 0, 0
            epoch_lr = None
            for i, (x, y) in enumerate(_batches(train, batch_size, shuffle=True, generator=generator)):
                step = (epoch - 1) * steps_per_epoch + i
                step_lr = lr * factor(((epoch - first) * steps_per_epoch + i) / (length * steps_per_epoch))
                epoch_lr = step_lr if epoch_lr is None else epoch_lr
                for group in opt.param_groups:
                    group["lr"] = step_lr
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if augment and x.dim() == 4:
                    x = augment_flip_crop(x, generator)
                logits, target = task.flat(model_logits(model(x)), y)
                loss = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for cb in callbacks:
                    cb.on_before_step(opt, step)
                opt.step()
                for cb in callbacks:
                    cb.on_step_end(opt, step)
                batch_loss = loss.item()
                if not math.isfinite(batch_loss):
                    raise TrainingDiverged(f"training diverged (loss {batch_loss} in epoch {epoch}); lower the lr "
                                           f"(now {lr})")
                loss_sum += batch_loss * target.shape[0]
                correct += (logits.argmax(dim=1) == target).sum().item()
                seen += target.shape[0]
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{batch_loss:.3f}")
            metrics = epoch_metrics(task, task.score(loss_sum, correct, seen), score(model, bundle.test, device,
                                                                                      task=task))
            metrics = {"epoch": epoch, **metrics, "seconds": time.perf_counter() - start, "lr": epoch_lr}
            for cb in callbacks:
                cb.on_epoch_end(epoch, metrics, opt)
            history.append(metrics)
    finally:
        bar.close()
    final = score(model, bundle.test, device, task=task) if not history else {
        "accuracy": history[-1]["test_acc"], "perplexity": history[-1].get("test_perplexity")}
    return TrainResult(accuracy=final["accuracy"], history=history, perplexity=final.get("perplexity"))


def epoch_metrics(task: Task, train: dict, test: dict) -> dict:
    """An epoch's history entry from `task.score` dicts of its training batches and of the test set:
    loss, train_acc, test_acc (+ train_perplexity, test_perplexity for an LM)."""
    metrics = {"loss": train["loss"], "train_acc": train["accuracy"], "test_acc": test["accuracy"]}
    if task.metric != "accuracy":
        metrics.update({f"train_{task.metric}": train[task.metric], f"test_{task.metric}": test[task.metric]})
    return metrics


def dense_train(spec: str, data, epochs: int | None, out, *, model: nn.Module | None = None,
                data_path=None, input_size: int | None = None, channels: int | None = None,
                lr: float | None = None, batch_size: int | None = None, optimizer: str | None = None,
                momentum: float = 0.9, weight_decay: float | None = None, lr_schedule: str | None = None,
                label_smoothing: float = 0.0, augment: bool | None = None, device="auto", seed: int = 0,
                progress: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainResult:
    """TrainResult of training model `spec` on `data`; writes `out/model.safetensors` and `out/model.json`.

    `data` is a data set name (loaded with data_path/input_size/channels) or a
    DataBundle. `model` is an already built (and possibly initialised) model for
    `spec`; by default `spec` is built for the data's shape after seeding (a
    factory accepting `vocab_size`/`context_length` receives a text bundle's).
    Unset hyper-parameters come from `defaults_for(spec, task)`. The sidecar
    records spec, shapes, data and arguments, so `--checkpoint` alone rebuilds the model.
    """
    if input_size is None and isinstance(data, str):
        input_size = default_input_size(spec, data)
    bundle = data if isinstance(data, datasets.DataBundle) else datasets.load(
        data, path=data_path, input_size=input_size, channels=channels, seed=seed)
    task = task_of(bundle)
    hp = defaults_for(spec, task)
    hp.update({k: v for k, v in dict(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                                     weight_decay=weight_decay, lr_schedule=lr_schedule).items() if v is not None})
    lr_schedule = hp.pop("lr_schedule", "cosine")
    seed_everything(seed)
    if model is None:
        model = resolve(spec, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        input_size=bundle.input_size, offered=bundle.model_kwargs())
    _check_model_fits_data(spec, model, bundle)
    if augment is None:
        augment = bundle.name == "cifar10"  # flips would turn digits into other glyphs
    device = resolve_device(device)
    result = fit(model, bundle, epochs=hp["epochs"], lr=hp["lr"], batch_size=hp["batch_size"], device=device,
                 seed=seed, optimizer=hp["optimizer"], momentum=momentum, weight_decay=hp["weight_decay"],
                 lr_schedule=lr_schedule, label_smoothing=label_smoothing,
                 callbacks=() if on_epoch_end is None else (EpochEnd(on_epoch_end),), progress=progress,
                 augment=augment)
    args = dict(hp, momentum=momentum, lr_schedule=lr_schedule, label_smoothing=label_smoothing, augment=augment,
                device=str(device))
    meta = {
        "model": spec,
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "input_size": bundle.input_size,
        "data": bundle.name,
        "data_path": str(Path(data_path).expanduser().resolve()) if data_path is not None else None,
        "args": args,
        "accuracy": result.accuracy,
        **({} if result.perplexity is None else {"perplexity": result.perplexity, "task": task.name}),
        "seed": seed,
        "history": result.history,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    checkpoint.save(model.cpu(), Path(out) / "model.safetensors", meta)
    return result


def _check_model_fits_data(spec: str, model: nn.Module, bundle) -> None:
    """Raise a one-line error unless one example batch runs through `model` and gives the logits the task needs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(bundle.example_input().to(next(model.parameters()).device))
    except Exception as exc:  # noqa: BLE001 - any failure means the shapes disagree
        raise CollapsekitError(f"model {spec!r} cannot take {bundle.name} inputs of shape "
                               f"{list(bundle.input_shape)}: {first_line(exc)}") from None
    finally:
        model.train(was_training)
    try:
        task_of(bundle).check_output(out, bundle)
    except CollapsekitError as exc:
        raise CollapsekitError(f"model {spec!r}: {exc}") from None


__all__ = ["TrainResult", "Callback", "EpochEnd", "evaluate", "score", "epoch_metrics", "fit", "lr_segment",
           "epoch_seed", "dense_train", "defaults_for", "default_input_size", "seed_everything", "augment_flip_crop",
           "FAMILY_DEFAULTS", "LR_SCHEDULES", "WARMUP"]
