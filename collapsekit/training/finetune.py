"""Masked fine-tuning on `train.fit`: masks exact every step, atomic per-epoch checkpoints, resume, DDP, bf16 on CUDA.

The engine runs `train.fit` one epoch at a time and executes a
`schedules.PruningSchedule` between epochs (one-shot, gradual, IMP). Each epoch
has its own seed, derived from (seed, epoch, rank), so a run resumed from the
checkpoint of epoch e repeats epochs e+1.. exactly as the uninterrupted run
would (bit for bit on CPU).

Invariant 3 (masks stay exact): before every optimizer step the gradients at
pruned positions are zeroed; after it the masks are re-applied to the weights
(+0.0, `prune.apply_masks`) and the optimizer's per-weight state (momentum,
Adam moments) is zeroed there, so neither momentum nor weight decay revives a
pruned weight. `fit` exposes no optimizer, so the engine reaches it through
torch's global optimizer step hooks, registered for the run only and filtered to
this model's optimizer.

Checkpoint (`OUT/checkpoint.safetensors`, written to a temp file then
`os.replace`d): weights, masks, optimizer state and RNG states as tensors;
epoch, config, history and optimizer hyper-parameters as JSON in the header.
No pickles anywhere (Invariant 6).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from collapsekit.training import distributed
from collapsekit.errors import CollapsekitError
from collapsekit.files.safefile import read_tagged
from collapsekit.training.schedules import PruningSchedule

STATE_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "finetune.json"
MODEL_FILE = "model.safetensors"
MASKS_FILE = "masks.safetensors"
FORMAT = "collapsekit-finetune"
VERSION = 1


@dataclass(frozen=True)
class FinetuneResult:
    """Test accuracy before (pruned) and after masked fine-tuning, one metrics dict per epoch, the final masks."""

    accuracy: float
    accuracy_before: float  # before the first fine-tuning step (after the pruning due before epoch 1, if any)
    sparsity: float  # fraction of the masked weights that the final masks prune
    schedule: str  # the pruning schedule's name ("finetune" for fixed masks given by the caller)
    epochs: int
    resumed_from: int  # epochs already done when this call began (0 for a fresh run)
    history: tuple[dict, ...]
    device: str
    world_size: int
    out: str | None
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The JSON document (`OUT/finetune.json`); the masks themselves go to `OUT/masks.safetensors`."""
        return {"accuracy": self.accuracy, "accuracy_before": self.accuracy_before, "sparsity": self.sparsity,
                "schedule": self.schedule, "epochs": self.epochs, "resumed_from": self.resumed_from,
                "history": list(self.history), "device": self.device, "world_size": self.world_size,
                "out": self.out}


def finetune(model: nn.Module, masks: dict[str, torch.Tensor] | None, bundle, epochs: int, lr: float = 0.01,
             batch_size: int = 64, *, optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
             device="auto", schedule: str = "cosine", label_smoothing: float = 0.1, seed: int = 0,
             out=None, resume: bool = False, plan: PruningSchedule | None = None, mt=None,
             progress: bool = True, after_step: Callable[[nn.Module], None] | None = None,
             on_epoch_end: Callable[[int, dict], None] | None = None, meta: dict | None = None) -> FinetuneResult:
    """FinetuneResult of fine-tuning `model` in place with `masks` (name -> bool keep-mask) held exact.

    `schedule` is the learning-rate decay ("cosine" or "linear", `train.SCHEDULES`)
    from `lr` to 0, restarting where `plan` says (IMP rounds). `plan` (a
    `schedules.PruningSchedule`) prunes with `ck.prune(model, s, mt)` before
    its events' epochs; without it the masks stay fixed. `out` receives
    metrics.jsonl (one line per epoch), checkpoint.safetensors (every epoch),
    then model.safetensors (+ sidecar with `meta`), masks.safetensors and
    finetune.json. `resume=True` continues the run in `out` from its last
    complete epoch and checks it is the same run (model, masks, settings).
    Under torchrun (WORLD_SIZE > 1) each rank trains a DDP replica on its shard
    with `batch_size // world_size` per step; masks are rank 0's, rank 0 writes.
    `after_step(model)` runs after each step (masks applied), `on_epoch_end(epoch,
    metrics)` after each epoch.
    """
    plan = plan or PruningSchedule("finetune", epochs, ())
    if plan.epochs != epochs:
        raise CollapsekitError(f"the plan has {plan.epochs} epochs but epochs={epochs}")
    if not masks and not plan.events:
        raise CollapsekitError("finetune needs masks (e.g. ck.prune(model, s).masks) or a plan that prunes")
    from collapsekit.training.train import SCHEDULES

    if schedule not in SCHEDULES:
        raise CollapsekitError(f"unknown learning-rate schedule {schedule!r} (use cosine or linear)")
    if resume and out is None:
        raise CollapsekitError("resume needs the run's output directory (out)")
    if masks:
        from collapsekit.pruning.prune import check_masks

        check_masks(model, masks)
    hp = dict(lr=float(lr), batch_size=int(batch_size), optimizer=optimizer, momentum=float(momentum),
              weight_decay=float(weight_decay), schedule=schedule, label_smoothing=float(label_smoothing),
              seed=int(seed))
    run = _MaskedRun(model, bundle, plan, mt, hp, device, out, after_step, on_epoch_end, progress, meta)
    return run.execute(masks or {}, resume)


class _MaskedRun:
    """One fine-tuning run: its masks, optimizer state, LR position and files."""

    def __init__(self, model, bundle, plan, mt, hp, device, out, after_step, on_epoch_end, progress, meta):
        self.ctx = distributed.setup(device)
        self.model, self.bundle, self.plan, self.mt, self.hp = model, bundle, plan, mt, hp
        self.out = Path(out) if out is not None else None
        self.user_after_step, self.user_on_epoch_end = after_step, on_epoch_end
        self.progress, self.meta = progress, dict(meta or {})
        self.batch_size = max(1, hp["batch_size"] // self.ctx.world_size)  # same global batch as one process
        self.masks: dict[str, torch.Tensor] = {}
        self.params: list[torch.Tensor] = []  # the masked parameters
        self.keep: list[torch.Tensor] = []  # their masks as 0/1 floats
        self._state_cache = None
        self.opt = None  # the optimizer `fit` built for the current epoch
        self.opt_state: dict | None = None  # carried from epoch to epoch (fit builds a new optimizer each call)
        self.epoch, self.step_in_epoch, self.steps_per_epoch, self.segment = 0, 0, 1, (1, plan.epochs)
        from collapsekit.training.train import SCHEDULES

        self.lr_factor = SCHEDULES[hp["schedule"]]
        self.history: list[dict] = []
        self.accuracy_before: float | None = None
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise CollapsekitError(f"{type(model).__name__} has no trainable parameters")
        self.first_param = trainable[0]

    # -- the run ---------------------------------------------------------------------------
    def execute(self, masks: dict, resume: bool) -> FinetuneResult:
        from collapsekit.training.train import evaluate

        ctx, plan = self.ctx, self.plan
        config = self._config(masks)
        self.model.to(ctx.device)
        start = 0
        state = self._read_state() if self.out is not None else None
        if state is not None and not resume:
            raise CollapsekitError(f"{self.out} already holds a fine-tuning run (epoch {state['doc']['epoch']} of "
                                   f"{plan.epochs}); pass resume=True (--resume) or another output directory")
        if state is not None:
            start = self._restore(state, config, masks)
        else:
            self._set_masks({n: m.to(ctx.device) for n, m in masks.items()})
            if self.out is not None and ctx.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                _write_atomic(self.out / METRICS_FILE, "")  # a fresh run starts a fresh log
        net = self._wrap()
        events = dict(plan.events)
        hooks = [register_optimizer_step_pre_hook(self._pre_step)]
        bar = _bar(plan.epochs, start, self.progress and ctx.is_main)
        try:
            for epoch in range(start + 1, plan.epochs + 1):
                if epoch in events:
                    self._prune(events[epoch])
                if self.accuracy_before is None:
                    self.accuracy_before = evaluate(self.model, self.bundle.test, ctx.device)
                metrics = self._epoch(net, epoch)
                self.history.append(metrics)
                if self.out is not None and ctx.is_main:
                    self._write_state(epoch, config)  # first the state, then the log line it vouches for
                    with open(self.out / METRICS_FILE, "a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['test_acc']:.3f}")
                if self.user_on_epoch_end is not None:
                    self.user_on_epoch_end(epoch, dict(metrics))
        finally:
            for h in hooks:
                h.remove()
            bar.close()
        if self.accuracy_before is None:  # a zero-epoch plan, or a complete run resumed
            self.accuracy_before = evaluate(self.model, self.bundle.test, ctx.device)
        check_pruned_zero(self.model, self.masks)
        result = self._result(start, evaluate(self.model, self.bundle.test, ctx.device))
        if self.out is not None and ctx.is_main:
            self._write_outputs(result)
        distributed.barrier(ctx)
        return result

    def _epoch(self, net: nn.Module, epoch: int) -> dict:
        from collapsekit.training.train import fit

        ctx, hp = self.ctx, self.hp
        train = distributed.shard(self.bundle.train, ctx, epoch, hp["seed"])
        bundle = self.bundle if train is self.bundle.train else dataclasses.replace(self.bundle, train=train)
        self.epoch, self.step_in_epoch = epoch, 0
        self.steps_per_epoch = max(1, math.ceil(len(train) / self.batch_size))
        self.segment = self.plan.segment(epoch)
        lr = self._lr()
        result = fit(net, bundle, epochs=1, lr=hp["lr"], batch_size=self.batch_size, device=ctx.device,
                     seed=_epoch_seed(hp["seed"], epoch, ctx.rank), optimizer=hp["optimizer"],
                     momentum=hp["momentum"], weight_decay=hp["weight_decay"], schedule="constant",
                     label_smoothing=hp["label_smoothing"], after_step=self._after_step,
                     progress=self.progress and ctx.is_main)
        if self.masks:
            from collapsekit.pruning.prune import apply_masks

            apply_masks(self.model, self.masks)
        if self.opt is not None:
            self.opt_state = self.opt.state_dict()
        h = result.history[0]
        loss, train_acc = distributed.mean([h["loss"], h["train_acc"]], ctx)
        return {"epoch": epoch, "loss": loss, "train_acc": train_acc, "test_acc": h["test_acc"], "lr": lr,
                "sparsity": self._sparsity(), "seconds": h["seconds"]}

    # -- masks -------------------------------------------------------------------------------
    def _prune(self, sparsity: float) -> None:
        from collapsekit.pruning.prune import prune

        new = {n: m.to(self.ctx.device) for n, m in prune(self.model, sparsity, mt=self.mt).masks.items()}
        # Already-zero weights go first, so the new masks lie inside the old ones;
        # the AND only guards a kept weight that fine-tuning drove to exactly 0.
        for name, old in self.masks.items():
            if name in new:
                new[name] &= old
        self._set_masks(distributed.broadcast_masks(new, self.ctx))

    def _set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        from collapsekit.pruning.prune import apply_masks

        self.masks = masks
        if masks:
            apply_masks(self.model, masks)  # exact +0.0 at pruned positions
        self.params = [self.model.get_parameter(n) for n in masks]
        self.keep = [m.to(p.dtype) for p, m in zip(self.params, masks.values())]  # float masks for mul_
        self._state_cache = None
        self._zero_state()

    def _zero_state(self) -> None:
        """Zero the optimizer's per-weight state (momentum, Adam moments) at pruned positions."""
        if self.opt is None or not self.params:
            return
        # State tensors appear at an optimizer's first step and are then updated in place:
        # collect them again only when the optimizer, the masks or the number of states change.
        key = (id(self.opt), len(self.opt.state))
        if self._state_cache is None or self._state_cache[0] != key:
            values, keeps = [], []
            for p, keep in zip(self.params, self.keep):
                for value in self.opt.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        values.append(value)
                        keeps.append(keep)
            self._state_cache = (key, values, keeps)
        _, values, keeps = self._state_cache
        if values:
            with torch.no_grad():
                torch._foreach_mul_(values, keeps)

    def _sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0

    # -- hooks around each optimizer step ---------------------------------------------------------
    def _pre_step(self, opt, args, kwargs) -> None:
        if not opt.param_groups or not opt.param_groups[0]["params"] or \
                opt.param_groups[0]["params"][0] is not self.first_param:
            return  # another optimizer in this process
        if opt is not self.opt:  # fit built a new optimizer for this epoch: continue the last one's state
            self.opt, self._state_cache = opt, None
            if self.opt_state is not None:
                opt.load_state_dict(self.opt_state)
            self._zero_state()
        grads = [p.grad for p in self.params]
        if grads and all(g is not None for g in grads):
            with torch.no_grad():
                torch._foreach_mul_(grads, self.keep)
        else:  # some masked weight got no gradient this step (unused branch)
            for g, keep in zip(grads, self.keep):
                if g is not None:
                    g.mul_(keep)
        lr = self._lr()
        for group in opt.param_groups:
            group["lr"] = lr

    def _after_step(self, _net: nn.Module) -> None:
        if self.params:
            # Multiplying by the 0/1 mask keeps +0.0 exact: a pruned weight is +0.0 and, with its
            # gradient and optimizer state zero, the step only ever adds +-0.0 to it. (apply_masks'
            # torch.where costs ~10x a multiply on CPU; it runs at every mask change and epoch end.)
            with torch.no_grad():
                torch._foreach_mul_([p.detach() for p in self.params], self.keep)
            self._zero_state()
        self.step_in_epoch += 1
        if self.user_after_step is not None:
            self.user_after_step(self.model)

    def _lr(self) -> float:
        """The learning rate of the next step: the schedule's factor at this step's place in its LR segment."""
        first, length = self.segment
        done = (self.epoch - first) * self.steps_per_epoch + self.step_in_epoch
        return self.hp["lr"] * self.lr_factor(done / (length * self.steps_per_epoch))

    def _wrap(self) -> nn.Module:
        net = self.model
        if self.ctx.device.type == "cuda":
            net = BF16Autocast(net)
        return distributed.wrap(net, self.ctx)

    # -- files -------------------------------------------------------------------------------
    def _config(self, masks: dict) -> dict:
        """What must match for a resumed run to be the same run."""
        return {**self.hp, "plan": self.plan.to_dict(), "mt": None if self.mt is None else str(self.mt),
                "model_sha256": fingerprint(self.model), "masks_sha256": _masks_sha(masks)}

    def _read_state(self) -> dict | None:
        path = self.out / STATE_FILE
        return read_state(path) if path.is_file() else None

    def _write_state(self, epoch: int, config: dict) -> None:
        tensors: dict[str, torch.Tensor] = {}
        aliases = _add_state_dict(tensors, "model/", self.model.state_dict())
        for name, keep in self.masks.items():
            tensors[f"mask/{name}"] = keep.detach().cpu().contiguous()
        optim_json = None
        if self.opt_state is not None:
            optim_json = {"param_groups": self.opt_state["param_groups"], "scalars": {}}
            for idx, st in self.opt_state["state"].items():
                for key, value in st.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
                    else:
                        optim_json["scalars"].setdefault(str(idx), {})[key] = value
        rng = _rng_state()
        tensors["rng/torch"] = rng.pop("torch")
        for i, t in enumerate(rng.pop("cuda")):
            tensors[f"rng/cuda/{i}"] = t
        document = {"version": VERSION, "epoch": epoch, "config": config, "history": self.history,
                    "accuracy_before": self.accuracy_before, "aliases": aliases, "optimizer": optim_json,
                    "mask_names": list(self.masks), "rng": rng}
        _save_tensors(tensors, self.out / STATE_FILE, {"format": FORMAT, "state": json.dumps(document)})

    def _restore(self, state: dict, config: dict, masks: dict) -> int:
        doc, tensors = state["doc"], state["tensors"]
        saved = doc["config"]
        if masks and saved.get("masks_sha256") != config["masks_sha256"]:
            raise CollapsekitError(f"{self.out} holds a run started with different masks; resume it with the "
                                   "same masks, or fine-tune into another directory")
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if diff:
            detail = ", ".join(f"{k}: {saved.get(k)!r} then, {config.get(k)!r} now" for k in diff if
                               not k.endswith("sha256"))
            what = "; ".join(x for x in (detail, "a different starting model" if "model_sha256" in diff else "")
                             if x)
            raise CollapsekitError(f"{self.out} holds a different run ({what}); resume it with the same "
                                   "model and settings, or fine-tune into another directory")
        weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        for name, source in doc["aliases"].items():
            weights[name] = weights[source]
        try:
            self.model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise CollapsekitError(f"{self.out / STATE_FILE} does not fit the model: "
                                   f"{str(exc).splitlines()[0]}") from None
        restored = {n: tensors[f"mask/{n}"].to(self.ctx.device) for n in doc["mask_names"]}
        if doc["optimizer"] is not None:
            opt_state: dict = {"state": {}, "param_groups": doc["optimizer"]["param_groups"]}
            for key, value in tensors.items():
                if key.startswith("optim/"):
                    _, idx, name = key.split("/", 2)
                    opt_state["state"].setdefault(int(idx), {})[name] = value.to(self.ctx.device)
            for idx, scalars in doc["optimizer"]["scalars"].items():
                opt_state["state"].setdefault(int(idx), {}).update(scalars)
            self.opt_state = opt_state
        self.history = list(doc["history"])
        self.accuracy_before = doc["accuracy_before"]
        _set_rng_state(doc["rng"], tensors)
        self._set_masks(distributed.broadcast_masks(restored, self.ctx))
        if self.ctx.is_main:  # the log is exactly the checkpoint's epochs: none lost, none twice
            _write_atomic(self.out / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in self.history))
        return int(doc["epoch"])

    def _result(self, start: int, accuracy: float) -> FinetuneResult:
        return FinetuneResult(
            accuracy=accuracy, accuracy_before=float(self.accuracy_before), sparsity=self._sparsity(),
            schedule=self.plan.name, epochs=self.plan.epochs, resumed_from=start, history=tuple(self.history),
            device=str(self.ctx.device), world_size=self.ctx.world_size,
            out=None if self.out is None else str(self.out),
            masks={n: m.detach().cpu() for n, m in self.masks.items()})

    def _write_outputs(self, result: FinetuneResult) -> None:
        from collapsekit.files import checkpoint
        from collapsekit.pruning import masks as mask_io

        model = self.model if self.ctx.device.type == "cpu" else copy.deepcopy(self.model).cpu()
        meta = {"num_classes": self.bundle.num_classes, "in_channels": self.bundle.in_channels,
                "input_size": self.bundle.input_size, "data": self.bundle.name, **self.meta,
                "accuracy": result.accuracy, "sparsity": result.sparsity, "finetune": result.to_dict()}
        meta.pop("history", None)  # the dense run's; this run's is under "finetune"
        meta.pop(checkpoint.SHA_KEY, None)
        checkpoint.save(model, self.out / MODEL_FILE, meta)
        if result.masks:
            mask_io.save(result.masks, self.out / MASKS_FILE)
        _write_atomic(self.out / RESULT_FILE, json.dumps(result.to_dict(), indent=2) + "\n")


class BF16Autocast(nn.Module):
    """`module` run under bf16 autocast (CUDA by default), returning float32 outputs.

    Weights, gradients and optimizer state stay float32, so masks and their
    exact zeros are unaffected; only the forward's matrix products run in bf16.
    """

    def __init__(self, module: nn.Module, device_type: str = "cuda"):
        super().__init__()
        self.module = module
        self.device_type = device_type

    def forward(self, *args, **kwargs):
        with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16):
            out = self.module(*args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out


# -- helpers ---------------------------------------------------------------------------------
def check_pruned_zero(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """None when every pruned weight of `model` is exactly zero; else CollapsekitError (Invariant 3 broken)."""
    bad = [n for n, keep in masks.items() if bool(model.get_parameter(n).detach()[~keep.to(
        model.get_parameter(n).device)].ne(0).any())]
    if bad:
        raise CollapsekitError(f"pruned weights became non-zero in {', '.join(bad[:3])}")


def fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state_dict (names and bytes): resume refuses a run started from another model."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(_bytes(t))
    return digest.hexdigest()


def _masks_sha(masks: dict) -> str | None:
    if not masks:
        return None
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(_bytes(masks[name].to(torch.bool)))
    return digest.hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch on one rank: a function of (seed, epoch, rank) only, so a resumed epoch repeats."""
    return (seed * 1_000_003 + epoch * 7_919 + rank) % (2**63)


def _add_state_dict(tensors: dict, prefix: str, state: dict) -> dict[str, str]:
    """Add `state` under `prefix`, each shared storage once; returns {alias name: stored name}."""
    seen: dict = {}
    aliases = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[prefix + name] = t.detach().cpu().contiguous()
    return aliases


def _save_tensors(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    # safetensors refuses tensors that share memory (a CPU model's tied weights are deduplicated
    # above; views of one buffer are not): give those their own storage.
    owners: set = set()
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in owners:
            tensors[key] = t.clone()
        owners.add(ptr)
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_state(path) -> dict:
    """{"doc": header JSON, "tensors": {name: tensor}} of a fine-tuning checkpoint (no pickle is read)."""
    meta, tensors = read_tagged(path, FORMAT, "fine-tuning checkpoint", json_keys=("state",))
    doc = meta["state"]
    if doc.get("version") != VERSION:
        raise CollapsekitError(f"{path} has checkpoint version {doc.get('version')}, this collapsekit reads {VERSION}")
    return {"doc": doc, "tensors": tensors}


def read_metrics(out) -> list[dict]:
    """The per-epoch metrics of the run in `out` (metrics.jsonl), in order."""
    path = Path(out) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def _set_rng_state(rng: dict, tensors: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng/cuda/")),
                                       key=lambda k: int(k.rsplit("/", 1)[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="finetune", unit="epoch", leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


__all__ = ["finetune", "FinetuneResult", "BF16Autocast", "check_pruned_zero", "fingerprint", "read_state",
           "read_metrics", "STATE_FILE", "METRICS_FILE", "MODEL_FILE", "MASKS_FILE", "RESULT_FILE"]
