"""The trainability probe: the real fine-tune's first masked steps on the pruned copy, read against the dense net's.

The cheapest direct evidence that fine-tuning will work is to start it: a
handful of steps of the fine-tune's own optimiser (SGD lr 0.01, momentum 0.9,
weight decay 5e-4, batch 64: `ck.finetune`'s and validate's defaults) with the
masks held exact by training's `MaskCallback`, then the loss and accuracy on
the forecast's measurement batch, which the steps never train on (held aside).
The dense net runs the same steps on the same examples once, so the pruned
net's readings are relative to what those steps give a net that has nothing to
recover (`probe_loss_kept`, `probe_accuracy_kept`); and the stepped copy is
measured again as in the one pass (`after_*` keys): a net that will train
moves its readings toward the dense ones. An early-training signal reads the
same whatever the architecture (Frankle et al., "The Early Phase of Neural
Network Training", ICLR 2020: the first steps already sort what will train).
The cost is bounded (PROBE_STEPS of PROBE_BATCH examples, at most MAX_EPOCHS of
one fine-tune epoch) and recorded as `probe_epochs`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from collapsekit.training.masking import MaskCallback
from collapsekit.validation.measuring import TINY, bn_mode, clip, flat, loss_of, masked_copy, outputs

PROBE_STEPS = 16
PROBE_BATCH = 64  # ck.finetune's default batch
MAX_EPOCHS = 0.5  # the probe never costs more than this fraction of one fine-tune epoch
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4  # ck.finetune's (validate's) defaults: the real fine-tune's first steps


class Probe:
    """Called with masks: the probe's evidence (floats). The steps' examples are drawn once (seeded)."""

    def __init__(self, forecaster, features: tuple[str, ...], seed: int = 0):
        """`forecaster` (forecast.Forecaster) gives the model, batch, dense reference and `measure_net`;
        `features` are the one-pass readings taken again after the steps (as `after_<name>`)."""
        self.forecaster, self.features = forecaster, features
        self.model, self.x, self.y = forecaster.model, forecaster.x, forecaster.y
        self.entropy = entropy = forecaster.dense.entropy
        self.chance = forecaster.dense.chance
        dataset = forecaster.probe_data
        n = len(dataset)
        self.steps = max(1, min(PROBE_STEPS, int(MAX_EPOCHS * n / PROBE_BATCH)))
        batch = min(PROBE_BATCH, n)
        # The steps draw from the training examples the measurement batch does not hold (when it says which).
        pool = torch.ones(n, dtype=torch.bool)
        if forecaster.held is not None and len(forecaster.held) < n:
            pool[forecaster.held] = False
        pool = pool.nonzero().flatten()
        g = torch.Generator().manual_seed(seed)
        idx = pool[torch.randint(len(pool), (self.steps, batch), generator=g)]
        xs, ys = dataset.tensors[:2]
        self.batches = [(xs[i], ys[i]) for i in idx]
        self.epochs = self.steps * batch / n
        after, _, self.dense_accuracy = self._run({})
        self.dense_drop = clip((forecaster.dense.loss - after) / max(entropy, TINY), -1.0, 1.0)
        self.dense_after = after

    def __call__(self, masks: dict[str, torch.Tensor]) -> dict:
        before, start = self._loss(masked_copy(self.model, masks))
        after, net, accuracy = self._run(masks)
        measured = self.forecaster.measure_net(net, masks)  # the one-pass evidence again, after the steps
        drop = clip((before - after) / max(self.entropy, TINY), -1.0, 1.0)
        gain = self.entropy - self.dense_after
        dense_gain = self.entropy - self.forecaster.dense.loss
        lift = self.dense_accuracy - self.chance
        return {"probe_steps": float(self.steps), "probe_batch": float(len(self.batches[0][1])),
                "probe_epochs": self.epochs, "probe_loss_before": before, "probe_loss_after": after,
                "probe_loss_drop": drop, "probe_dense_loss_drop": self.dense_drop,
                "probe_drop": drop - self.dense_drop,
                "probe_regained": clip((before - after) / dense_gain, -1.0, 1.0) if dense_gain > TINY else 0.0,
                "probe_loss_kept": clip((self.entropy - after) / gain, -1.0, 1.0) if gain > TINY else 0.0,
                "probe_accuracy": accuracy, "probe_dense_accuracy": self.dense_accuracy,
                "probe_accuracy_kept": clip((accuracy - self.chance) / lift, -1.0, 2.0) if lift > TINY else 0.0,
                "probe_accuracy_margin": accuracy - self.chance - self.forecaster.margin,
                "probe_accuracy_gain": accuracy - start,
                **{f"after_{k}": measured[k] for k in self.features}}

    def _run(self, masks: dict[str, torch.Tensor]) -> tuple[float, nn.Module, float]:
        """(loss on the measurement batch, the copy, its accuracy there) after the probe's masked steps on a copy."""
        net = masked_copy(self.model, masks)
        bn_mode(net, train=True)
        hold = MaskCallback(net, masks)
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        for step, (x, y) in enumerate(self.batches):
            opt.zero_grad(set_to_none=True)
            loss = loss_of(outputs(net(x)), y)
            if not torch.isfinite(loss):
                return float("inf"), net, self.chance
            loss.backward()
            hold.on_before_step(opt, step)
            opt.step()
            hold.on_step_end(opt, step)
        loss, accuracy = self._loss(net)
        return loss, net, accuracy

    def _loss(self, net: nn.Module) -> tuple[float, float]:
        """(loss, top-1 accuracy) of `net` on the measurement batch, batch norm on batch statistics."""
        bn_mode(net, train=True)
        with torch.no_grad():
            out = outputs(net(self.x))
            loss = float(loss_of(out, self.y))
        scores, target = flat(out, self.y)
        return (loss if loss == loss else float("inf")), float((scores.argmax(1) == target).float().mean())


__all__ = ["Probe", "PROBE_STEPS", "PROBE_BATCH", "MAX_EPOCHS"]
