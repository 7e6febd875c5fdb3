"""Shared readings of a masked copy on a batch: the copy itself, batch-norm mode, the outputs and their loss.

The forecast's one pass (forecast.py) and its probe's steps (sgdprobe.py) read a
pruned net the same way, so both take these from here.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from collapsekit.errors import CollapsekitError
from collapsekit.pruning.prune import apply_masks
from collapsekit.validation.probe import flat_outputs

TINY = 1e-12


def masked_copy(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A float32 CPU deep copy with `masks` applied (+0.0 at pruned positions)."""
    net = copy.deepcopy(model).cpu().float()
    if masks:  # {} is the dense reference
        apply_masks(net, masks)  # the one masked write ck.prune uses
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def bn_mode(net: nn.Module, train: bool) -> None:
    """Everything in eval mode (no dropout noise), batch norms in `train` mode: batch statistics as in fine-tuning."""
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(train)


def outputs(out) -> torch.Tensor:
    """The model's first output tensor, as float: the scores the loss reads."""
    tensors = flat_outputs(out)
    if not tensors:
        raise CollapsekitError("the model returned no tensor: cannot forecast trainability")
    return tensors[0].float()


def flat(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [M, classes], targets [M]): per token when the outputs carry the targets' shape plus a class axis."""
    if out.ndim == y.ndim + 1 and out.shape[:-1] == y.shape:
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)
    return out.flatten(1), y


def loss_of(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of outputs `out` against targets `y`: per example ([N, C] vs [N]) or per token ([N, T, V] vs
    [N, T]); a model without one score per target class is a one-line error."""
    scores, target = flat(out, y)
    if scores.shape[1] <= int(target.max()):
        raise CollapsekitError(f"the model gives {scores.shape[1]} outputs per example but the data has label "
                               f"{int(target.max())}: the forecast needs one logit per class")
    return F.cross_entropy(scores, target)


def clip(v: float, lo: float, hi: float) -> float:
    """`v` within [lo, hi]; NaN and -inf go to lo."""
    return lo if not v > lo else hi if v > hi else float(v)  # NaN goes to lo


__all__ = ["masked_copy", "bn_mode", "outputs", "flat", "loss_of", "clip", "TINY"]
