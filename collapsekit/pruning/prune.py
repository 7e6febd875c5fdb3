"""Global MP in place: exact counts, optional Minimum Threshold (MT), masks as plain bool tensors.

Global MP (Gupta et al., "Is Complexity Required for Neural Network Pruning?
A Case Study on Global Magnitude Pruning") zeroes the `round(s * N)` smallest
magnitudes of all N prunable weights (Invariant 1; order and ties as in
`collapsekit.analysis.magnitudes`: |w| ascending, then layer order, then flat index, so
weights already zero go first).

MT (Invariant 2): every layer keeps its `min(MT, size)` largest weights, and the
rest of the budget is given by ONE global threshold over the unprotected
weights, so the total pruned is still exactly `round(s * N)`. The reference
code of Gupta et al. instead rescales per-layer sparsities after protecting MT
weights per layer; its total can miss the target sparsity. With the same MT our
kept set differs from theirs only where the two budgets differ.

Masks are `dict[str, torch.BoolTensor]` keyed by parameter name (a tied tensor
under its first name), True = kept. Applying them is an in-place masked write
under `no_grad` (docs/design.md, Style 10: no torch.nn.utils.prune reparametrisation). It
writes +0.0, not the -0.0 that `w.mul_(mask)` leaves on negative weights, so a
pruned weight is bit-for-bit zero and sparse exports round-trip exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.spec import fraction
from collapsekit.analysis.lazy import initialize_lazy, require_initialized
from collapsekit.analysis.magnitudes import MagnitudeIndex, resolve_mt, sparsity_to_count
from collapsekit.analysis.prunable import PrunableWeight, find_prunable, tensors


# -- results -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PrunedLayer:
    """One prunable weight after pruning: its size and how many weights it keeps."""

    name: str
    size: int
    kept: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.size if self.size else 0.0

    @property
    def emptied(self) -> bool:
        return self.kept == 0

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "kept": self.kept,
                "sparsity": self.sparsity, "emptied": self.emptied}


@dataclass(frozen=True)
class PruneResult:
    """The masks Global MP applied, with per-layer counts (docs/design.md terms)."""

    masks: dict[str, torch.Tensor]  # parameter name -> bool keep-mask (True = kept)
    layers: tuple[PrunedLayer, ...]
    target_sparsity: float
    mt_count: int
    threshold: float  # |w| of the last weight pruned (0.0 when nothing was)

    @property
    def total(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def pruned(self) -> int:
        return sum(layer.size - layer.kept for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """The achieved global sparsity, `pruned / total` (= round(s * N) / N)."""
        return self.pruned / self.total

    @property
    def emptied_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.emptied]

    def to_dict(self) -> dict:
        return {"target_sparsity": self.target_sparsity, "sparsity": self.sparsity, "mt_count": self.mt_count,
                "total": self.total, "pruned": self.pruned, "threshold": self.threshold,
                "emptied_layers": self.emptied_layers, "layers": [layer.to_dict() for layer in self.layers]}


# -- pruning -----------------------------------------------------------------------------
def prune(model: nn.Module, sparsity: float, mt=None, include: list[str] | None = None,
          exclude: list[str] | None = None, example_inputs=None) -> PruneResult:
    """PruneResult of Global MP (+ MT) applied to `model` in place; exactly round(s * N) weights pruned.

    `mt` is a per-layer count (int) or a percent of all prunable weights (float or
    "0.05%"), as `magnitudes.resolve_mt`. Everything is validated before the model
    is touched: a bad sparsity, an MT too large for it or NaN weights raise
    CollapsekitError and leave the weights as they were. Extra memory: the
    magnitude index (one float32 copy of the prunable weights) plus the bool
    masks, built and applied one layer at a time.

    A model with lazy modules (nn.LazyLinear, ...) has no weights before its first
    forward: `example_inputs` runs that forward on `model` itself (it is pruned in
    place anyway); without them such a model is refused.
    """
    sparsity = fraction(sparsity)  # 0.95 or "95%"
    if example_inputs is not None:
        initialize_lazy(model, example_inputs)
    require_initialized(model)
    weights = find_prunable(model, include, exclude)
    total = sum(w.numel for w in weights)
    k = sparsity_to_count(sparsity, total)
    mt_count = resolve_mt(mt, total)
    _check_budget(weights, k, mt_count, sparsity)
    live = tensors(model, weights)
    index = MagnitudeIndex(weights, live)  # raises on NaN; the model is still untouched
    alloc = index.allocate(k, mt_count)
    masks: dict[str, torch.Tensor] = {}
    layers = []
    for (i, keep), w, t in zip(index.layer_masks(alloc, live), weights, live):
        _masked_write(t, keep)
        masks[w.name] = keep
        layers.append(PrunedLayer(w.name, w.numel, w.numel - int(alloc.pruned[i])))
        _release_layer(index, i)
    del index
    return PruneResult(masks, tuple(layers), float(sparsity), mt_count, alloc.threshold)


def _release_layer(index: MagnitudeIndex, i: int) -> None:
    # A layer's sorted magnitudes are dead once its mask exists; dropping them as we
    # go keeps the peak near one float32 copy instead of copy + all masks
    # (WRN-28-8: ~1.1x instead of ~1.45x).
    index.release(i)


def _check_budget(weights: list[PrunableWeight], k: int, mt_count: int, sparsity) -> None:
    sizes = np.array([w.numel for w in weights], dtype=np.int64)
    prunable = int((sizes - np.minimum(sizes, mt_count)).sum())
    if k > prunable:
        most = prunable / sizes.sum()
        raise CollapsekitError(
            f"MT={mt_count} per layer leaves only {prunable} of {int(sizes.sum())} weights prunable "
            f"(sparsity <= {most:.6g}), fewer than the {k} that sparsity {sparsity} needs; "
            "lower the MT or the sparsity")


def _masked_write(tensor: torch.Tensor, keep: torch.Tensor) -> None:
    # where(out=) writes +0.0 in place with no temporary; mul_ would leave -0.0.
    with torch.no_grad():
        zero = torch.zeros((), dtype=tensor.dtype, device=tensor.device)
        torch.where(keep.to(tensor.device), tensor, zero, out=tensor.data)


def check_masks(model: nn.Module, masks: dict) -> None:
    """Returns None when every mask names a parameter of `model` with its shape; else CollapsekitError."""
    if not isinstance(masks, dict) or not masks:
        raise CollapsekitError("masks must be a non-empty dict of parameter name -> bool tensor")
    params = dict(model.named_parameters(remove_duplicate=False))
    problems = []
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            problems.append(f"{name}: not a bool tensor")
        elif name not in params:
            problems.append(f"{name}: no such parameter")
        elif tuple(mask.shape) != tuple(params[name].shape):
            problems.append(f"{name}: mask {list(mask.shape)} vs parameter {list(params[name].shape)}")
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CollapsekitError(f"masks do not fit {type(model).__name__}: {'; '.join(problems[:3])}{more}")


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """`model` with every masked weight zeroed in place (+0.0); checks the masks first.

    Fine-tuning calls this after each optimizer step (Invariant 3). Keep the masks
    on the weights' device to avoid a copy per call.
    """
    check_masks(model, masks)
    for name, keep in masks.items():
        _masked_write(model.get_parameter(name), keep)
    return model


__all__ = ["prune", "PruneResult", "PrunedLayer", "apply_masks", "check_masks"]
