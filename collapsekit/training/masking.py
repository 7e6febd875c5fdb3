"""Masks held exact through training: a `train.Callback` that keeps pruned weights, gradients and optimizer state zero.

Invariant 3 (masks stay exact): before every optimizer step the gradients at
pruned positions are zeroed; after it the weights are multiplied by their 0/1
masks and the optimizer's per-weight state (SGD momentum, Adam and AdamW
moments) is zeroed there, so neither momentum nor weight decay revives a pruned
weight. The reference Global MP code re-applies its masks after every step the
same way (Gupta et al.).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.pruning.prune import apply_masks
from collapsekit.training.train import Callback


class MaskCallback(Callback):
    """Holds `masks` (parameter name -> bool keep-mask) of `model` exact at every optimizer step of `fit`."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.masks: dict[str, torch.Tensor] = {}
        self.params: list[torch.Tensor] = []  # the masked parameters
        self.keep: list[torch.Tensor] = []  # their masks as 0/1 floats
        self._state_cache = None
        self.set_masks(masks or {})

    def set_masks(self, masks: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Apply `masks` to the model (exact +0.0) and zero `optimizer`'s state at the pruned positions."""
        self.masks = masks
        if masks:
            apply_masks(self.model, masks)
        self.params = [self.model.get_parameter(n) for n in masks]
        self.keep = [m.to(p.dtype) for p, m in zip(self.params, masks.values())]  # float masks for mul_
        self._state_cache = None
        if optimizer is not None:
            self._zero_state(optimizer)

    def on_before_step(self, optimizer, step: int) -> None:
        grads = [p.grad for p in self.params]
        if grads and all(g is not None for g in grads):
            with torch.no_grad():
                torch._foreach_mul_(grads, self.keep)
        else:  # some masked weight got no gradient this step (unused branch)
            for g, keep in zip(grads, self.keep):
                if g is not None:
                    g.mul_(keep)

    def on_step_end(self, optimizer, step: int) -> None:
        if not self.params:
            return
        # Multiplying by the 0/1 mask keeps +0.0 exact: a pruned weight is +0.0 and, with its
        # gradient and optimizer state zero, the step only ever adds +-0.0 to it. (apply_masks'
        # torch.where costs ~10x a multiply on CPU; it runs at every mask change and epoch end.)
        with torch.no_grad():
            torch._foreach_mul_([p.detach() for p in self.params], self.keep)
        self._zero_state(optimizer)

    def on_epoch_end(self, epoch: int, metrics: dict, optimizer) -> None:
        if self.masks:
            apply_masks(self.model, self.masks)

    def sparsity(self) -> float:
        """Fraction of the masked weights that the masks prune (0.0 without masks)."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0

    def _zero_state(self, optimizer) -> None:
        """Zero the optimizer's per-weight state (momentum, Adam moments) at pruned positions."""
        if not self.params:
            return
        # State tensors appear at an optimizer's first step and are then updated in place:
        # collect them again only when the optimizer, the masks or the number of states change.
        key = (id(optimizer), len(optimizer.state))
        if self._state_cache is None or self._state_cache[0] != key:
            values, keeps = [], []
            for p, keep in zip(self.params, self.keep):
                for value in optimizer.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        values.append(value)
                        keeps.append(keep)
            self._state_cache = (key, values, keeps)
        _, values, keeps = self._state_cache
        if values:
            with torch.no_grad():
                torch._foreach_mul_(values, keeps)


def check_pruned_zero(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """None when every pruned weight of `model` is exactly zero; else CollapsekitError (Invariant 3 broken)."""
    bad = [n for n, keep in masks.items() if bool(model.get_parameter(n).detach()[~keep.to(
        model.get_parameter(n).device)].ne(0).any())]
    if bad:
        raise CollapsekitError(f"pruned weights became non-zero in {', '.join(bad[:3])}")


__all__ = ["MaskCallback", "check_pruned_zero"]
