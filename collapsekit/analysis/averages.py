"""Attention averages of constants: where a softmax-weighted sum cannot depend on the input.

`softmax(s) @ v` averages the rows of `v` with weights that sum to one. A
feature of `v` that no kept path reaches is a constant; if that constant is the
same in every row (a bias broadcast over the tokens), the average is that
constant whatever the weights: the output feature is dead although the
attention weights are live. If the rows differ (position embeddings, border
effects of padding), the average moves with the weights and stays live.
Telling the two apart needs the constants' values, so the values the rule
reads are computed once per mask set by a generic network with the same
pruning pattern (`constant_values`), only for the `v` operands of such averages.
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
# Generic inputs and constants are small, so that no tanh or sigmoid saturates into a spurious uniform column.
_SCALE = 0.01
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


# Activations that saturate or cut by sign get unbounded, strictly monotone stand-ins in the generic
# network: a saturated tanh, or a ReLU zeroing a negative constant, would make a column equal in every
# row although structurally it varies.
def _leaky(x, *args, **kwargs):
    return torch.nn.functional.leaky_relu(x, 0.1)


_F = torch.nn.functional
_UNSATURATED = {torch.tanh: torch.asinh, torch.sigmoid: torch.asinh, _F.tanh: torch.asinh, _F.sigmoid: torch.asinh,
                _F.hardtanh: _leaky, _F.relu6: _leaky, _F.hardsigmoid: torch.asinh, _F.relu: _leaky, torch.relu: _leaky,
                **{op: torch.asinh for op in aten("tanh.default", "sigmoid.default", "hardsigmoid.default")},
                **{op: _leaky for op in aten("hardtanh.default", "relu6.default", "relu.default", "relu_.default")}}
_UNSATURATED_METHODS = {"tanh": torch.asinh, "sigmoid": torch.asinh, "relu": _leaky, "relu_": _leaky}
_UNSATURATED_MODULES = ((torch.nn.Tanh, torch.asinh), (torch.nn.Sigmoid, torch.asinh), (torch.nn.Hardsigmoid, torch.asinh),
                        (torch.nn.ReLU6, _leaky), (torch.nn.Hardtanh, _leaky), (torch.nn.ReLU, _leaky))


class _Values(fx.Interpreter):
    """The generic network's values at the nodes asked for."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted, self.values = wanted, {}

    def call_function(self, target, args, kwargs):
        try:
            stand_in = _UNSATURATED.get(target)
        except TypeError:  # unhashable target
            stand_in = None
        return stand_in(args[0]) if stand_in is not None else super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        stand_in = _UNSATURATED_METHODS.get(target)
        return stand_in(args[0]) if stand_in is not None else super().call_method(target, args, kwargs)

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        stand_in = next((fn for cls, fn in _UNSATURATED_MODULES if isinstance(module, cls)), None)
        return stand_in(args[0]) if stand_in is not None else super().call_module(target, args, kwargs)

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach()
        return out


def constant_values(traced, weights, masks, wanted: set[str]) -> dict[str, torch.Tensor]:
    """Values of the `wanted` nodes in a *generic* network with the pruning pattern of `masks`.

    Generic, not real: kept weights are random positive over their kept fan-in,
    other parameters random positive constants, norm scales one, batch norms
    identity, float inputs random positive (integer inputs such as token ids as
    given), all in float64. A column equal in every row there is equal for any
    values of the kept weights (a structural fact, such as a broadcast bias),
    never because the real weights happen to make a ReLU output zero everywhere.
    Float32 where the graph will not run in float64; an empty dict where it will
    not run at all (nothing is then declared dead).
    """
    # Some graphs fix float32 constants inside; the dtype that ran is remembered on the graph.
    dtypes = traced.gm.meta.get("generic_dtypes", (torch.float64, torch.float32))
    for dtype in dtypes:
        values = _generic_run(traced, weights, masks, wanted, dtype)
        if values is not None:
            traced.gm.meta["generic_dtypes"] = (dtype,)
            return values
    traced.gm.meta["generic_dtypes"] = ()
    return {}


def _generic_run(traced, weights, masks, wanted, dtype):
    from torch.nn.utils.stateless import _reparametrize_module

    g = torch.Generator().manual_seed(0)
    prunable = {w.name for w in weights}
    state = {}
    for name, p in traced.gm.named_parameters():
        if not p.is_floating_point():
            continue
        rand = torch.rand(p.shape, generator=g, dtype=dtype) + 0.5
        if name in prunable:
            keep = masks.keep(name).to(dtype)
            kept = keep.flatten(1).sum(1).clamp(min=1).view(-1, *[1] * (p.ndim - 1)) if p.ndim > 1 else 1.0
            state[name] = keep * rand / kept
        elif name.endswith("weight") and p.ndim == 1:
            state[name] = torch.ones(p.shape, dtype=dtype)
        else:
            state[name] = rand * _SCALE
    for name, b in traced.gm.named_buffers():
        if name.endswith("running_mean"):
            state[name] = torch.zeros(b.shape, dtype=dtype)
        elif name.endswith("running_var"):
            state[name] = torch.ones(b.shape, dtype=dtype)
        elif b.is_floating_point():
            state[name] = b.detach().to(dtype)
    inputs = [(torch.rand(x.shape, generator=g, dtype=dtype) + 0.5) * _SCALE
              if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in traced.example_inputs]
    runner = _Values(traced.gm, wanted)
    try:
        with torch.no_grad(), _reparametrize_module(traced.gm, state):
            runner.run(*inputs)
    except Exception:  # noqa: BLE001 - e.g. an op that insists on float32
        return None
    return runner.values


def uniform_dead_columns(live: torch.Tensor | None, values: torch.Tensor, rows: int = -2) -> torch.Tensor:
    """Bool, size 1 along `rows`: features that no live element reaches and whose constant is the
    same in every row (the average of such a column is that constant)."""
    tol = 1e-12 if values.dtype == torch.float64 else 1e-6
    same = torch.isclose(values.amax(rows, keepdim=True), values.amin(rows, keepdim=True), rtol=tol, atol=0)
    if live is None:
        return same
    dead = live.detach().sum(rows, keepdim=True) == 0
    return same & dead
