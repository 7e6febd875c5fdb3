"""Masks on disk (one code per mask, smallest first) and interop with torch.nn.utils.prune's weight_orig/weight_mask form.

The masks of a pruned model travel inside its sparse checkpoint
(`collapsekit.files.sparse`); `load` reads them from there or from a
separate mask file, written only on request (`prune --masks-file`). A mask file
(format "collapsekit-masks", format_version 2) holds one uint8 tensor per
parameter name: the keep-mask in the shortest code of
`collapsekit.files.maskcode`; shapes, codes and kept counts live in the
header's `layout`. Version 1 files (packed bits, `shapes`) still load.
Loading parses no pickle (Invariant 6).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune
from safetensors.torch import save_file

from collapsekit.analysis.boolops import pack_bits, unpack_bits
from collapsekit.errors import CollapsekitError
from collapsekit.files import sparse
from collapsekit.files.atomic import atomic_write
from collapsekit.files.safefile import format_version, open_tagged
from collapsekit.pruning.prune import apply_masks, check_masks

FORMAT = "collapsekit-masks"
VERSION = 2
WHAT = "mask file"


def pack(mask: torch.Tensor) -> torch.Tensor:
    """uint8 tensor of `mask` flattened (C order) and packed eight bits to a byte."""
    return torch.from_numpy(pack_bits(mask.detach().to("cpu", torch.bool)))


def unpack(packed: torch.Tensor, shape) -> torch.Tensor:
    """The bool tensor of `shape` that `pack` turned into `packed`."""
    numel = int(np.prod(shape, dtype=np.int64))
    if packed.numel() != (numel + 7) // 8:
        raise CollapsekitError(f"packed mask has {packed.numel()} bytes, a mask of shape {list(shape)} needs "
                               f"{(numel + 7) // 8}")
    return unpack_bits(packed.numpy(), shape)


def save(masks: dict[str, torch.Tensor], path) -> Path:
    """Path of the safetensors mask file written with each of `masks` in its shortest code, atomically."""
    if not isinstance(masks, dict) or not masks:
        raise CollapsekitError("masks must be a non-empty dict of parameter name -> bool tensor")
    layout, codes = {}, {}
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise CollapsekitError(f"mask {name!r} is not a bool tensor")
        codes[name], code = sparse.encode_mask(mask)
        layout[name] = [list(mask.shape), *code, int(mask.sum())]
    metadata = {"format": FORMAT, "format_version": str(VERSION),
                "layout": json.dumps(layout, separators=(",", ":"))}
    return atomic_write(path, lambda tmp: save_file(codes, str(tmp), metadata=metadata))


def load(path) -> dict[str, torch.Tensor]:
    """The bool keep-masks by parameter name, from a pruned model's sparse checkpoint or a mask file.

    Every command and function that takes masks reads them through here, so
    both files serve; anything else raises a one-line CollapsekitError.
    """
    if sparse.is_sparse_checkpoint(path):
        return sparse.read_masks(path)
    with open_tagged(path, "mask file (or sparse checkpoint)", {FORMAT: VERSION}) as (fh, meta):
        if format_version(meta) == 1:
            shapes = json.loads(meta["shapes"])
            masks = {name: unpack(fh.get_tensor(name), shapes[name]) for name in fh.keys()}
        else:
            layout = json.loads(meta["layout"])
            masks = {name: sparse.decode_mask(fh.get_tensor(name), form, parameter, shape, kept)
                     for name, (shape, form, parameter, kept) in layout.items()}
            shapes = layout
    if set(masks) != set(shapes):
        raise CollapsekitError(f"mask file {path} lists masks it does not hold")
    return masks


def to_torch_prune(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """`model` with `masks` registered as torch.nn.utils.prune custom masks (weight_orig + weight_mask), in place."""
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
