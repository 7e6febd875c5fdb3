"""Masks on disk (bit-packed safetensors) and interop with torch.nn.utils.prune's weight_orig/weight_mask form.

A mask file holds one uint8 tensor per parameter name: the keep-mask flattened
in C order and packed eight to a byte (`numpy.packbits`, big bit order); the
shapes live in the safetensors metadata. Loading parses no pickle (Invariant 6).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.files.safefile import read_tagged

FORMAT = "collapsekit-masks"
VERSION = "1"


def pack(mask: torch.Tensor) -> torch.Tensor:
    """uint8 tensor of `mask` flattened (C order) and packed eight bits to a byte."""
    flat = mask.detach().to("cpu", torch.bool).contiguous().view(-1).numpy()
    return torch.from_numpy(np.packbits(flat))


def unpack(packed: torch.Tensor, shape) -> torch.Tensor:
    """The bool tensor of `shape` that `pack` turned into `packed`."""
    numel = int(np.prod(shape, dtype=np.int64))
    if packed.numel() != (numel + 7) // 8:
        raise CollapsekitError(f"packed mask has {packed.numel()} bytes, a mask of shape {list(shape)} needs "
                               f"{(numel + 7) // 8}")
    bits = np.unpackbits(packed.numpy(), count=numel).astype(bool, copy=False)
    return torch.from_numpy(bits).reshape(tuple(shape))


def save(masks: dict[str, torch.Tensor], path) -> Path:
    """Path of the safetensors file written with `masks` bit-packed (an eighth of a byte per weight)."""
    from safetensors.torch import save_file

    if not isinstance(masks, dict) or not masks:
        raise CollapsekitError("masks must be a non-empty dict of parameter name -> bool tensor")
    shapes, packed = {}, {}
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise CollapsekitError(f"mask {name!r} is not a bool tensor")
        shapes[name] = list(mask.shape)
        packed[name] = pack(mask)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(packed, str(tmp), metadata={"format": FORMAT, "version": VERSION, "shapes": json.dumps(shapes)})
    os.replace(tmp, path)
    return path


def load(path) -> dict[str, torch.Tensor]:
    """The bool keep-masks stored by `save`, by parameter name."""
    meta, packed = read_tagged(path, FORMAT, "mask file", json_keys=("shapes",))
    shapes = meta["shapes"]
    try:
        masks = {name: unpack(bits, shapes[name]) for name, bits in packed.items()}
    except Exception as exc:  # noqa: BLE001 - a missing or wrong shape
        raise CollapsekitError(f"mask file {path} is corrupt: {type(exc).__name__}: {exc}") from None
    if set(masks) != set(shapes):
        raise CollapsekitError(f"mask file {path} lists shapes for masks it does not hold")
    return masks


def to_torch_prune(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """`model` with `masks` registered as torch.nn.utils.prune custom masks (weight_orig + weight_mask), in place."""
    import torch.nn.utils.prune as torch_prune

    from collapsekit.pruning.prune import check_masks

    check_masks(model, masks)
    for name, keep in masks.items():
        module_name, _, param = name.rpartition(".")
        module = model.get_submodule(module_name)
        torch_prune.custom_from_mask(module, param, keep.to(getattr(module, param).device))
    return model


def from_torch_prune(model: nn.Module) -> dict[str, torch.Tensor]:
    """The bool masks of every torch.nn.utils.prune reparametrisation in `model`, which is removed in place.

    Each pruned tensor is left a plain parameter holding `orig * mask` (its pruned value).
    """
    import torch.nn.utils.prune as torch_prune

    from collapsekit.pruning.prune import apply_masks

    masks: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, torch_prune.BasePruningMethod)]
        for hook in hooks:
            param = hook._tensor_name
            full = f"{module_name}.{param}" if module_name else param
            masks[full] = getattr(module, f"{param}_mask").detach().to(torch.bool).clone()
            torch_prune.remove(module, param)
    if not masks:
        raise CollapsekitError(f"{type(model).__name__} has no torch.nn.utils.prune reparametrisation")
    apply_masks(model, masks)  # +0.0 where orig * mask left -0.0
    return masks


__all__ = ["save", "load", "pack", "unpack", "to_torch_prune", "from_torch_prune"]
