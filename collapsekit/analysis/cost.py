"""Cost of a traced model: multiply-accumulates per conv/linear, dense and counting only kept weights."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def count_macs(traced, masks: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, int]]:
    """Per conv/linear module: {"weight": name, "dense": MACs, "kept": MACs counting only kept weights}.

    A conv's MACs are its (kept) weights times its output's spatial positions; a
    linear's are its (kept) weights times its output's positions other than the
    feature axis (1 for a [batch, features] input). Shapes come from the traced
    graph's ShapeProp metadata (batch of one); a module called twice counts twice.
    """
    gm = traced.gm
    out: dict[str, dict[str, int]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if not isinstance(module, _COUNTED):
            continue
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            continue
        shape = tuple(meta.shape)
        positions = int(np.prod(shape[2:])) if not isinstance(module, nn.Linear) else int(np.prod(shape[1:-1]))
        name = f"{node.target}.weight"
        size = module.weight.numel()
        kept = int(masks[name].sum()) if masks and name in masks else size
        entry = out.setdefault(node.target, {"weight": name, "dense": 0, "kept": 0})
        entry["dense"] += size * positions
        entry["kept"] += kept * positions
    return out


def forward_macs(traced) -> int:
    """Multiply-accumulates of the traced convs and linears for the batch-1 example input."""
    return sum(entry["dense"] for entry in count_macs(traced).values())


__all__ = ["count_macs", "forward_macs"]
