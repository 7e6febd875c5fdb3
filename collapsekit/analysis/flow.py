"""Structural channel flow: the interpreter that runs the transfer rules over the fx graph, and `run_flow`.

Every node's abstract value has the shape of its real value (batch of one) and
holds 1.0 where the element is reached by some kept path from the input and 0.0
where it is a constant of the masks alone (docs/design.md, structural death;
flow_values.py). Each op has a transfer rule (flow_rules.py) that keeps values
non-negative, so nothing cancels, and a `Boolean` step after every node resets
them to 0/1 (so nothing overflows either).

`Boolean`'s backward does the same to gradients, which makes one backward pass
from the output the "used" analysis: an element whose gradient is positive
feeds some kept path to the output, and a kept weight whose gradient is positive
lies on an input-to-output path (Vysogorets & Kempe's effective sparsity;
weighted layers run on their keep-masks in flow_layers.py).

`ChannelFlow` is a `rules.RuleInterpreter` over the one `RuleTable` of
flow_rules.py (docs/design.md, Style 1-2), like the sign and interval passes. Rules read the
module's name from the node being run (`flow.target`); nothing is written on
the modules, which the traced graph shares with the user's model (invariant 7).
Unknown ops get the conservative rule: the whole output is alive if any input
element is, so a prediction of death is never wrong (invariant 10).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from collapsekit.analysis.averages import RowUniformity, averaged_values, constant_values, row_uniform
from collapsekit.analysis.boolops import any_along, as_float, greater
from collapsekit.analysis.flow_layers import EffectiveWeights, LayerOnKeep, LazyKeep, SparseKeep, apply_keep, \
    dense_linear, transposed_record
from collapsekit.analysis.flow_rules import RULES
from collapsekit.analysis.flow_values import Constant, PrunableConstant, as_constant, boolean, constants_in, \
    has_constant, has_live, is_container, liveness, map_constants, moved_form, ones_like_meta, operand_form, \
    output_tensors, support, tree_boolean, tree_map_tensors, with_origin
from collapsekit.analysis.heap import release_after
from collapsekit.analysis.prunable import PrunableWeight
from collapsekit.analysis.rules import op_name as _op_name
from collapsekit.analysis.rules import Rule, RuleInterpreter
from collapsekit.analysis.threads import one_thread
from collapsekit.analysis.trace import TracedModel, aliases_of, mutates_first_operand
from collapsekit.errors import CollapsekitError


# -- the interpreter ---------------------------------------------------------------------
@dataclass(frozen=True)
class FlowResult:
    """Structural verdict at one set of masks (docs/design.md terms)."""

    collapsed: bool
    dead_channels: dict[str, list[int]]
    unused_channels: dict[str, list[int]]
    effective: np.ndarray | None  # kept weights on an input-to-output path, per prunable layer
    output_alive: float = 0.0  # fraction of output elements some kept path reaches
    conservative_ops: dict[str, int] = field(default_factory=dict)  # op -> nodes interpreted conservatively
    approximate: bool = False  # averages=False skipped a constant-average question: deaths may be missing


FLOW_META = "collapsekit_flow"  # node.meta key of the latest flow's per-node result


@dataclass(frozen=True)
class FlowMeta:
    """A node's forward liveness under the masks of the latest flow run on its graph."""

    live: int  # elements (channels, at channel level) some kept input path reaches
    size: int  # elements of the node's abstract value


class MaskSource(Protocol):
    """The keep-masks a flow runs on, by prunable weight name: `KeepList` (one bool mask per weight),
    `connectivity.LevelMasks` (one Global MP level, served lazily) or `cover.Cover`."""

    full_taps: bool  # convs join a channel pair only through taps full at every use (forward flows only)

    def __contains__(self, name: str) -> bool: ...

    def keep(self, name: str) -> torch.Tensor:
        """The bool keep-mask of weight `name`."""

    def channel_conn(self, name: str) -> torch.Tensor | None:
        """Bool [O, I/groups] channel connectivity of a conv applied as a module, or None (use `keep`)."""

    def kept_lines(self, name: str):
        """connectivity.KeptLines of a 2-D weight (which rows and columns keep a weight), or None."""

    def kept_count(self, name: str) -> int:
        """How many weights of `name` are kept."""

    def kept_positions(self, name: str) -> torch.Tensor | None:
        """Flat positions of the kept weights of 2-D `name` where it keeps few (flow_layers.SparseKeep), or None."""

    def effective_count(self, name: str, reached_pairs) -> int:
        """Kept weights of `name` on channel pairs `reached_pairs` (bool [O, I/groups] or EVERYWHERE)."""

    def pruned_counts(self) -> np.ndarray | None:
        """Weights pruned per layer where the masks are a Global MP level (nested levels compare), else None."""


class ChannelFlow(RuleInterpreter):
    """Runs the transfer rules over a traced graph for one set of keep-masks."""

    RULES = RULES
    PASS = "flow"  # the conservative rule's nodes are this pass's `unhandled` (Invariant 10)

    def __init__(self, traced: TracedModel, weights: list[PrunableWeight], masks: MaskSource, backward: bool,
                 channel_level: bool = False, cuts: dict[str, torch.Tensor] | None = None,
                 reached: dict[str, bool] | None = None, averages: bool = True, record: bool = False):
        super().__init__(traced.gm, garbage_collect_values=True)
        self.record = record  # keep each node's liveness count on the graph (FLOW_META)
        self.cuts = cuts or {}
        self.averages = averages  # False: dead features' averages are not asked about (see run_flow)
        self.skipped_averages = False
        self.traced = traced
        self.backward = backward
        self.channel_level = channel_level
        self.dtype = torch.float32  # of the liveness tensors
        self._canonical = {alias: w.name for w in weights for alias in (w.name, *w.aliases)}
        self.masks = masks
        self.effective = EffectiveWeights(reached)  # what the backward pass finds on input-output paths
        self.outputs_of: dict[str, list[torch.Tensor]] = {}  # prunable layer -> its outputs' liveness
        self._layer_of_module = {alias.rpartition(".")[0]: w.name for w in weights if w.kind in ("conv", "linear")
                                 for alias in (w.name, *w.aliases)}
        self._layer_names = set(self._layer_of_module.values())
        self.weights = weights
        self._averages = averaged_values(traced.gm)  # softmax averages: their rows' constants matter
        self._constants: dict[str, torch.Tensor] | None = None

    # helpers the rules call ------------------------------------------------------------
    def layer(self, name: str, tensor: torch.Tensor, x, op, channel_op=None, transposed: bool = False):
        """`op(x, w)` on the keep-mask of weight `name` (dense ones for a non-prunable one).

        At channel level, `channel_op(x, conn)` on the layer's channel connectivity
        replaces it where the masks offer one: spatially coarser (a channel live
        anywhere counts as live everywhere), hence sound, and far cheaper.
        `transposed`: a 2-D weight stored [in, out] and applied as `x @ w` (Hugging
        Face's Conv1D, exported as addmm/mm), run as `F.linear` on its transpose.
        """
        name = self._canonical.get(name, name)
        if name not in self.masks:
            if op is F.linear and len(tensor.shape) == 2 and isinstance(x, torch.Tensor):
                return dense_linear(x, tensor.shape[1] if transposed else tensor.shape[0])
            return op(x, torch.ones(tensor.shape, dtype=self.dtype))
        effective = self.effective
        effective.interpreted.add(name)
        effective.applied[name] = effective.applied.get(name, 0) + 1
        record, conn, lines = effective.record, None, None
        if self.channel_level and channel_op is not None:
            conn = self.masks.channel_conn(name)
        if conn is not None:
            keep, op, record = conn, channel_op, effective.record_pairs
            if self.masks.full_taps and x.ndim > 2:
                # Under-approximation (LevelMasks.full_taps_only): only a channel live at every position
                # counts, so through full taps each live channel stays live everywhere, as per element.
                x = x.amin(dim=tuple(range(2, x.ndim)), keepdim=True)
        else:
            positions = None
            if op is F.linear and len(tensor.shape) == 2:
                lines = self.masks.kept_lines(name)
                positions = self.masks.kept_positions(name)
            make = (lambda: self.masks.keep(name).t()) if transposed else (lambda: self.masks.keep(name))
            shape = tuple(tensor.shape)[::-1] if transposed else tuple(tensor.shape)
            if positions is not None:  # few kept: the flow's questions cost O(kept)
                keep = SparseKeep.of(positions, tuple(tensor.shape))
                keep = keep.t() if transposed else keep
            else:
                keep = LazyKeep(make, shape) if lines is not None else make()
            if transposed:  # as F.linear on w's transpose: rows and columns swap, and reached ones swap back
                lines = None if lines is None else type(lines)(lines.cols, lines.rows)
                record = transposed_record(effective.record, tuple(tensor.shape))
            if self.is_reduced(x):
                x = x.expand(self._arg_shape(x))
        if not (self.backward and torch.is_grad_enabled()):
            out = apply_keep(op, x, keep, lines)
        else:
            out = LayerOnKeep.apply(x, keep, op, lambda reached, kept: record(name, kept, reached), lines)
        del keep
        release_after(int(np.prod(tensor.shape)))
        return out

    def weight_of(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        name = self._canonical.get(name, name)
        if name not in self.masks:
            return torch.ones(tensor.shape, dtype=self.dtype)
        return as_float(self.masks.keep(name), self.dtype)

    def output_shape_of(self, value: torch.Tensor) -> tuple[int, ...]:
        """The real shape of an output value (channel-level values may be reduced)."""
        for node in self.traced.gm.graph.nodes:
            if node.op == "output":
                metas = []
                fx.node.map_aggregate(node.args, lambda a: metas.append(a.meta.get("tensor_meta"))
                                      if isinstance(a, fx.Node) else None)
                for meta in metas:
                    if hasattr(meta, "shape") and len(meta.shape) == value.ndim and all(
                            m == v or v == 1 for m, v in zip(meta.shape, value.shape)):
                        return tuple(meta.shape)
        return tuple(value.shape)

    def output_shape(self) -> torch.Size:
        return self.current_node.meta["tensor_meta"].shape

    def join(self, *operands):
        live = [x for x in operands if isinstance(x, torch.Tensor)]
        shapes = [tuple(x.shape) for x in live]
        if not live:
            return operands[0]
        out = None
        for x in live:
            out = x if out is None else out + x
        return out.expand(np.broadcast_shapes(*shapes)) if out.shape != np.broadcast_shapes(*shapes) else out

    def matmul(self, a, b):
        if isinstance(b, PrunableConstant) and not b.mask_made and isinstance(a, torch.Tensor) and b.real.ndim == 2:
            return self.layer(b.name, b.real, a, F.linear, transposed=True)  # a prunable [in, out] weight
        if isinstance(b, Constant) and isinstance(a, torch.Tensor):
            return torch.matmul(a, b.mask)
        if isinstance(a, Constant) and isinstance(b, torch.Tensor):
            return torch.matmul(a.mask, b)
        a_t, b_t = liveness(a), liveness(b)
        if a_t is None and b_t is None:
            return a
        # out[i, j] needs some live a[i, :] or some live b[:, j]; the +1 keeps each
        # term's support exactly that without ever cancelling.
        if a_t is None:
            return torch.matmul(torch.ones_like(support(a)), b_t)
        if b_t is None:
            return torch.matmul(a_t, torch.ones_like(support(b)))
        return torch.matmul(a_t, b_t + 1) + torch.matmul(a_t + 1, b_t)

    def constant_average(self, out, values):
        """`out` with the features dead that average a constant equal in every row (averages.py)."""
        source = self._averages.get(self.current_node.name)
        if source is None or not isinstance(out, torch.Tensor):
            return out
        live = liveness(values)
        if live is not None and bool((live > 0).all()):
            return out  # no dead feature to be constant: spares the generic network's run (O(weights))
        meta = source.meta.get("tensor_meta")
        shape = tuple(live.shape) if live is not None else tuple(getattr(meta, "shape", ()))
        if len(shape) < 2:
            return out
        dead = (live.detach().sum(-2, keepdim=True) == 0) if live is not None else torch.ones(
            (*shape[:-2], 1, shape[-1]), dtype=torch.bool)
        if not bool(dead.any()):
            return out  # dead elements, but no feature dead in every row: nothing can average a constant
        if not self.averages:
            self.skipped_averages = True
            return out
        constant = self._uniform_constants(source.name, dead)
        return out if constant is None else out * (~constant).to(out.dtype)

    def _uniform_constants(self, source: str, dead: torch.Tensor) -> torch.Tensor | None:
        """The `dead` features of averaged operand `source` whose constant is equal in every row, or None
        where the generic network cannot tell. Value-level flows (cuts) ask per mask set with the real
        inputs' pattern: a cut feature is constant only at the current weights, which no nested run covers."""
        counts = None if self.cuts else self.masks.pruned_counts()
        uniformity = RowUniformity.of(self.traced)
        if counts is not None and uniformity.proven(counts, source, dead, self.masks):
            return dead
        if self._constants is None:
            wanted = {n.name for n in self._averages.values()}
            values = constant_values(self.traced, self.weights, self.masks, wanted, uniform_inputs=counts is not None)
            self._constants = (uniformity.record(counts, values) if counts is not None
                               else {name: row_uniform(v) for name, v in values.items()})
        same = self._constants.get(source)
        if same is None or same.shape != dead.shape:
            return None
        return dead & same

    def window_any(self, x, kernel_size, stride, padding, dilation, ceil_mode):
        if self.is_reduced(x):
            return x
        nd = x.ndim - 2
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        dil = dilation if isinstance(dilation, (tuple, list)) else (dilation,) * nd
        if any(d != 1 for d in dil):
            return self._conservative_like(x, (x,))
        return pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad=True)

    def normalise_over(self, x, dims):
        """Softmax or normalisation over `dims`: every element live iff one of the mixed ones is;
        over a single element the result is a constant (softmax 1, a layer norm's bias)."""
        dims = tuple(range(x.ndim)) if dims is None else (dims,) if isinstance(dims, int) else tuple(dims)
        if all(x.shape[d] == 1 for d in dims) and not self.is_reduced(x):
            return torch.zeros_like(x)
        return self.any_over(x, dims, keepdim=True).expand_as(x)

    def group_mix(self, x, groups: int):
        """A group norm: every element live iff one of its group (channels x positions) is."""
        n = x.shape[0]
        mixed = x.reshape(n, groups, -1)
        if mixed.shape[-1] == 1:
            return torch.zeros_like(x)  # one element per group: a constant
        return mixed.sum(-1, keepdim=True).expand_as(mixed).reshape(x.shape)

    def any_over(self, x, dim=None, keepdim=False):
        if not isinstance(x, torch.Tensor):
            return x
        if dim is None:
            return x.sum() if not keepdim else x.sum(dim=tuple(range(x.ndim)), keepdim=True)
        return x.sum(dim=dim, keepdim=keepdim)

    def _conservative_like(self, example, inputs):
        total = sum(t.sum() for t in inputs if isinstance(t, torch.Tensor))
        return torch.ones_like(example) * total

    # the passes run_flow makes, and what it reads after them ---------------------------
    def forward(self) -> list[torch.Tensor]:
        """The liveness of the graph's output tensors (a forward pass over the example inputs' shapes).

        The input is the only leaf that needs a gradient: it makes every live
        element part of the autograd graph, and weights never need one."""
        return output_tensors(self.run(*self.traced.example_inputs))

    def outputs_reached(self, outs: list[torch.Tensor]) -> tuple[int, int]:
        """(output elements some kept path reaches, output elements in all; at least 1)."""
        reached = sum(int((o > 0).sum()) for o in outs)
        return reached, sum(int(np.prod(self.output_shape_of(o))) for o in outs) or 1

    def backward_from(self, outs: list[torch.Tensor]) -> None:
        """The usedness pass: a backward pass from every output element, recording effective weights."""
        for outs_of_layer in self.outputs_of.values():
            for o in outs_of_layer:
                if o.requires_grad:
                    o.retain_grad()
        seeds = [o for o in outs if o.requires_grad]
        if seeds:
            torch.autograd.backward(sum(o.sum() for o in seeds))  # a scalar seed: no sympy import
        self.effective.record_leaves(self.masks)

    def dead_and_unused_channels(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """({layer: dead output channels}, {layer: unused output channels}); the second only after
        `backward_from` (else empty)."""
        by_name = {w.name: w for w in self.weights}
        dead, unused = {}, {}
        for name, outs_of_layer in self.outputs_of.items():
            w = by_name[name]
            alive = used = None
            for o in outs_of_layer:
                dim = channel_dim(w, o)
                others = tuple(d for d in range(o.ndim) if d != dim)
                a = any_along(greater(o.detach(), 0), others) if others else greater(o.detach(), 0)
                alive = a if alive is None else alive | a
                if self.backward:
                    g = o.grad
                    u = any_along(greater(g, 0), others) if (g is not None and others) else (
                        greater(g, 0) if g is not None else torch.zeros_like(a))
                    used = u if used is None else used | u
            idx = torch.nonzero(~alive).flatten().tolist()
            if idx:
                dead[name] = idx
            if self.backward:
                idx = torch.nonzero(~used).flatten().tolist()
                if idx:
                    unused[name] = idx
        return dead, unused

    def effective_counts(self, collapsed: bool) -> np.ndarray:
        """int64 per prunable weight (in order): kept weights on an input-to-output path."""
        return np.array([self.effective.count(self.masks, w.name, collapsed) for w in self.weights], dtype=np.int64)

    def conservative_ops(self) -> dict[str, int]:
        """{op: nodes the conservative rule answered}, sorted by op."""
        return {op: len(nodes) for op, nodes in sorted(self.unhandled.items())}

    def release(self) -> None:
        """Drops the flow's tensors: the autograd graph refers back to the flow (through LayerOnKeep's
        record callbacks), and the cycle must not outlive the call."""
        self.outputs_of.clear()
        self.env.clear()
        self.effective.leaves.clear()

    # fx.Interpreter hooks --------------------------------------------------------------
    # The flow's values are liveness tensors and Constants, not the sign/interval passes' `Abstract`
    # operands: inputs and attributes are read as fx reads them and given the flow's own values.
    def placeholder(self, target, args, kwargs):
        real = fx.Interpreter.placeholder(self, target, args, kwargs)
        if not isinstance(real, torch.Tensor):
            return real
        return torch.ones(real.shape, dtype=self.dtype).requires_grad_(self.backward)

    def get_attr(self, target, args, kwargs):
        real = fx.Interpreter.get_attr(self, target, args, kwargs)
        if not isinstance(real, torch.Tensor):
            return real
        name = self._canonical.get(target)
        if name is not None:
            self.effective.interpreted.add(name)
            if name in self.masks:
                return PrunableConstant(lambda: self.attr_keep_leaf(target, name, real), name, real)
        return Constant(self.attr_keep_leaf(target, name, real), name, real.detach())

    def attr_keep_leaf(self, target: str, name: str | None, real: torch.Tensor) -> torch.Tensor:
        """The float 0/1 mask of a weight read through get_attr; its gradient records reached positions.
        A tensor that is not pruned (an embedding table, a position table) is all ones: a broadcast
        view, not a table-sized tensor per flow, and nothing records its gradient."""
        if name is None:
            return torch.ones((), dtype=self.dtype).expand(real.shape)
        mask = self.weight_of(target, real).requires_grad_(self.backward and torch.is_grad_enabled())
        if name is not None and mask.requires_grad:
            self.effective.add_leaf(name, mask)
        return mask

    def is_reduced(self, x) -> bool:
        """A channel-level value kept at size 1 in its spatial dims (see ChannelConv)."""
        return self.channel_level and isinstance(x, torch.Tensor) and x.ndim > 2 and all(d == 1 for d in x.shape[2:])\
            and x.shape != self._arg_shape(x)

    def _arg_shape(self, x):
        for arg in self.current_node.all_input_nodes:
            if self.env.get(arg) is x:
                meta = arg.meta.get("tensor_meta")
                return getattr(meta, "shape", None)
        return None

    def _expand_args(self, reduced_ok: bool, args, kwargs):
        # Reduced values broadcast through the rules that only broadcast; any
        # other rule gets them at their real shape.
        if not self.channel_level or reduced_ok:
            return args, kwargs
        node = self.current_node
        shapes = {}
        for arg in node.all_input_nodes:
            meta = arg.meta.get("tensor_meta")
            if hasattr(meta, "shape"):
                shapes[id(self.env[arg])] = meta.shape

        def widen(v):
            if isinstance(v, torch.Tensor) and id(v) in shapes and v.shape != shapes[id(v)]:
                return v.expand(shapes[id(v)])
            return v

        return fx.node.map_aggregate(args, widen), fx.node.map_aggregate(kwargs, widen)

    def _apply_rule(self, rule: Rule | None, lead: tuple, args, kwargs):
        """The node's abstract value (RuleInterpreter's dispatch calls this), recorded as its
        layer's output where the node applies a prunable conv or linear."""
        out = self._rule_value(rule, lead, args, kwargs)
        if isinstance(out, torch.Tensor):
            layer = self._layer_applied(rule, args)
            if layer is not None:
                self.outputs_of.setdefault(layer, []).append(out)
        return out

    def _layer_applied(self, rule: Rule | None, args) -> str | None:
        """The prunable layer the running node applies: a conv/linear module, or a weighted function
        on its weight (torch.export graphs, weights transformed in forward); else None."""
        node = self.current_node
        if node.op == "call_module":
            return self._layer_of_module.get(node.target)
        if rule is not None and rule.weighted and len(args) > 1 and isinstance(args[1], Constant):
            layer = args[1].name or args[1].origin
            return layer if layer in self._layer_names else None
        return None

    def _rule_value(self, rule: Rule | None, lead: tuple, args, kwargs):
        """The node's abstract value by its rule (`lead`: operands before the node's own,
        the module for module rules); over constants alone, the op itself on their witnesses;
        by the conservative fallback where there is no rule or the rule cannot handle the node."""
        if not has_live((args, kwargs)) and not (rule is not None and rule.rearranges and has_constant(args)):
            return self._constant(rule, lead, args, kwargs)
        if rule is None:
            return self._conservative(args, kwargs)
        args, kwargs = self._expand_args(rule.reduced_ok, args, kwargs)
        if rule.passes_target:
            lead = (self.current_node.target, *lead)
        try:
            out = rule.fn(self, *lead, *args, **kwargs)
        except Exception:  # noqa: BLE001 - a rule that cannot read this node loses precision, never soundness
            return self._conservative(args, kwargs)
        # Every other node's value is reset to 0/1, so a binary rule's already is (forward); backward, its
        # operand's own reset follows (autograd sums only positive counts on the way: positivity is kept).
        return out if rule.binary else tree_boolean(out)

    def _conservative(self, args, kwargs):
        """Every output element live iff any input element is, in the node's recorded shape.
        Containers (dataclasses, named tuples, dicts) are built as they are."""
        node = self.current_node
        if node.op == "call_function" and is_container(node.target):
            return node.target(*args, **kwargs)
        self.unhandled.setdefault(_op_name(node, self), set()).add(node.name)
        args, kwargs = self._expand_args(False, args, kwargs)
        return tree_boolean(self._fallback(node, args, kwargs))

    def _constant(self, rule: Rule | None, lead: tuple, args, kwargs):
        """A node over constants alone is a constant: the op itself on the witnesses gives its
        value and where it is non-zero; an unknown witness or a failing op gives a dense constant."""
        node = self.current_node
        operands = constants_in((args, kwargs))
        names = {w.name or w.origin for w in operands} - {None}
        origin = next(iter(names)) if len(names) == 1 else None
        witness = map_constants((args, kwargs), Constant.witness)
        if witness is not None and mutates_first_operand(node):  # never write into the model's own tensors
            witness = fx.node.map_aggregate(witness, lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
        try:
            if witness is None:
                raise ValueError("a constant of unknown value")
            if node.op == "call_module":
                out = self._module_on_constants(node.target, *witness[0], **witness[1])
            elif node.op == "call_method":
                obj, *rest = witness[0]
                out = getattr(obj, node.target)(*rest, **witness[1])
            else:
                out = node.target(*witness[0], **witness[1])
        except Exception:  # noqa: BLE001 - unknown values: every entry may be non-zero
            if names:
                self.effective.transformed |= names
            return with_origin(self._dense_constant(node), origin)
        layer = self._layer_of_module.get(node.target) if node.op == "call_module" else None
        if layer is None and rule is not None and rule.weighted and len(args) > 1 and isinstance(args[1], Constant):
            layer = args[1].name if args[1].name in self._layer_names else None
        if layer is not None:
            # A layer applied to constants: its output is constant (dead), its weights on no input path.
            self.effective.interpreted.add(layer)
            for o in output_tensors(out)[:1]:
                self.outputs_of.setdefault(layer, []).append(torch.zeros(o.shape, dtype=self.dtype))
        elif names:
            self.effective.transformed |= names  # a prunable weight changed before use: its paths are not tracked
        return with_origin(as_constant(out, self.dtype), origin)

    def _module_on_constants(self, target: str, *args, **kwargs):
        # The module's own forward with its prunable weights masked; the module is restored after.
        from torch.nn.utils.stateless import _reparametrize_module

        module = self.fetch_attr(target)
        state = {}
        for pname, p in module.named_parameters():
            name = self._canonical.get(f"{target}.{pname}")
            if name is not None and name in self.masks:
                state[pname] = Constant(self.masks.keep(name).to(p.dtype), name, p.detach()).witness()
        with _reparametrize_module(module, state):
            return module(*args, **kwargs)

    def _dense_constant(self, node: fx.Node):
        meta = node.meta.get("tensor_meta", node.meta.get("val"))
        return as_constant(ones_like_meta(meta, torch.ones(()), self.dtype), self.dtype, known=False)

    def run_node(self, n):
        if n.op.startswith("call_") and "value" in n.meta:
            return n.meta["value"]  # sizes, comparisons, python scalars: concrete (trace recorded them)
        inplace = mutates_first_operand(n)
        if n.op.startswith("call_") and not n.users and not inplace:
            return None  # side-effect-only nodes (export's guards) carry no data
        out = super().run_node(n)  # RuleInterpreter's: sets current_node, dispatches to the rule
        if inplace and isinstance(out, (torch.Tensor, Constant)):
            for alias, whole in aliases_of(n):  # later readers of the mutated tensor see the new value
                before = self.env.get(alias)
                if whole:
                    self.env[alias] = out
                elif isinstance(before, torch.Tensor) and isinstance(out, torch.Tensor):
                    # Written through a view: elements are not tracked back to the base, so the
                    # whole base is live where the written part may be (coarse, sound).
                    self.env[alias] = boolean(before + out.sum())
        cut = self.cuts.get(n.name)
        if cut is not None and isinstance(out, torch.Tensor):
            out = out * cut  # value level: elements proven constant at these weights
        if self.record and isinstance(out, torch.Tensor) and out.is_floating_point():
            # Per-node result on the analysis's own graph, as ShapeProp stores tensor_meta: how many of
            # this node's elements a kept input path reaches, under the masks of this (latest) flow.
            n.meta[FLOW_META] = FlowMeta(int(torch.count_nonzero(out.detach() > 0)), out.numel())
        else:
            n.meta.pop(FLOW_META, None)  # never an earlier flow's count
        return out

    def apply_real(self, fn, args, kwargs):
        """`fn` itself on the abstract values of a rearranging op. Over constants alone it moves
        their masks (and witnesses) as it moves elements; next to live values a float constant is
        dead (zeros) and an integer or bool one is an index or selector, read at its real value."""
        if not has_live((args, kwargs)):
            a, k = map_constants((args, kwargs), moved_form)
            out = fn(*a, **k)
            witness = map_constants((args, kwargs), Constant.witness)
            real = fn(*witness[0], **witness[1]) if witness is not None else None
            names = {w.name or w.origin for w in constants_in((args, kwargs))} - {None}
            if isinstance(out, torch.Tensor):
                return Constant(out, None, real if isinstance(real, torch.Tensor) else None,
                              next(iter(names)) if len(names) == 1 else None)
            return out
        a, k = map_constants((args, kwargs), operand_form)
        return fn(*a, **k)

    def _fallback(self, node: fx.Node, args, kwargs):
        flat = []
        fx.node.map_aggregate((args, kwargs), lambda v: flat.append(v) if isinstance(v, torch.Tensor) else None)
        total = sum(t.sum() for t in flat) if flat else torch.zeros(())
        structure = self._structure(node, args, kwargs)
        if structure is not None:  # the op's own output type (a named tuple such as sort's values/indices)
            return tree_map_tensors(structure, lambda t: torch.ones(t.shape, dtype=self.dtype) * total)
        meta = node.meta.get("tensor_meta", node.meta.get("val"))
        if meta is None:
            raise CollapsekitError(f"no transfer rule and no recorded shape for node {node.name} ({node.target})")
        return ones_like_meta(meta, total, self.dtype)

    def _structure(self, node: fx.Node, args, kwargs):
        """The op run on the abstract values, for the type and shapes of its output only; None if it fails."""
        if node.op not in ("call_function", "call_method") or mutates_first_operand(node):
            return None
        a, k = map_constants((args, kwargs), operand_form)
        try:
            if node.op == "call_method":
                return getattr(a[0], node.target)(*a[1:], **k)
            return node.target(*a, **k)
        except Exception:  # noqa: BLE001 - then the recorded shapes say it
            return None


def channel_dim(weight: PrunableWeight, out: torch.Tensor) -> int:
    """The output-channel (feature) axis of a layer's output tensor."""
    return 1 if weight.kind == "conv" else out.ndim - 1


class KeepList:
    """Masks given as one bool keep-mask per prunable weight (no channel connectivity): a MaskSource."""

    full_taps = False

    def __init__(self, weights: list[PrunableWeight], keep: list[torch.Tensor]):
        self._keep = {w.name: k for w, k in zip(weights, keep)}

    def __contains__(self, name):
        return name in self._keep

    def keep(self, name: str) -> torch.Tensor:
        return self._keep[name]

    def channel_conn(self, name: str):
        return None

    def kept_lines(self, name: str):
        return None

    def kept_count(self, name: str) -> int:
        return int(torch.count_nonzero(self._keep[name]))

    def kept_positions(self, name: str):
        return None  # the masks are given whole

    def effective_count(self, name, reached_pairs):  # pragma: no cover - never asked without conn
        raise NotImplementedError

    def pruned_counts(self):
        return None


def run_flow(traced: TracedModel, weights: list[PrunableWeight], masks, backward: bool = True,
             channel_level: bool = False, cuts: dict[str, torch.Tensor] | None = None,
             reached: dict | None = None, unused: dict[str, list[int]] | None = None,
             averages: bool = True, record: bool = False) -> FlowResult:
    """The structural verdict for `masks`: a list of bool keep-masks (one per prunable weight,
    in order) or a MaskSource such as `connectivity.LevelMasks`.

    `cuts` (node name -> 0/1 mask, from `values.relu_cuts`) makes it a value-level
    flow: those elements count as constant although kept paths reach them.

    `reached`, where given, is filled with whether some use of each layer reached
    every weight position (backward only; cover.py).

    `unused`: these masks' unused channels where the caller knows them (Analysis.report:
    a collapsed denser level whose unused channels already equal the sparsest masks'
    ones, usedness only shrinking with the masks); no backward pass runs, and as
    the masks must then collapse, every effective count is 0. Should they not
    collapse, the flow runs again with its backward pass.

    `averages=False` never asks whether a dead value feature averages a constant (a
    generic network's run, averages.py): the result can only be more alive than the
    exact one, and says so (`approximate`) where such a question came up. Its deaths
    and collapse are then real; its life is proven only where it is not approximate.

    `record` keeps, per node of the analysis's graph, how many of its elements a kept
    input path reaches (`node.meta[FLOW_META]`; `Analysis.flow` asks for it, a report's
    own flows do not: it is a count per node).

    Element level (default) is exact: liveness per activation element. Channel
    level treats a channel live anywhere as live everywhere, which can only keep
    more alive, so its deaths are real; it is exact unless a map shrinks to a few
    pixels that sparse off-centre taps cannot see.
    """
    with one_thread():  # thousands of small ops: no faster on two threads, far slower on a busy machine
        return _run_flow(traced, weights, masks, backward, channel_level, cuts, reached, unused, averages, record)


def _run_flow(traced, weights, masks, backward, channel_level, cuts, reached, unused, averages,
              record=False) -> FlowResult:
    if isinstance(masks, (list, tuple)):
        masks = KeepList(weights, list(masks))
    known = backward and unused is not None
    backward = backward and not known
    flow = ChannelFlow(traced, weights, masks, backward, channel_level, cuts, reached, averages, record)
    with torch.set_grad_enabled(backward):
        outs = flow.forward()
        reached_count, size = flow.outputs_reached(outs)
        collapsed = reached_count == 0
        if known and not collapsed:  # the caller's premise fails: never trust it, run the backward pass
            flow.release()
            return _run_flow(traced, weights, masks, True, channel_level, cuts, reached, None, averages, record)
        if backward:
            flow.backward_from(outs)
    dead, found = flow.dead_and_unused_channels()
    if known:
        found = {name: list(idx) for name, idx in unused.items()}
    effective = flow.effective_counts(collapsed) if backward or known else None
    conservative = flow.conservative_ops()
    flow.release()
    return FlowResult(collapsed, dead, found, effective, min(1.0, reached_count / size), conservative,
                      flow.skipped_averages)


def collapses(traced: TracedModel, weights: list[PrunableWeight], masks, channel_level: bool = False) -> bool:
    """Whether `masks` leave no kept input-to-output path: a forward flow that asks no constant-average
    question first (its collapse is real), the exact one only where it stays alive and skipped one."""
    first = run_flow(traced, weights, masks, backward=False, channel_level=channel_level, averages=False)
    if first.collapsed or not first.approximate:
        return first.collapsed
    return run_flow(traced, weights, masks, backward=False, channel_level=channel_level).collapsed
