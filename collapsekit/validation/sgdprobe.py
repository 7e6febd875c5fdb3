"""The trainability probe: the real fine-tune's first masked steps on the pruned copy, read against the dense net's.

The cheapest direct evidence that fine-tuning will work is to start it: a
handful of steps of the fine-tune's own optimiser (SGD lr 0.01, momentum 0.9,
weight decay 5e-4, batch 64: `ck.finetune`'s and validate's defaults) with the
masks held exact by training's `MaskCallback`, then the loss and accuracy on
the forecast's measurement batch, which the steps never train on (held aside).
The dense net runs the same steps on the same examples once, so the pruned
net's readings are relative to what those steps give a net that has nothing to
recover (`probe_loss_kept`, `probe_accuracy_kept`, `probe_drop`); and the stepped
copy is measured again as in the one pass (`after_*` keys) where the probe
stops: a net that will train moves its readings toward the dense ones. An
early-training signal reads the same whatever the architecture (Frankle et al.,
"The Early Phase of Neural Network Training", ICLR 2020: the first steps
already sort what will train).

Adaptive length: the short probe (min(PROBE_STEPS, MAX_EPOCHS of an epoch)
steps) decides every prune it leaves above the `trained` bar. One it leaves
below the bar is undecided (`undecided`): a slow starter (still at chance after
half an epoch, above chance + 0.1 after the fine-tune's three) or one that will
never start. Only then the probe goes on, a short probe's length at a time,
while the prune stays below the bar, up to EXTEND x the short probe's steps and
never past EXTENDED_EPOCHS of one fine-tune epoch; the readings are those of
where it stopped (`probe_extended` 1, `probe_trend`: the last stretch's loss
drop against the dense net's) and the short probe's are kept
(`probe_short_*`: the same steps for every prune, what `trainable.choose`
ranks candidates by). The cost is recorded as `probe_epochs`
(analyses/README.md: the lengths compared leave-one-architecture-out).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from collapsekit.training.masking import MaskCallback
from collapsekit.validation.measuring import TINY, bn_mode, clip, flat, loss_of, masked_copy, outputs

PROBE_STEPS = 16
PROBE_BATCH = 64  # ck.finetune's default batch
MAX_EPOCHS = 0.5  # the short probe never costs more than this fraction of one fine-tune epoch
EXTEND = 3  # an undecided short probe goes on to at most this many times its steps ...
EXTENDED_EPOCHS = 1.5  # ... never past this fraction of one fine-tune epoch (half of validate's 3 epochs)
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4  # ck.finetune's (validate's) defaults: the real fine-tune's first steps
SHORT_KEYS = ("probe_accuracy_margin", "probe_drop", "probe_loss_after")  # the short reading kept when extended


def undecided(reading: dict) -> bool:
    """Do the steps so far leave the prune undecided? Its accuracy on the held-aside batch is still below the
    `trained` bar (a slow starter, or one that will not start); going on only when the loss also fell faster than
    the dense net's scored lower leave-one-architecture-out (analyses/README.md)."""
    return reading["probe_accuracy_margin"] < 0


class Probe:
    """Called with masks: the probe's evidence (floats). The steps' examples are drawn once (seeded)."""

    def __init__(self, forecaster, features: tuple[str, ...], seed: int = 0, extend: int = EXTEND,
                 extended_epochs: float = EXTENDED_EPOCHS):
        """`forecaster` (forecast.Forecaster) gives the model, batch, dense reference and `measure_net`;
        `features` are the one-pass readings taken again after the steps (as `after_<name>`); `extend` and
        `extended_epochs` bound the extended probe."""
        self.forecaster, self.features = forecaster, features
        self.model, self.x, self.y = forecaster.model, forecaster.x, forecaster.y
        self.entropy = forecaster.dense.entropy
        self.chance = forecaster.dense.chance
        dataset = forecaster.probe_data
        n = len(dataset)
        short = max(1, min(PROBE_STEPS, int(MAX_EPOCHS * n / PROBE_BATCH)))
        longest = max(short, min(extend * short, int(extended_epochs * n / PROBE_BATCH)))
        self.marks = sorted({min(short * j, longest) for j in range(1, extend + 1)})  # where readings are taken
        self.steps = short
        batch = min(PROBE_BATCH, n)
        # The steps draw from the training examples the measurement batch does not hold (when it says which).
        pool = torch.ones(n, dtype=torch.bool)
        if forecaster.held is not None and len(forecaster.held) < n:
            pool[forecaster.held] = False
        pool = pool.nonzero().flatten()
        g = torch.Generator().manual_seed(seed)
        idx = pool[torch.randint(len(pool), (self.marks[-1], batch), generator=g)]
        xs, ys = dataset.tensors[:2]
        self.batches = [(xs[i], ys[i]) for i in idx]
        self.n = n
        self.epochs = short * batch / n
        self.dense_readings = [(loss, accuracy) for _, loss, accuracy in self._steps({})]  # per mark
        self.dense_readings += self.dense_readings[-1:] * (len(self.marks) - len(self.dense_readings))  # diverged

    def __call__(self, masks: dict[str, torch.Tensor]) -> dict:
        """The probe's evidence: the short probe's, or the extended one's where the short one was `undecided`."""
        readings = self.readings(masks, undecided)
        evidence = dict(readings[-1])
        evidence["probe_extended"] = float(len(readings) > 1)
        evidence.update({f"probe_short_{k[6:]}": readings[0][k] for k in SHORT_KEYS})
        return evidence

    def readings(self, masks: dict[str, torch.Tensor], go_on: Callable[[dict], bool]) -> list[dict]:
        """The evidence at each mark the probe reaches: it goes past a mark while `go_on(that mark's evidence)`. The
        last one also holds the one-pass readings of the stepped copy (`after_*`)."""
        before, start = self._loss(masked_copy(self.model, masks))
        out, last = [], before
        dense_last = self.forecaster.dense.loss
        for j, (net, after, accuracy) in enumerate(self._steps(masks)):
            dense_after, dense_accuracy = self.dense_readings[j]
            out.append(self._reading(self.marks[j], before, start, after, accuracy, last, dense_last, dense_after,
                                     dense_accuracy))
            if j == len(self.marks) - 1 or after == float("inf") or not go_on(out[-1]):
                measured = self.forecaster.measure_net(net, masks)  # the one-pass evidence again, after the steps
                out[-1].update({f"after_{k}": measured[k] for k in self.features})
                break
            last, dense_last = after, dense_after
        return out

    def _reading(self, steps, before, start, after, accuracy, last, dense_last, dense_after, dense_accuracy) -> dict:
        """The evidence after `steps` steps: loss and accuracy on the held-aside batch against the dense net's after
        the same steps."""
        h = max(self.entropy, TINY)
        dense = self.forecaster.dense
        drop = clip((before - after) / h, -1.0, 1.0)
        dense_drop = clip((dense.loss - dense_after) / h, -1.0, 1.0)
        gain = self.entropy - dense_after
        dense_gain = self.entropy - dense.loss
        lift = dense_accuracy - self.chance
        epochs = steps * len(self.batches[0][1]) / self.n
        trend = (last - after) - (dense_last - dense_after)  # the last stretch's drop against the dense net's
        return {"probe_steps": float(steps), "probe_batch": float(len(self.batches[0][1])),
                "probe_epochs": epochs, "probe_loss_before": before, "probe_loss_after": after,
                "probe_loss_drop": drop, "probe_dense_loss_drop": dense_drop,
                "probe_drop": drop - dense_drop, "probe_trend": clip(trend / h, -1.0, 1.0),
                "probe_regained": clip((before - after) / dense_gain, -1.0, 1.0) if dense_gain > TINY else 0.0,
                "probe_loss_kept": clip((self.entropy - after) / gain, -1.0, 1.0) if gain > TINY else 0.0,
                "probe_accuracy": accuracy, "probe_dense_accuracy": dense_accuracy,
                "probe_accuracy_kept": clip((accuracy - self.chance) / lift, -1.0, 2.0) if lift > TINY else 0.0,
                "probe_accuracy_margin": accuracy - self.chance - self.forecaster.margin,
                "probe_accuracy_gain": accuracy - start}

    def _steps(self, masks: dict[str, torch.Tensor]):
        """Yields (the copy, loss on the measurement batch, its accuracy there) at each mark of the masked steps on
        a copy, stepping on only when asked for the next; a diverged copy yields once more, at chance, and stops."""
        net = masked_copy(self.model, masks)
        bn_mode(net, train=True)
        hold = MaskCallback(net, masks)
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        step = 0
        for mark in self.marks:
            for x, y in self.batches[step:mark]:
                opt.zero_grad(set_to_none=True)
                loss = loss_of(outputs(net(x)), y)
                if not torch.isfinite(loss):
                    yield net, float("inf"), self.chance
                    return
                loss.backward()
                hold.on_before_step(opt, step)
                opt.step()
                hold.on_step_end(opt, step)
                step += 1
            loss, accuracy = self._loss(net)
            yield net, loss, accuracy

    def _loss(self, net: nn.Module) -> tuple[float, float]:
        """(loss, top-1 accuracy) of `net` on the measurement batch, batch norm on batch statistics."""
        bn_mode(net, train=True)
        with torch.no_grad():
            out = outputs(net(self.x))
            loss = float(loss_of(out, self.y))
        scores, target = flat(out, self.y)
        return (loss if loss == loss else float("inf")), float((scores.argmax(1) == target).float().mean())


__all__ = ["Probe", "undecided", "PROBE_STEPS", "PROBE_BATCH", "MAX_EPOCHS", "EXTEND", "EXTENDED_EPOCHS"]
