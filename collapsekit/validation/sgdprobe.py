"""The trainability probe: a few masked SGD steps on the pruned copy, its loss drop against the dense net's.

Where one forward and backward pass cannot tell (the forecast's probability
near 0.5), the cheapest direct evidence that fine-tuning will work is to start
it: a handful of steps of the fine-tune's own optimiser (SGD, momentum 0.9,
weight decay 5e-4: `ck.finetune`'s defaults; its lr 0.01 scaled by LR_SCALE so
that a few steps show where many would go) with the masks held
exact by training's `MaskCallback`, then the loss on the measurement batch.
The dense net runs the same steps on the same examples once, so the pruned
net's drop is read against what those steps do to a net that has nothing to
recover; and the stepped copy is measured again as in the one pass (`after_*`
keys): a net that will train moves its readings toward the dense ones. The cost is bounded (PROBE_STEPS of PROBE_BATCH examples, at most
MAX_EPOCHS of one fine-tune epoch) and recorded as `probe_epochs`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from collapsekit.training.masking import MaskCallback
from collapsekit.validation.measuring import TINY, bn_mode, clip, loss_of, masked_copy, outputs

PROBE_STEPS = 8
PROBE_BATCH = 64  # ck.finetune's default batch
MAX_EPOCHS = 0.25  # the probe never costs more than this fraction of one fine-tune epoch
LR_SCALE = 10.0  # the probe steps at 10x the fine-tune's learning rate: a few steps stand for many
LR, MOMENTUM, WEIGHT_DECAY = 0.01 * LR_SCALE, 0.9, 5e-4  # ck.finetune's defaults (lr scaled)


class Probe:
    """Called with masks: the probe's evidence (floats). The steps' examples are drawn once (seeded)."""

    def __init__(self, forecaster, features: tuple[str, ...], seed: int = 0):
        """`forecaster` (forecast.Forecaster) gives the model, batch, dense reference and `measure_net`;
        `features` are the one-pass readings taken again after the steps (as `after_<name>`)."""
        self.forecaster, self.features = forecaster, features
        self.model, self.x, self.y = forecaster.model, forecaster.x, forecaster.y
        self.entropy = entropy = forecaster.dense.entropy
        dense_loss = forecaster.dense.loss
        dataset = forecaster.probe_data
        n = len(dataset)
        self.steps = max(1, min(PROBE_STEPS, int(MAX_EPOCHS * n / PROBE_BATCH)))
        batch = min(PROBE_BATCH, n)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(n, (self.steps, batch), generator=g)
        xs, ys = dataset.tensors[:2]
        self.batches = [(xs[i], ys[i]) for i in idx]
        self.epochs = self.steps * batch / n
        before = dense_loss
        after = self._run({})[0]
        self.dense_drop = clip((before - after) / max(entropy, TINY), -1.0, 1.0)
        self.dense_after = after

    def __call__(self, masks: dict[str, torch.Tensor]) -> dict:
        before = self._loss(masked_copy(self.model, masks))
        after, net = self._run(masks)
        measured = self.forecaster.measure_net(net, masks)  # the one-pass evidence again, after the steps
        drop = clip((before - after) / max(self.entropy, TINY), -1.0, 1.0)
        gain = self.entropy - self.dense_after
        return {"probe_steps": float(self.steps), "probe_batch": float(len(self.batches[0][1])),
                "probe_epochs": self.epochs, "probe_loss_before": before, "probe_loss_after": after,
                "probe_loss_drop": drop, "probe_dense_loss_drop": self.dense_drop,
                "probe_drop": drop - self.dense_drop,
                "probe_loss_kept": clip((self.entropy - after) / gain, -1.0, 1.0) if gain > TINY else 0.0,
                **{f"after_{k}": measured[k] for k in self.features}}

    def _run(self, masks: dict[str, torch.Tensor]) -> tuple[float, nn.Module]:
        """(loss on the measurement batch, the copy) after the probe's masked steps on a copy."""
        net = masked_copy(self.model, masks)
        bn_mode(net, train=True)
        hold = MaskCallback(net, masks)
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        for step, (x, y) in enumerate(self.batches):
            opt.zero_grad(set_to_none=True)
            loss = loss_of(outputs(net(x)), y)
            if not torch.isfinite(loss):
                return float("inf"), net
            loss.backward()
            hold.on_before_step(opt, step)
            opt.step()
            hold.on_step_end(opt, step)
        return self._loss(net), net

    def _loss(self, net: nn.Module) -> float:
        bn_mode(net, train=True)
        with torch.no_grad():
            loss = float(loss_of(outputs(net(self.x)), self.y))
        return loss if loss == loss else float("inf")


__all__ = ["Probe", "PROBE_STEPS", "PROBE_BATCH", "MAX_EPOCHS"]
