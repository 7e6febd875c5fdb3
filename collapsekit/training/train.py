"""Dense training and evaluation: one `fit` loop that pruning's masked fine-tune reuses through hooks."""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from collapsekit.training.device import resolve_device
from collapsekit.errors import CollapsekitError


@dataclass(frozen=True)
class TrainResult:
    """Final test accuracy and one dict per epoch: {epoch, loss, train_acc, test_acc, seconds, lr}."""

    accuracy: float
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON document the CLI prints."""
        return asdict(self)


# Defaults per model family, measured on digits (see README): CNNs with BN take
# SGD at 0.1; the MLP and LeNet-5 at 0.05; recurrent cells prefer Adam.
FAMILY_DEFAULTS: dict[str, dict] = {
    "mlp": dict(epochs=20, lr=0.05, batch_size=64, optimizer="sgd", weight_decay=5e-4),
    "lenet": dict(epochs=20, lr=0.05, batch_size=32, optimizer="sgd", weight_decay=5e-4),
    "cnn": dict(epochs=8, lr=0.05, batch_size=32, optimizer="sgd", weight_decay=5e-4),
    "rnn": dict(epochs=30, lr=1e-2, batch_size=64, optimizer="adam", weight_decay=0.0),
}
_FAMILY_PREFIXES = [("lenet_300", "mlp"), ("mlp", "mlp"), ("lenet", "lenet"), ("fastgrnn", "rnn"),
                    ("lstm", "rnn"), ("gru", "rnn"), ("rnn", "rnn")]


# Nets that downsample 32x: at digits' native 8x8 their last stages see 1x1
# maps (depthwise 3x3 convs keep only the centre tap); MobileNet-V1 reaches
# ~90 % there but ~99 % at 32x32.
MIN_INPUT_SIZE: dict[str, int] = {"mobilenet": 32}


def default_input_size(spec: str, data_name: str) -> int | None:
    """Image size to train `spec` on `data_name` when none is given: None keeps the data's native size."""
    from collapsekit import data

    name = spec.rpartition(":")[2].lower()
    if data_name not in data.names() or data.is_sequence(data_name):
        return None
    floor = next((size for prefix, size in MIN_INPUT_SIZE.items() if name.startswith(prefix)), None)
    native = data.native_shape(data_name)[2]
    return floor if floor is not None and native < floor else None


def defaults_for(spec: str) -> dict:
    """Training defaults (epochs, lr, batch_size, optimizer, weight_decay) for a model spec's family."""
    name = spec.rpartition(":")[2].lower()
    family = next((fam for prefix, fam in _FAMILY_PREFIXES if name.startswith(prefix)), "cnn")
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
def evaluate(model: nn.Module, dataset: Dataset, device="cpu", batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on `dataset` in eval mode (the model's mode is restored)."""
    device = resolve_device(device)
    if len(dataset) == 0:
        raise CollapsekitError("cannot evaluate on an empty data set")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for x, y in _batches(dataset, batch_size, shuffle=False):
            out = model(x.to(device, non_blocking=True))
            correct += (out.argmax(dim=1).cpu() == y).sum().item()
    finally:
        model.train(was_training)
    return correct / len(dataset)


def _make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise CollapsekitError(f"unknown optimizer {name!r} (use sgd, adam or adamw)")


# Learning-rate factor at progress t in [0, 1), applied after every step.
SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    # Linear decay to zero: Zimmer et al.'s short retraining after pruning.
    "linear": lambda t: 1.0 - t,
    "constant": lambda t: 1.0,
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


def fit(model: nn.Module, bundle, epochs: int, lr: float, batch_size: int, device, seed: int,
        optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4, schedule: str = "cosine",
        label_smoothing: float = 0.0, after_step: Callable[[nn.Module], None] | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None, progress: bool = True,
        augment: bool = False) -> TrainResult:
    """TrainResult of training `model` in place on `bundle.train`, testing on `bundle.test` after each epoch.

    The learning rate follows `schedule` ("cosine", "linear" or "constant")
    per step from `lr` to 0. `after_step(model)` runs after every optimizer
    step (masked fine-tuning re-applies its masks there, so momentum and weight
    decay never revive a pruned weight); `on_epoch_end(epoch, metrics)` after
    each epoch (1-based). `augment` flips and shifts image batches (CIFAR).
    """
    device = resolve_device(device)
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise CollapsekitError(f"need epochs >= 0, batch size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if schedule not in SCHEDULES:
        raise CollapsekitError(f"unknown schedule {schedule!r} (use {', '.join(SCHEDULES)})")
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _make_optimizer(optimizer, params, lr, momentum, weight_decay)
    steps_per_epoch = math.ceil(len(bundle.train) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    factor = SCHEDULES[schedule]
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(min(step, total) / total))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    from tqdm.auto import tqdm

    bar = tqdm(total=epochs * steps_per_epoch, desc="train", unit="step", leave=False, dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    history = []
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            epoch_lr = opt.param_groups[0]["lr"]
            for x, y in _batches(bundle.train, batch_size, shuffle=True, generator=generator):
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if augment and x.dim() == 4:
                    x = augment_flip_crop(x, generator)
                out = model(x)
                loss = criterion(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                scheduler.step()
                if after_step is not None:
                    after_step(model)
                batch_loss = loss.item()
                if not math.isfinite(batch_loss):
                    raise CollapsekitError(f"training diverged (loss {batch_loss} in epoch {epoch}); lower the lr "
                                           f"(now {lr})")
                loss_sum += batch_loss * y.shape[0]
                correct += (out.argmax(dim=1) == y).sum().item()
                seen += y.shape[0]
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{batch_loss:.3f}")
            test_acc = evaluate(model, bundle.test, device)
            metrics = {"epoch": epoch, "loss": loss_sum / seen, "train_acc": correct / seen,
                       "test_acc": test_acc, "seconds": time.perf_counter() - start, "lr": epoch_lr}
            history.append(metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(metrics))
    finally:
        bar.close()
    accuracy = history[-1]["test_acc"] if history else evaluate(model, bundle.test, device)
    return TrainResult(accuracy=accuracy, history=history)


def dense_train(spec: str, data, epochs: int | None, out, *, model: nn.Module | None = None,
                data_path=None, input_size: int | None = None, channels: int | None = None,
                lr: float | None = None, batch_size: int | None = None, optimizer: str | None = None,
                momentum: float = 0.9, weight_decay: float | None = None, schedule: str = "cosine",
                label_smoothing: float = 0.0, augment: bool | None = None, device="auto", seed: int = 0,
                progress: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainResult:
    """TrainResult of training model `spec` on `data`; writes `out/model.safetensors` and `out/model.json`.

    `data` is a data set name (loaded with data_path/input_size/channels) or a
    DataBundle. `model` is an already built (and possibly initialised) model for
    `spec`; by default `spec` is built for the data's shape after seeding. Unset
    hyper-parameters come from `defaults_for(spec)`. The sidecar records spec,
    shapes, data and arguments, so `--checkpoint` alone rebuilds the model.
    """
    from collapsekit.files import checkpoint
    from collapsekit import data as datasets
    from collapsekit.models import resolve

    hp = defaults_for(spec)
    hp.update({k: v for k, v in dict(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                                     weight_decay=weight_decay).items() if v is not None})
    if input_size is None and isinstance(data, str):
        input_size = default_input_size(spec, data)
    bundle = data if isinstance(data, datasets.DataBundle) else datasets.load(
        data, path=data_path, input_size=input_size, channels=channels, seed=seed)
    seed_everything(seed)
    if model is None:
        model = resolve(spec, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        input_size=bundle.input_size)
    _check_model_fits_data(spec, model, bundle)
    if augment is None:
        augment = bundle.name == "cifar10"  # flips would turn digits into other glyphs
    device = resolve_device(device)
    result = fit(model, bundle, epochs=hp["epochs"], lr=hp["lr"], batch_size=hp["batch_size"], device=device,
                 seed=seed, optimizer=hp["optimizer"], momentum=momentum, weight_decay=hp["weight_decay"],
                 schedule=schedule, label_smoothing=label_smoothing, on_epoch_end=on_epoch_end,
                 progress=progress, augment=augment)
    args = dict(hp, momentum=momentum, schedule=schedule, label_smoothing=label_smoothing, augment=augment,
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
        "seed": seed,
        "history": result.history,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    checkpoint.save(model.cpu(), Path(out) / "model.safetensors", meta)
    return result


def _check_model_fits_data(spec: str, model: nn.Module, bundle) -> None:
    """Raise a one-line error unless one example batch runs through `model` and gives num_classes logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(bundle.example_input().to(next(model.parameters()).device))
    except Exception as exc:  # noqa: BLE001 - any failure means the shapes disagree
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CollapsekitError(f"model {spec!r} cannot take {bundle.name} inputs of shape "
                               f"{list(bundle.input_shape)}: {msg}") from None
    finally:
        model.train(was_training)
    if out.dim() != 2 or out.shape[1] != bundle.num_classes:
        raise CollapsekitError(f"model {spec!r} gives outputs of shape {list(out.shape)}, but {bundle.name} has "
                               f"{bundle.num_classes} classes (pass --num-classes {bundle.num_classes})")


__all__ = ["TrainResult", "evaluate", "fit", "dense_train", "defaults_for", "default_input_size", "seed_everything",
           "augment_flip_crop", "FAMILY_DEFAULTS", "SCHEDULES"]
