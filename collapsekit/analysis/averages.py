"""Attention averages of constants: where a softmax-weighted sum cannot depend on the input.

`softmax(s) @ v` averages the rows of `v` with weights that sum to one. A
feature of `v` that no kept path reaches is a constant; if that constant is the
same in every row (a bias broadcast over the tokens), the average is that
constant whatever the weights: the output feature is dead although the
attention weights are live. If the rows differ (position embeddings, border
effects of padding), the average moves with the weights and stays live.
Telling the two apart needs the constants' values, so the values the rule
reads are computed once per mask set by the masked network itself
(`constant_values`), only for the `v` operands of such averages.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from collapsekit.analysis.rules import aten

_SOFTMAX = {torch.softmax, torch.nn.functional.softmax, "softmax", *aten("_softmax.default", "softmax.int")}
# Ops between the softmax and the average that keep every row's sum at one.
_PASS = {"to", "type_as", "contiguous", "float", "clone", "dropout", torch.nn.functional.dropout,
         *aten("dropout.default", "_to_copy.default", "to.dtype", "clone.default", "contiguous.default",
               "alias.default")}
_AVERAGE = {torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", "__matmul__",
            *aten("matmul.default", "bmm.default")}
_SDPA = {torch.nn.functional.scaled_dot_product_attention, *aten("scaled_dot_product_attention.default")}


def averaged_values(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """{averaging node name: the node whose rows it averages}: matmuls whose left operand is a
    last-dim softmax (through dropout and casts), and scaled_dot_product_attention's value."""
    found = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method") or len(node.args) < 2:
            continue
        if _key(node) in _SDPA and len(node.args) >= 3 and isinstance(node.args[2], fx.Node):
            found[node.name] = node.args[2]
        elif _key(node) in _AVERAGE and isinstance(node.args[1], fx.Node) and _row_normalised(node.args[0]):
            found[node.name] = node.args[1]
    return found


def _key(node: fx.Node):
    try:
        return node.target if node.target in _SOFTMAX | _PASS | _AVERAGE | _SDPA else None
    except TypeError:  # unhashable target
        return None


def _row_normalised(node) -> bool:
    while isinstance(node, fx.Node) and _key(node) in _PASS:
        node = node.args[0]
    if not isinstance(node, fx.Node) or _key(node) not in _SOFTMAX:
        return False
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    meta = node.meta.get("tensor_meta")
    ndim = len(meta.shape) if meta is not None else None
    return isinstance(dim, int) and ndim is not None and dim % ndim == ndim - 1


class _Values(fx.Interpreter):
    """The masked network's real values at the nodes asked for."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted, self.values = wanted, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach()
        return out


def constant_values(traced, weights, masks, wanted: set[str]) -> dict[str, torch.Tensor]:
    """Real values of the `wanted` nodes in the network pruned by `masks` (the model is restored)."""
    from torch.nn.utils.stateless import _reparametrize_module

    params = dict(traced.gm.named_parameters())
    state = {}
    for w in weights:
        if w.name in params:
            p = params[w.name]
            state[w.name] = torch.where(masks.keep(w.name), p.detach(), torch.zeros((), dtype=p.dtype))
    runner = _Values(traced.gm, wanted)
    with torch.no_grad(), _reparametrize_module(traced.gm, state):
        runner.run(*traced.example_inputs)
    return runner.values


def uniform_dead_columns(live: torch.Tensor | None, values: torch.Tensor, rows: int = -2) -> torch.Tensor:
    """Bool, size 1 along `rows`: features that no live element reaches and whose constant is the
    same in every row (the average of such a column is that constant)."""
    same = torch.isclose(values.amax(rows, keepdim=True), values.amin(rows, keepdim=True), rtol=1e-6, atol=1e-7)
    if live is None:
        return same
    dead = live.detach().sum(rows, keepdim=True) == 0
    return same & dead
