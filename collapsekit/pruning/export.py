"""Sparse checkpoints: one safetensors file with kept values plus a bitmask (or index) per pruned tensor.

Layout of the file (format "collapsekit-sparse", version 1):

- every tensor of the state_dict that has no mask is stored dense under its own key;
- a masked tensor `K` is stored as `K::values` (its kept entries, 1-D, in flat C
  order and in the tensor's own dtype) plus either `K::bitmask` (the keep-mask
  packed eight to a byte, `numpy.packbits`) or `K::index` (flat indices of the
  kept entries, uint16/uint32/int64), whichever is smaller: the index wins
  below 1/16 (uint16) or 1/32 (uint32) density;
- a tensor tied to another (same storage and view) is stored once; its other
  names are recorded as aliases.

The metadata holds a compact JSON `layout` (the state_dict's key order; form,
shape and dtype of each sparse key; aliases) and the caller's `meta`.

At 90 % sparsity a float32 tensor costs 0.1 * 4 + 1/8 bytes per weight, 13 % of
dense (WRN-28-8: 13.3 % for the whole file; a 0.27M-weight ResNet-20 pays ~2 %
more for the header and batch-norm tensors); torch.nn.utils.prune's state_dict
(weight_orig + weight_mask) is about 200 %. Loading parses no pickle
(Invariant 6) and rebuilds every tensor bit for bit, pruned entries as +0.0
(a -0.0 left by `mul_` comes back as +0.0).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.pruning.masks import pack, unpack

FORMAT = "collapsekit-sparse"
VERSION = "1"
SEP = "::"


def _index_dtype(numel: int) -> torch.dtype:
    if numel <= 1 << 16:
        return torch.uint16
    return torch.uint32 if numel <= 1 << 32 else torch.int64


def _view_key(t: torch.Tensor):
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def save_sparse(model: nn.Module, masks: dict[str, torch.Tensor], path, meta: dict | None = None) -> Path:
    """Path of the one safetensors file holding `model`'s state_dict, masked tensors in sparse form.

    The pruned entries of every masked tensor must be zero (prune or apply_masks
    first); CollapsekitError otherwise, so a file never silently drops weights.
    """
    from safetensors.torch import save_file

    from collapsekit.pruning.prune import check_masks

    check_masks(model, masks)
    state = model.state_dict(keep_vars=False)
    for name in masks:
        if name not in state:
            raise CollapsekitError(f"mask {name!r} names no state_dict entry of {type(model).__name__}")
    # Tied tensors: one representative per view, preferring the masked name.
    groups: dict = {}
    for key, t in state.items():
        groups.setdefault(_view_key(t), []).append(key)
    rep_of = {}
    for keys in groups.values():
        rep = next((k for k in keys if k in masks), keys[0])
        for k in keys:
            rep_of[k] = rep
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, list] = {}  # key -> [form, shape, dtype]
    aliases: dict[str, str] = {}
    seen_storage: set = set()
    for key, t in state.items():
        rep = rep_of[key]
        if rep != key:
            aliases[key] = rep
            continue
        t = t.detach().to("cpu")
        if key not in masks:
            ptr = t.untyped_storage().data_ptr()
            # safetensors refuses two entries that share memory: copy partial overlaps.
            tensors[key] = t.clone() if (ptr in seen_storage or not t.is_contiguous()) else t
            seen_storage.add(ptr)
            continue
        keep = masks[key].to("cpu")
        if bool(t.masked_fill(keep, 0).ne(0).any()):
            raise CollapsekitError(f"{key} has non-zero weights where its mask prunes; apply the masks "
                                   "(collapsekit.pruning.prune.apply_masks) before exporting")
        flat_keep = keep.reshape(-1)
        values = t.reshape(-1)[flat_keep].contiguous()
        idx_dtype = _index_dtype(t.numel())
        if values.numel() * torch.empty((), dtype=idx_dtype).element_size() < (t.numel() + 7) // 8:
            form = "index"
            tensors[key + SEP + "index"] = torch.nonzero(flat_keep).reshape(-1).to(idx_dtype)
        else:
            form = "bitmask"
            tensors[key + SEP + "bitmask"] = pack(keep)
        tensors[key + SEP + "values"] = values
        sparse[key] = [form, list(t.shape), str(t.dtype).removeprefix("torch.")]
    # Compact JSON: on a small net the header is a visible share of the file.
    layout = {"order": list(state), "sparse": sparse, "alias": aliases}
    compact = {"separators": (",", ":")}
    metadata = {"format": FORMAT, "version": VERSION, "layout": json.dumps(layout, **compact),
                "meta": json.dumps(meta or {}, default=_json_default, **compact)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def _read(path):
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CollapsekitError(f"sparse checkpoint {path} not found")
    try:
        fh = safe_open(str(path), framework="pt")
        meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError
        raise CollapsekitError(f"sparse checkpoint {path} is corrupt: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CollapsekitError(f"{path} is not a collapsekit sparse checkpoint (format {meta.get('format')!r})")
    return fh, meta, path


def read_sparse_meta(path) -> dict:
    """The `meta` dict stored by save_sparse."""
    _, meta, _ = _read(path)
    return json.loads(meta.get("meta") or "{}")


def load_sparse(path, with_masks: bool = False):
    """The dense state_dict stored by save_sparse, bit-identical to the saved one (pruned entries +0.0).

    With `with_masks`, returns `(state_dict, masks)`, the masks rebuilt from the
    file's bitmasks and indices.
    """
    fh, meta, path = _read(path)
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    try:
        layout = json.loads(meta["layout"])
        for key, (form, shape, _dtype) in layout["sparse"].items():
            shape = tuple(shape)
            numel = int(np.prod(shape, dtype=np.int64))
            values = fh.get_tensor(key + SEP + "values")
            if form == "bitmask":
                keep = unpack(fh.get_tensor(key + SEP + "bitmask"), shape).reshape(-1)
            elif form == "index":
                index = fh.get_tensor(key + SEP + "index").to(torch.int64)
                keep = torch.zeros(numel, dtype=torch.bool)
                keep[index] = True
            else:
                raise CollapsekitError(f"unknown storage form {form!r} for {key}")
            if int(keep.sum()) != values.numel():
                raise CollapsekitError(f"{key}: {values.numel()} values for {int(keep.sum())} kept entries")
            dense = torch.zeros(numel, dtype=values.dtype)
            dense[keep] = values
            state[key] = dense.reshape(shape)
            masks[key] = keep.reshape(shape)
        for key in layout["order"]:
            if key not in state and key not in layout["alias"]:
                state[key] = fh.get_tensor(key)
        for key, of in layout["alias"].items():
            state[key] = state[of]
        state = {key: state[key] for key in layout["order"]}  # the saved state_dict's order
    except CollapsekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing tensor, bad JSON
        raise CollapsekitError(f"sparse checkpoint {path} is corrupt: {type(exc).__name__}: {exc}") from None
    return (state, masks) if with_masks else state


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


__all__ = ["save_sparse", "load_sparse", "read_sparse_meta"]
