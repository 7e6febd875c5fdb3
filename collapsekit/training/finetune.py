"""Masked fine-tuning on `train.fit`: masks exact every step, per-epoch run-state checkpoints, resume, DDP, bf16.

The engine is one `train.fit` run with one optimizer; its callbacks do the rest:
`masking.MaskCallback` holds the masks exact at every step (Invariant 3), and
the run itself executes a `schedules.PruningSchedule` before its events'
epochs (one-shot, gradual, IMP) and writes the run state after every epoch
(`files.runstate`). `fit` seeds each epoch from (seed, epoch), so a run
resumed from the checkpoint of epoch e repeats epochs e+1.. exactly as the
uninterrupted run would (bit for bit on CPU).
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.spec import fraction
from collapsekit.files import checkpoint, runstate
from collapsekit.files.atomic import atomic_write_text
from collapsekit.pruning.prune import check_masks, prune
from collapsekit.training import distributed
from collapsekit.training.masking import MaskCallback, check_pruned_zero
from collapsekit.training.schedules import PruningSchedule, make
from collapsekit.data.tasks import task_of
from collapsekit.training.train import LR_SCHEDULES, Callback, fit, score
from collapsekit.analysis.timing import tqdm_class

RESULT_FILE = "finetune.json"
MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class FinetuneResult:
    """Test accuracy before (pruned) and after masked fine-tuning, one metrics dict per epoch, the final masks.

    A causal LM's accuracy is next-token accuracy; its perplexity before and after come beside it.
    """

    accuracy: float
    accuracy_before: float  # before the first fine-tuning step (after the pruning due before epoch 1, if any)
    sparsity: float  # fraction of the masked weights that the final masks prune
    pruning_schedule: str  # the pruning schedule's name ("finetune" for fixed masks given by the caller)
    epochs: int
    resumed_from: int  # epochs already done when this call began (0 for a fresh run)
    history: tuple[dict, ...]
    device: str
    world_size: int
    out: str | None
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    perplexity: float | None = None  # causal LM: test perplexity after fine-tuning
    perplexity_before: float | None = None  # ... and before it

    def to_dict(self) -> dict:
        """The JSON document (`OUT/finetune.json`); the masks themselves go inside `OUT/model.safetensors`."""
        lm = {} if self.perplexity is None else {"perplexity": self.perplexity,
                                                 "perplexity_before": self.perplexity_before}
        return {**lm, "accuracy": self.accuracy, "accuracy_before": self.accuracy_before, "sparsity": self.sparsity,
                "pruning_schedule": self.pruning_schedule, "epochs": self.epochs, "resumed_from": self.resumed_from,
                "history": list(self.history), "device": self.device, "world_size": self.world_size,
                "out": self.out}


def finetune(model: nn.Module, masks: dict[str, torch.Tensor] | None, bundle, epochs: int, lr: float = 0.01,
             batch_size: int = 64, *, optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
             device="auto", lr_schedule: str = "cosine", label_smoothing: float | None = None, seed: int = 0,
             out=None, resume: bool = False, plan: PruningSchedule | None = None, mt=None,
             progress: bool = True, callbacks: Sequence[Callback] = (), meta: dict | None = None) -> FinetuneResult:
    """FinetuneResult of fine-tuning `model` in place with `masks` (name -> bool keep-mask) held exact.

    `lr_schedule` is the learning-rate decay ("cosine" or "linear") from `lr`
    to 0, restarting where `plan` says (IMP rounds). `plan` (a
    `schedules.PruningSchedule`) prunes with `ck.prune(model, s, mt)` before
    its events' epochs; without it the masks stay fixed. `out` receives
    metrics.jsonl and checkpoint.safetensors (every epoch), then
    model.safetensors (one sparse file with the masks, + sidecar with `meta`)
    and finetune.json. `resume=True` continues the run in `out` from its last
    complete epoch and checks it is the same run (model, masks, settings).
    Under torchrun (WORLD_SIZE > 1) each rank trains a DDP replica on its shard
    with `batch_size // world_size` per step; masks are rank 0's, rank 0 writes.
    `callbacks` (`train.Callback`) run after the masks' at every step (they see
    masked weights) and after the checkpoint at every epoch end; their metrics
    carry the epoch's `sparsity`. Loss and metrics are the bundle's task's
    (`collapsekit.data.tasks`); `label_smoothing` defaults to the task's (0.1
    for classifiers, 0 for causal LMs, whose perplexity it would bias).
    """
    plan = plan or PruningSchedule("finetune", epochs, ())
    if plan.epochs != epochs:
        raise CollapsekitError(f"the plan has {plan.epochs} epochs but epochs={epochs}")
    if not masks and not plan.events:
        raise CollapsekitError("finetune needs masks (e.g. ck.prune(model, s).masks) or a plan that prunes")
    if lr_schedule not in LR_SCHEDULES:
        raise CollapsekitError(f"unknown learning-rate schedule {lr_schedule!r} (use cosine or linear)")
    if resume and out is None:
        raise CollapsekitError("resume needs the run's output directory (out)")
    if masks:
        check_masks(model, masks)
    if label_smoothing is None:
        label_smoothing = task_of(bundle).default_label_smoothing
    hp = dict(lr=float(lr), batch_size=int(batch_size), optimizer=optimizer, momentum=float(momentum),
              weight_decay=float(weight_decay), lr_schedule=lr_schedule, label_smoothing=float(label_smoothing),
              seed=int(seed))
    run = _MaskedRun(model, bundle, plan, mt, hp, device, out, tuple(callbacks), progress, meta)
    return run.execute(masks or {}, resume)


def prune_and_finetune(model, bundle, sparsity: float, epochs: int,
                       pruning_schedule: str | PruningSchedule = "oneshot", mt=None, rounds: int | None = None,
                       steps: int | None = None, **kwargs) -> FinetuneResult:
    """FinetuneResult of pruning `model` in place to `sparsity` on a pruning schedule and fine-tuning it masked.

    Every pruning schedule is a plan of prune events run by the one engine
    (`finetune(..., plan=...)`), which prunes with `ck.prune` (+ `mt`) before
    the events' epochs; a resumed run skips the events it has done and takes
    the masks from its checkpoint. `kwargs` go to `finetune`; IMP's
    `lr_schedule` defaults to linear (Zimmer et al.), the others' to cosine.
    """
    plan = (pruning_schedule if isinstance(pruning_schedule, PruningSchedule)
            else make(pruning_schedule, fraction(sparsity), epochs, rounds, steps))  # 0.95 or "95%"
    if plan.name == "imp":
        kwargs.setdefault("lr_schedule", "linear")
    return finetune(model, None, bundle, plan.epochs, mt=mt, plan=plan, **kwargs)


def save_outputs(out, model: nn.Module, masks: dict[str, torch.Tensor], meta: dict) -> None:
    """Write the fine-tuned model to `out`/model.safetensors (sidecar: `meta`), one sparse file carrying its masks."""
    if masks:
        checkpoint.save_pruned(model, masks, Path(out) / MODEL_FILE, meta)
    else:
        checkpoint.save(model, Path(out) / MODEL_FILE, meta)


class _MaskedRun(Callback):
    """One fine-tuning run: its masks, pruning events, history and files; `fit`'s callback between epochs."""

    def __init__(self, model, bundle, plan, mt, hp, device, out, callbacks, progress, meta):
        self.ctx = distributed.setup(device)
        self.model, self.bundle, self.plan, self.mt, self.hp = model, bundle, plan, mt, hp
        self.out = Path(out) if out is not None else None
        self.callbacks, self.progress, self.meta = callbacks, progress, dict(meta or {})
        self.batch_size = max(1, hp["batch_size"] // self.ctx.world_size)  # same global batch as one process
        self.masking = MaskCallback(model)
        self.events = dict(plan.events)
        self.config: dict = {}
        self.history: list[dict] = []
        self.task = task_of(bundle)
        self.before: dict | None = None  # test scores before the first step (`train.score`)
        if not any(p.requires_grad for p in model.parameters()):
            raise CollapsekitError(f"{type(model).__name__} has no trainable parameters")

    # -- the run ---------------------------------------------------------------------------
    def execute(self, masks: dict, resume: bool) -> FinetuneResult:
        ctx, plan, hp = self.ctx, self.plan, self.hp
        self.config = self._config(masks)
        self.model.to(ctx.device)
        start, optimizer_state = 0, None
        path = self.out / runstate.STATE_FILE if self.out is not None else None
        state = runstate.read_state(path) if path is not None and path.is_file() else None
        if state is not None and not resume:
            raise CollapsekitError(f"{self.out} already holds a fine-tuning run (epoch {state.epoch} of "
                                   f"{plan.epochs}); pass resume=True (--resume) or another output directory")
        if state is not None:
            start, optimizer_state = self._restore(state, masks), state.optimizer_state(ctx.device)
        else:
            self.masking.set_masks({n: m.to(ctx.device) for n, m in masks.items()})
            if self.out is not None and ctx.is_main:
                runstate.write_metrics(self.out, [])  # a fresh run starts a fresh log
        bar = _bar(plan.epochs, start, self.progress and ctx.is_main)
        epoch_bar = _EpochBar(bar)
        # Each rank draws its batch order and dropout from a seed of its own (rank 0 keeps the user's);
        # the shards themselves come from the common seed (DistributedSampler), so they never overlap.
        try:
            fit(self._wrap(), self.bundle, plan.epochs, hp["lr"], self.batch_size, ctx.device,
                seed=hp["seed"] + 104_729 * ctx.rank, optimizer=hp["optimizer"], momentum=hp["momentum"],
                weight_decay=hp["weight_decay"], lr_schedule=hp["lr_schedule"],
                label_smoothing=hp["label_smoothing"], callbacks=(self.masking, self, epoch_bar, *self.callbacks),
                progress=self.progress and ctx.is_main, start_epoch=start, optimizer_state=optimizer_state,
                lr_restarts=plan.restarts, epoch_data=self._shard)
        finally:
            bar.close()
        if self.before is None:  # a zero-epoch plan, or a complete run resumed
            self.before = self._score()
        check_pruned_zero(self.model, self.masking.masks)
        result = self._result(start, self._score())
        if self.out is not None and ctx.is_main:
            self._write_outputs(result)
        distributed.barrier(ctx)
        return result

    def _shard(self, epoch: int):
        return distributed.shard(self.bundle.train, self.ctx, epoch, self.hp["seed"])

    # -- fit's callbacks ---------------------------------------------------------------------
    def on_epoch_begin(self, epoch: int, optimizer) -> None:
        if epoch in self.events:
            self._prune(self.events[epoch], optimizer)
        if self.before is None:
            self.before = self._score()

    def on_epoch_end(self, epoch: int, metrics: dict, optimizer) -> None:
        metrics["loss"], metrics["train_acc"] = distributed.mean([metrics["loss"], metrics["train_acc"]], self.ctx)
        metrics["sparsity"] = self.masking.sparsity()
        self.history.append(dict(metrics))
        if self.out is not None and self.ctx.is_main:  # first the state, then the log line it vouches for
            document = {"epoch": epoch, "config": self.config, "history": self.history,
                        "accuracy_before": self.before["accuracy"], "scores_before": self.before}
            runstate.write_state(self.out / runstate.STATE_FILE, self.model, self.masking.masks,
                                 optimizer.state_dict(), document)
            runstate.write_metrics(self.out, self.history)

    # -- masks -------------------------------------------------------------------------------
    def _prune(self, sparsity: float, optimizer) -> None:
        new = {n: m.to(self.ctx.device) for n, m in prune(self.model, sparsity, mt=self.mt).masks.items()}
        # Already-zero weights go first, so the new masks lie inside the old ones;
        # the AND only guards a kept weight that fine-tuning drove to exactly 0.
        for name, old in self.masking.masks.items():
            if name in new:
                new[name] &= old
        self.masking.set_masks(distributed.broadcast_masks(new, self.ctx), optimizer)

    def _wrap(self) -> nn.Module:
        net = self.model
        if self.ctx.device.type == "cuda":
            net = BF16Autocast(net)
        return distributed.wrap(net, self.ctx)

    # -- files -------------------------------------------------------------------------------
    def _config(self, masks: dict) -> dict:
        """What must match for a resumed run to be the same run."""
        return {**self.hp, "plan": self.plan.to_dict(), "mt": None if self.mt is None else str(self.mt),
                "model_sha256": runstate.fingerprint(self.model),
                "masks_sha256": runstate.masks_fingerprint(masks)}

    def _restore(self, state: runstate.RunState, masks: dict) -> int:
        """The number of epochs done, after loading weights, masks, history and RNG from `state`."""
        saved, config = state.doc["config"], self.config
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
        state.load_weights(self.model, self.out / runstate.STATE_FILE)
        self.history = list(state.doc["history"])
        self.before = state.doc.get("scores_before") or {"accuracy": state.doc["accuracy_before"]}
        state.restore_rng()
        self.masking.set_masks(distributed.broadcast_masks(state.masks(self.ctx.device), self.ctx))
        if self.ctx.is_main:  # the log is exactly the checkpoint's epochs: none lost, none twice
            runstate.write_metrics(self.out, self.history)
        return state.epoch

    def _score(self) -> dict:
        return score(self.model, self.bundle.test, self.ctx.device, task=self.task)

    def _result(self, start: int, scores: dict) -> FinetuneResult:
        return FinetuneResult(
            accuracy=scores["accuracy"], accuracy_before=float(self.before["accuracy"]),
            perplexity=scores.get("perplexity"), perplexity_before=self.before.get("perplexity"),
            sparsity=self.masking.sparsity(),
            pruning_schedule=self.plan.name, epochs=self.plan.epochs, resumed_from=start,
            history=tuple(self.history), device=str(self.ctx.device), world_size=self.ctx.world_size,
            out=None if self.out is None else str(self.out),
            masks={n: m.detach().cpu() for n, m in self.masking.masks.items()})

    def _write_outputs(self, result: FinetuneResult) -> None:
        model = self.model if self.ctx.device.type == "cpu" else copy.deepcopy(self.model).cpu()
        meta = {"num_classes": self.bundle.num_classes, "in_channels": self.bundle.in_channels,
                "input_size": self.bundle.input_size, "data": self.bundle.name, **self.meta,
                "accuracy": result.accuracy, "sparsity": result.sparsity, "finetune": result.to_dict()}
        if result.perplexity is not None:
            meta["perplexity"] = result.perplexity
        meta.pop("history", None)  # the dense run's; this run's is under "finetune"
        meta.pop(checkpoint.SHA_KEY, None)
        save_outputs(self.out, model, result.masks, meta)
        atomic_write_text(self.out / RESULT_FILE, json.dumps(result.to_dict(), indent=2) + "\n")


class _EpochBar(Callback):
    """Advances a per-epoch progress bar and shows the epoch's loss and test accuracy."""

    def __init__(self, bar):
        self.bar = bar

    def on_epoch_end(self, epoch: int, metrics: dict, optimizer) -> None:
        self.bar.update(1)
        shown = {"ppl": f"{metrics['test_perplexity']:.2f}"} if "test_perplexity" in metrics else {
            "acc": f"{metrics['test_acc']:.3f}"}
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", **shown)


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


def _bar(total: int, initial: int, enabled: bool):
    tqdm = tqdm_class()
    return tqdm(total=total, initial=initial, desc="finetune", unit="epoch", leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


__all__ = ["finetune", "prune_and_finetune", "save_outputs", "FinetuneResult", "BF16Autocast", "check_pruned_zero",
           "MODEL_FILE", "RESULT_FILE"]
