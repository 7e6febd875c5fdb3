"""Attention averages of constants: where a softmax-weighted sum cannot depend on the input.

`softmax(s) @ v` averages the rows of `v` with weights that sum to one. A
feature of `v` that no kept path reaches is a constant; if that constant is the
same in every row (a bias broadcast over the tokens), the average is that
constant whatever the weights: the output feature is dead although the
attention weights are live. If the rows differ (position embeddings, border
effects of padding), the average moves with the weights and stays live.
Telling the two apart needs the constants' values, so the values the rule
reads come from a generic network with the same pruning pattern
(`constant_values`), only for the `v` operands of such averages; one such run
serves every sparser level of the same Global MP ordering (`RowUniformity`),
so a model whose constants are all row-uniform (a LLaMA-style decoder) pays
for one run per report, not one per level. The common case needs no run at
all (`bias_only`): a value feature made by a linear layer whose weight line
for it is pruned whole is that layer's bias in every row, whatever reaches the
layer's input (a position table included); `RowUniformity.proven(..., masks)`
checks it from the masks' per-line maxima before any run.
"""
from __future__ import annotations

import operator
import zlib
from typing import NamedTuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from collapsekit.analysis.boolops import count_rows, flat_true
from collapsekit.analysis.heap import release_after, rows_per_block
from collapsekit.analysis.ops import DROPOUT_FUNCTIONS, DROPOUT_METHODS, SOFTMAX_FUNCTIONS, SOFTMAX_METHODS
from collapsekit.analysis.rules import UNHANDLED, aten, op_name

_SOFTMAX = {*SOFTMAX_FUNCTIONS, *SOFTMAX_METHODS}
# Ops between the softmax and the average that keep every row's sum at one.
_PASS = {"to", "type_as", "contiguous", "float", "clone", *DROPOUT_METHODS, *DROPOUT_FUNCTIONS,
         *aten("_to_copy.default", "to.dtype", "clone.default", "contiguous.default",
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


class _Deferred:
    """A parameter or buffer of the generic network, not yet made."""

    __slots__ = ("target", "real")

    def __init__(self, target: str, real: torch.Tensor):
        self.target, self.real = target, real


_BLOCK = 1 << 22  # generic weights drawn per block of rows

_EMBEDDINGS = {torch.nn.functional.embedding: (1, 0), **{op: (0, 1) for op in aten("embedding.default")}}


def _embedding_operands(target, args, kwargs) -> tuple[_Deferred, torch.Tensor] | None:
    """(weight, ids) of a plain embedding lookup whose weight is not made yet; None otherwise."""
    try:
        positions = _EMBEDDINGS.get(target)
    except TypeError:  # unhashable target
        return None
    if positions is None or kwargs.get("max_norm") is not None or len(args) < 2:
        return None
    weight, ids = args[positions[0]], args[positions[1]]
    if target is torch.nn.functional.embedding and len(args) > 3 and args[3] is not None:
        return None  # max_norm given by position
    ok = isinstance(weight, _Deferred) and isinstance(ids, torch.Tensor) and not ids.is_floating_point()
    return (weight, ids) if ok else None


_DTYPE_ASSERTS = set(aten("_assert_tensor_metadata.default"))


class _Generic(fx.Interpreter):
    """The generic network (see `constant_values`), run node by node: each parameter is made when
    its module or attribute is read and dropped after, so the run holds one layer's values at a time."""

    def __init__(self, traced, weights, masks, wanted: set[str], dtype):
        super().__init__(traced.gm, garbage_collect_values=True)
        self.masks, self.dtype, self.wanted, self.values = masks, dtype, wanted, {}
        self.canonical = {alias: w.name for w in weights for alias in (w.name, *w.aliases)}
        self.owned = {name for name, _ in traced.gm.named_parameters(remove_duplicate=False)} | {
            name for name, _ in traced.gm.named_buffers(remove_duplicate=False)}

    def generic(self, name: str, real: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Parameter or buffer `name` (qualified in the graph module) of the generic network; only
        its `rows` (sorted distinct indices along dim 0) when given, as an embedding lookup needs."""
        name = self.canonical.get(name, name)
        if isinstance(real, nn.Parameter) and real.is_floating_point() and real.ndim > 0:
            if name.endswith("weight") and real.ndim == 1 and name not in self.masks:
                shape = real.shape if rows is None else (rows.numel(), *real.shape[1:])
                return torch.ones(shape, dtype=self.dtype)
            return self._drawn(name, real, rows)
        out = self._constant(name, real)
        return out if rows is None else out[rows]

    def _drawn(self, name: str, real: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        # Drawn in float32 (2x faster than float64 draws, as generic), a block of rows at a time from
        # its own seed, so a lookup makes only the blocks it reads and no float32 copy exists whole.
        keep = self.masks.keep(name) if name in self.masks else None
        step = rows_per_block(real[0].numel(), _BLOCK)
        blocks = range(0, real.shape[0], step) if rows is None else sorted({int(r) // step * step for r in rows})
        if rows is None:  # filled in place: a list of blocks joined by cat would hold the weight twice
            out = torch.empty(real.shape, dtype=self.dtype)
        parts = []
        for start in blocks:
            g = torch.Generator().manual_seed(zlib.crc32(f"{name}:{start}".encode()))
            shape = (min(step, real.shape[0] - start), *real.shape[1:])
            if keep is None:
                block = torch.rand(shape, generator=g).add_(0.5).to(self.dtype).mul_(_SCALE)
            else:  # only the kept weights are drawn: at the sparse levels that need a run, a few per cent
                k = keep[start:start + step].reshape(shape[0], -1)
                where = flat_true(k)
                values = torch.rand(where.numel(), generator=g).add_(0.5).to(self.dtype)
                if real.ndim > 1:
                    values.div_(count_rows(k).clamp(min=1)[where // max(1, k.shape[1])])
                block = torch.zeros(shape, dtype=self.dtype)
                block.view(-1)[where] = values
            if rows is None:
                out[start:start + step] = block
            else:
                parts.append(block[rows[(rows >= start) & (rows < start + step)] - start])
        return out if rows is None else torch.cat(parts)

    def _constant(self, name: str, real: torch.Tensor) -> torch.Tensor:
        if isinstance(real, nn.Parameter) and real.is_floating_point():  # a scalar parameter
            return torch.full(real.shape, _SCALE, dtype=self.dtype)
        if name.endswith("running_mean"):
            return torch.zeros(real.shape, dtype=self.dtype)
        if name.endswith("running_var"):
            return torch.ones(real.shape, dtype=self.dtype)
        return real.detach().to(self.dtype) if real.is_floating_point() else real

    def lookup(self, weight: _Deferred, ids: torch.Tensor) -> torch.Tensor:
        """`F.embedding(ids, weight)` of the generic network, making only the rows looked up."""
        rows, where = torch.unique(ids, sorted=True, return_inverse=True)
        return self.generic(weight.target, weight.real, rows)[where]

    def get_attr(self, target, args, kwargs):
        real = super().get_attr(target, args, kwargs)
        if isinstance(real, torch.Tensor) and target in self.owned:
            return _Deferred(target, real)  # made where it is used: exported graphs read every weight first
        return real

    def fetch_args_kwargs_from_env(self, n):
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if n.op == "call_function" and _embedding_operands(n.target, args, kwargs) is not None:
            return args, kwargs  # the lookup makes only the rows it reads

        def made(v):
            if not isinstance(v, _Deferred):
                return v
            self.made += v.real.numel()
            return self.generic(v.target, v.real)

        return fx.node.map_aggregate(args, made), fx.node.map_aggregate(kwargs, made)

    def call_function(self, target, args, kwargs):
        lookup = _embedding_operands(target, args, kwargs)
        if lookup is not None:
            return self.lookup(*lookup)
        try:
            if target in _DTYPE_ASSERTS:
                return None  # export's check of the traced dtype; the generic run's float64 is meant
            stand_in = _UNSATURATED.get(target)
        except TypeError:  # unhashable target
            stand_in = None
        return stand_in(args[0]) if stand_in is not None else super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        stand_in = _UNSATURATED_METHODS.get(target)
        return stand_in(args[0]) if stand_in is not None else super().call_method(target, args, kwargs)

    def call_module(self, target, args, kwargs):
        from torch.nn.utils.stateless import _reparametrize_module

        module = self.fetch_attr(target)
        stand_in = next((fn for cls, fn in _UNSATURATED_MODULES if isinstance(module, cls)), None)
        if stand_in is not None:
            return stand_in(args[0])
        if type(module) is nn.Embedding and module.max_norm is None and len(args) == 1 and not kwargs:
            self.made += module.weight.numel()
            return self.lookup(_Deferred(f"{target}.weight", module.weight), args[0])
        state = {name: self.generic(f"{target}.{name}", t) for name, t in
                 [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]}
        self.made += sum(t.numel() for t in state.values())
        with _reparametrize_module(module, state):
            return super().call_module(target, args, kwargs)

    def run_node(self, n):
        self.node = n  # the node being run: the one listed if it fails
        self.made = 0  # elements of generic weights made for this node (call_module adds its own)
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach()
        release_after(self.made)
        if n.name in self.wanted and self.wanted <= self.values.keys():
            raise _Done  # nothing after the last wanted value matters (a language model's head, say)
        return out


class _Done(Exception):
    """Every wanted value is known: the generic run stops."""


def constant_values(traced, weights, masks, wanted: set[str], uniform_inputs: bool = False) -> dict[str, torch.Tensor]:
    """Values of the `wanted` nodes in a *generic* network with the pruning pattern of `masks`.

    Generic, not real: kept weights are random positive over their kept fan-in,
    other parameters random positive constants, norm scales one, batch norms
    identity, float inputs random positive (integer inputs such as token ids as
    given), all in float64. A column equal in every row there is equal for any
    values of the kept weights (a structural fact, such as a broadcast bias),
    never because the real weights happen to make a ReLU output zero everywhere.
    `uniform_inputs` makes every input one repeated value (see RowUniformity).
    Float32 where the graph will not run in float64; an empty dict where it will
    not run at all (nothing is then declared dead).
    """
    # Some graphs fix float32 constants inside; the dtype that ran is remembered on the graph.
    key = "generic_dtypes_uniform" if uniform_inputs else "generic_dtypes"
    dtypes = traced.gm.meta.get(key, (torch.float64, torch.float32))
    for dtype in dtypes:
        values = _generic_run(traced, weights, masks, wanted, dtype, uniform_inputs)
        if values is not None:
            traced.gm.meta[key] = (dtype,)
            return values
    traced.gm.meta[key] = ()
    return {}


def _generic_input(x, g: torch.Generator, dtype, uniform: bool):
    if not isinstance(x, torch.Tensor):
        return x
    if x.is_floating_point():
        if uniform:
            return torch.full(x.shape, (float(torch.rand((), generator=g)) + 0.5) * _SCALE, dtype=dtype)
        return (torch.rand(x.shape, generator=g, dtype=dtype) + 0.5) * _SCALE
    return torch.full_like(x, x.flatten()[0].item()) if uniform and x.numel() else x


def _generic_run(traced, weights, masks, wanted, dtype, uniform_inputs=False):
    g = torch.Generator().manual_seed(0)
    inputs = [_generic_input(x, g, dtype, uniform_inputs) for x in traced.example_inputs]
    runner = _Generic(traced, weights, masks, wanted, dtype)
    try:
        with torch.no_grad():
            runner.run(*inputs)
    except _Done:
        pass
    except Exception:  # noqa: BLE001 - e.g. an op that insists on float32
        # Invariant 10: nothing is declared dead through this run; the op that stopped it is listed.
        node = getattr(runner, "node", None)
        failed = {} if node is None else {op_name(node, runner): 1}
        traced.gm.meta.setdefault(UNHANDLED, {})["averages"] = failed
        return None
    traced.gm.meta.setdefault(UNHANDLED, {})["averages"] = {}
    return runner.values


def row_uniform(values: torch.Tensor, rows: int = -2) -> torch.Tensor:
    """Bool, size 1 along `rows`: features whose value is the same in every row."""
    tol = 1e-12 if values.dtype == torch.float64 else 1e-6
    return torch.isclose(values.amax(rows, keepdim=True), values.amin(rows, keepdim=True), rtol=tol, atol=0)


class RowUniformity:
    """Which dead features of the averaged operands are constants equal in every row, shared by
    every flow over one traced graph so that nested mask sets reuse one generic run.

    A generic run with every input one repeated value shows a feature equal in every
    row exactly when no row-varying constant (a position table, a padded border, a
    causal ramp) reaches it through kept weights. Pruning more only removes paths,
    so a feature so proven for one mask set stays so for every mask set that keeps a
    subset of its weights (Global MP's levels are nested, `pruned_counts`). A dead
    feature's value does not depend on the inputs at all, so the repeated inputs give
    it the same value as any others. Only dead features no nested run proves
    uniform cost a new run, at the mask set asked about.
    """

    KEEP = 16  # runs remembered

    def __init__(self, lines: dict[str, FeatureLines] | None = None):
        self.runs: list[tuple[np.ndarray, dict[str, torch.Tensor]]] = []  # (pruned counts, node -> row_uniform)
        self.lines = lines or {}  # averaged operand -> the weight lines its features come from (bias_only)

    @staticmethod
    def of(traced) -> RowUniformity:
        """The graph's own RowUniformity (created on first use; stored on gm.meta like shapes are)."""
        found = traced.gm.meta.get("collapsekit_row_uniform")
        if found is None:
            found = traced.gm.meta["collapsekit_row_uniform"] = RowUniformity(feature_lines(traced.gm))
        return found

    def proven(self, counts: np.ndarray, source: str, dead: torch.Tensor, masks=None) -> bool:
        """True if every `dead` feature is proven uniform: structurally (with `masks`: its weight line is
        pruned whole, `bias_only`), or by runs at mask sets keeping a superset of `counts`' weights."""
        covered = ~dead
        if masks is not None:
            bias = bias_only(self.lines.get(source), masks)
            if bias is not None and bias.shape == dead.shape:
                covered = covered | bias
                if bool(covered.all()):
                    return True
        for known, same in self.runs:
            value = same.get(source)
            if value is not None and value.shape == dead.shape and bool((known <= counts).all()):
                covered = covered | value
        return bool(covered.all())

    def record(self, counts: np.ndarray, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        same = {name: row_uniform(v) for name, v in values.items()}
        self.runs = [*self.runs[-(self.KEEP - 1):], (counts, same)]
        return same


# Ops that move a tensor's elements without mixing them (a head split, a q/k/v split) or cast them
# one by one: a value feature behind them is still one output feature of the layer before.
_LAYOUT_METHODS = {"view", "reshape", "permute", "transpose", "split", "chunk", "unflatten", "flatten", "unsqueeze",
                   "squeeze", "narrow", "expand", "contiguous", "__getitem__", "unbind"}
_LAYOUT_FUNCTIONS = {torch.reshape, torch.permute, torch.transpose, torch.split, torch.chunk, torch.flatten,
                     torch.unflatten, torch.unsqueeze, torch.squeeze, torch.narrow, torch.unbind, operator.getitem,
                     *aten("view.default", "_unsafe_view.default", "reshape.default", "permute.default",
                           "transpose.int", "split.Tensor", "split_with_sizes.default", "unsqueeze.default",
                           "squeeze.dim", "slice.Tensor", "select.int", "expand.default", "unbind.int")}


class FeatureLines(NamedTuple):
    """Where an averaged operand's features come from: line `index[..., f]` of prunable weight `weight`
    (its rows when `rows`, else its columns), the layer adding only a bias after it."""

    weight: str
    rows: bool
    index: torch.Tensor  # int64, the operand's shape with the row axis cut to 1


def feature_lines(gm: fx.GraphModule) -> dict[str, FeatureLines]:
    """{averaged operand: FeatureLines} for operands made from one linear layer by layout ops only."""
    found = {}
    for source in averaged_values(gm).values():
        lines = _feature_lines(gm, source)
        if lines is not None:
            found[source.name] = lines
    return found


def _feature_lines(gm: fx.GraphModule, source: fx.Node) -> FeatureLines | None:
    chain, node = [], source
    while _is_layout(node) or _key(node) in _PASS:
        chain.append(node)
        node = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node is None:
            return None
    producer = _linear_weight(gm, node)
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    if producer is None or not shape:
        return None
    weight, rows = producer
    # Run the layout ops on the producer's feature numbers: each value then says which line it came from.
    index = torch.arange(shape[-1]).expand(tuple(shape))
    values = {node: index}
    try:
        for step in reversed(chain):
            values[step] = _replay(step, values)
    except Exception:  # noqa: BLE001 - an op this replay cannot stand in for: no structural answer
        return None
    out = values[source]
    if not isinstance(out, torch.Tensor) or out.ndim < 2 or not bool((out.amax(-2) == out.amin(-2)).all()):
        return None  # a feature would gather several lines over the rows
    return FeatureLines(weight, rows, out[..., :1, :].clone())


def _is_layout(node) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method":
        return node.target in _LAYOUT_METHODS
    try:
        return node.op == "call_function" and node.target in _LAYOUT_FUNCTIONS
    except TypeError:  # unhashable target
        return False


def _replay(node: fx.Node, values: dict) -> object:
    """`node`'s op on the replayed value of its input; every other node argument is a plain value
    recorded at trace time (sizes, split sections). Casts and dropout keep the feature numbers."""
    if _key(node) in _PASS:
        return values[node.args[0]]

    def arg(a):
        if not isinstance(a, fx.Node):
            return a
        if a in values:
            return values[a]
        if "value" not in a.meta:
            raise ValueError(f"{a.name} has no recorded value")
        return a.meta["value"]

    args, kwargs = fx.node.map_arg(node.args, arg), fx.node.map_arg(node.kwargs, arg)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


_LINEAR = {torch.nn.functional.linear, *aten("linear.default")}
_ADDMM = {torch.addmm, *aten("addmm.default")}


def _linear_weight(gm: fx.GraphModule, node) -> tuple[str, bool] | None:
    """(weight, rows) of a linear layer computing `node`: output feature j is the weight's row j (nn.Linear,
    F.linear) or column j (addmm with the weight [in, out] as mat2, as Hugging Face's Conv1D computes)."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return (f"{node.target}.weight", True) if type(module) is nn.Linear else None
    if node.op != "call_function":
        return None
    try:
        kind = "linear" if node.target in _LINEAR else "addmm" if node.target in _ADDMM else None
    except TypeError:
        return None
    position = {"linear": 1, "addmm": 2}.get(kind)
    weight = node.args[position] if position is not None and len(node.args) > position else None
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return None
    return weight.target, kind == "linear"


def bias_only(lines: FeatureLines | None, masks) -> torch.Tensor | None:
    """Bool, the averaged operand's shape with the row axis cut to 1: features whose weight line the
    masks prune whole. Such a feature is the layer's bias (or zero) in every row whatever the input
    and whatever else is kept, so its average is that constant: no generic run needed. None when
    `lines` is None or the weight is not among the masks."""
    if lines is None or not hasattr(masks, "keep") or lines.weight not in masks:
        return None
    kept = masks.kept_lines(lines.weight) if hasattr(masks, "kept_lines") else None
    if kept is not None:
        kept = kept.rows if lines.rows else kept.cols
    else:
        keep = masks.keep(lines.weight)
        kept = keep.reshape(keep.shape[0], -1).any(1) if lines.rows else keep.any(0)
    return ~kept[lines.index]
