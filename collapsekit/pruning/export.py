"""Export a pruned model: its state_dict and masks as one sparse checkpoint (the format of `files.sparse`).

The format itself (layout, mask codes, versions, reading back) belongs to the
files it defines, `collapsekit.files.sparse`; this module checks that the masks
fit the model's parameters (`pruning.prune.check_masks`) and hands the
model's state_dict over. Reading back needs no model: `load_sparse`,
`read_masks` and `read_sparse_meta` are the format's own.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from collapsekit.files.sparse import (SEP, decode_mask, encode_mask, is_sparse_checkpoint, load_sparse, read_masks,
                                      read_sparse_meta, write_sparse)
from collapsekit.pruning.prune import check_masks


def save_sparse(model: nn.Module, masks: dict[str, torch.Tensor], path, meta: dict | None = None) -> Path:
    """Path of the one safetensors file holding `model`'s state_dict and `masks`, masked tensors in sparse form.

    The pruned entries of every masked tensor must be zero (prune or apply_masks
    first); CollapsekitError otherwise, so a file never silently drops weights.
    Written atomically (`files.atomic`).
    """
    check_masks(model, masks)
    return write_sparse(model.state_dict(keep_vars=False), masks, path, meta=meta, owner=type(model).__name__)


__all__ = ["save_sparse", "load_sparse", "read_sparse_meta", "read_masks", "is_sparse_checkpoint",
           "encode_mask", "decode_mask", "SEP"]
