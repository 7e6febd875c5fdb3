"""Cost of a traced model: multiply-accumulates of every weight applied as a matrix product, dense and kept."""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from collapsekit.analysis.rules import aten

# Leaf modules the tracer does not enter: their weight's rows are output features.
_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _rows(shape) -> int:  # weight [out, ...] (linear, conv): every output element reads one whole row
    return int(np.prod(shape[1:]))


def _left(shape) -> int:  # w @ x: w's last axis is contracted
    return int(shape[-1])


def _right(shape) -> int:  # x @ w (Hugging Face's Conv1D: w stored [in, out], run by addmm): w's rows
    return int(shape[-2])


# {op: {argument position: the contracted length of a weight there, from its shape as applied}}.
_MATMUL = {torch.matmul: {0: _left, 1: _right}, operator.matmul: {0: _left, 1: _right}, torch.mm: {0: _left, 1: _right},
           torch.bmm: {0: _left, 1: _right}, "matmul": {0: _left, 1: _right}, "mm": {0: _left, 1: _right},
           "bmm": {0: _left, 1: _right}, "__matmul__": {0: _left, 1: _right},
           **{op: {0: _left, 1: _right} for op in aten("matmul.default", "mm.default", "bmm.default")},
           **{op: {1: _left, 2: _right} for op in (torch.addmm, torch.baddbmm, *aten("addmm.default",
                                                                                     "baddbmm.default"))},
           **{op: {1: _rows} for op in (F.linear, F.conv1d, F.conv2d, F.conv3d,
                                        *aten("linear.default", "conv1d.default", "conv2d.default", "conv3d.default",
                                              "conv1d.padding", "conv2d.padding", "conv3d.padding"))}}


def count_macs(traced, masks: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, int]]:
    """Per weight applied as a matrix product: {"weight": name, "dense": MACs, "kept": MACs counting only
    kept weights}, keyed by the weight's name less a final ".weight" (a conv/linear's module).

    A matrix product's MACs are its output's elements times the length of the axis it contracts (a conv:
    in-channels / groups times the kernel); each output element reads one line of the weight, so the kept
    MACs scale with the kept weights. Counted wherever a parameter is applied: Conv/Linear modules,
    F.linear/conv, and matmul/mm/bmm/addmm on a parameter (or a transpose or view of one), which is how
    torch.export graphs and Hugging Face's Conv1D (GPT-2) apply their weights. Shapes come from the
    traced graph's metadata (batch of one); a weight applied twice counts twice.
    """
    gm = traced.gm
    names = _names_by_tensor(gm)
    out: dict[str, dict[str, int]] = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if not hasattr(meta, "shape"):
            continue
        for name, contracted in _weights_applied(gm, node):
            dense = int(np.prod(tuple(meta.shape))) * contracted
            size = _attribute(gm, name).numel()  # a parametrized weight is computed, not a Parameter
            mask = next((masks[n] for n in names.get(name, (name,)) if n in masks), None) if masks else None
            entry = out.setdefault(name.removesuffix(".weight") or name, {"weight": name, "dense": 0, "kept": 0})
            entry["dense"] += dense
            entry["kept"] += dense if mask is None else int(mask.sum()) * dense // size
    return out


def _attribute(gm: fx.GraphModule, name: str) -> torch.Tensor:
    """The tensor at dotted path `name` of `gm`: a parameter, buffer or parametrized (computed) weight."""
    owner, _, attr = name.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, attr)


def _weights_applied(gm: fx.GraphModule, node: fx.Node):
    """(parameter name, contracted length) of every parameter `node` applies as a matrix product."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, _MODULES):
            yield f"{node.target}.weight", _rows(module.weight.shape)
        return
    if node.op not in ("call_function", "call_method"):
        return
    try:
        positions = _MATMUL.get(node.target, {})
    except TypeError:  # an unhashable target
        return
    # One product, counted once: the weight operand first (x @ w) when both come from parameters.
    for position, contracted in sorted(positions.items(), reverse=True):
        operand = node.args[position] if len(node.args) > position else None
        name = _parameter(gm, operand)
        meta = operand.meta.get("tensor_meta") if name else None
        if hasattr(meta, "shape") and len(meta.shape) >= 2:
            yield name, contracted(tuple(meta.shape))
            return


def _parameter(gm: fx.GraphModule, node) -> str | None:
    """The name of the parameter `node` reads, through ops of it alone (a transpose, a view, a cast)."""
    while isinstance(node, fx.Node) and node.op in ("call_function", "call_method") and node.args:
        inputs = node.all_input_nodes
        if len(inputs) != 1 or node.args[0] is not inputs[0]:
            return None
        node = inputs[0]
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    try:
        gm.get_parameter(node.target)
    except AttributeError:  # a buffer or a constant
        return None
    return node.target


def _names_by_tensor(gm: fx.GraphModule) -> dict[str, tuple[str, ...]]:
    """Every name of each parameter (tied weights have several; masks are keyed by one of them)."""
    by_id: dict[int, list[str]] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {name: tuple(group) for group in by_id.values() for name in group}


def forward_macs(traced) -> int:
    """Multiply-accumulates of every weight applied as a matrix product, for the batch-1 example input."""
    return sum(entry["dense"] for entry in count_macs(traced).values())


__all__ = ["count_macs", "forward_macs"]
