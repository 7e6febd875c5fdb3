"""Compacting: remove dead and unused channels from a masked model, giving a smaller dense module (Invariant 5).

The fx graph is split into channel groups: a conv/linear layer starts a group
with its output channels, and per-channel ops (batch norm, depthwise conv,
activations, pooling, flatten) and residual adds keep their operands' group, so
every tensor coupled through an add shares one set of channel indices. A
channel of a group is removed from every tensor of the group at once when either

- it is unused (flow.run_flow: no kept weight downstream reads it, on every
  layer of the group), so no output depends on it; or
- it is dead wherever a layer outside the group reads it (the structural flow
  proves the value input-independent), and the constant's contribution to each
  reading layer is the same at every output position, so it folds exactly into
  that layer's bias. The constant is taken from a forward pass of the masked
  model (any input gives the same); a 3x3 zero-padded conv reading a non-zero
  constant sees different sums at the borders, and then the channel stays.

Groups that reach the model's input or output, or an op that may depend on the
channel count (grouped conv, reshapes with literal sizes, indexing), are pinned:
kept whole, which is always correct. Ops with no rule raise CollapsekitError.
One `rules.RuleTable` (ROLES) holds per module type a `LayerHandler`, which says
how it reads channels and how it is rebuilt, and per function or method a role
rule; op kinds come from analysis/ops.py; the channel groups are a networkx
UnionFind.
Outputs equal the masked model's in eval mode (batch norm with running stats).
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from networkx.utils import UnionFind

from collapsekit.errors import CollapsekitError
from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.ops import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES, \
    ADAPTIVE_MAX_POOL_FUNCTIONS, ARITHMETIC_FUNCTIONS, ARITHMETIC_METHODS, AVG_POOL_FUNCTIONS, BATCH_NORM_MODULES, \
    CONV_MODULES, DROPOUT_FUNCTIONS, DROPOUT_MODULES, LOG_SOFTMAX_FUNCTIONS, LOG_SOFTMAX_METHODS, \
    LOG_SOFTMAX_MODULES, MAX_POOL_FUNCTIONS, POOL_MODULES, SOFTMAX_FUNCTIONS, SOFTMAX_METHODS, SOFTMAX_MODULES
from collapsekit.analysis.prunable import find_prunable
from collapsekit.analysis.rules import RuleTable
from collapsekit.pruning.prune import apply_masks, check_masks
from collapsekit.analysis.trace import TracedModel, trace
from collapsekit.analysis.analysis import Analysis

# -- roles of nodes ----------------------------------------------------------------------------
LAYER, CHANNELWISE, PASSTHROUGH, JOIN, FLATTEN, PIN, SCALAR = (
    "layer", "channelwise", "passthrough", "join", "flatten", "pin", "scalar")


class LayerHandler:
    """How compaction reads and rebuilds one module type (docs/design.md, Style 2: Torch-Pruning's per-type pruners).

    `role` says how the module treats channels at a node: LAYER starts a channel
    group with its output channels, CHANNELWISE maps channel c to channel c with
    per-channel state, PASSTHROUGH has no state, FLATTEN folds spatial dims into
    features, PIN may depend on the channel count (its operands are kept whole).
    """

    weighted = False  # holds a prunable weight whose dead channels the flow reports

    def __init__(self, role: str | None = None):
        self.fixed_role = role

    def role(self, module: nn.Module, node: fx.Node) -> str:
        return self.fixed_role

    def resize(self, new: nn.Module, out_channels: int, in_channels: int) -> None:
        """Updates a rebuilt module's channel counts after its tensors were sliced."""
        raise NotImplementedError(type(new).__name__)

    def rebuild_layer(self, module: nn.Module, out_idx, in_idx, fold) -> nn.Module:
        """A copy of a LAYER module keeping output channels `out_idx` and input features `in_idx`
        (None: all), with `fold` (float64) added to its bias."""
        new = _slice_layer(module, out_idx, in_idx, fold)
        self.resize(new, new.weight.shape[0], new.weight.shape[1] * getattr(module, "groups", 1))
        return new

    def rebuild_channels(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        """A copy of a CHANNELWISE module keeping channels `idx` of every per-channel tensor."""
        new = _slice_channels(module, idx)
        self.resize(new, int(idx.numel()), int(idx.numel()))
        return new


class _Conv(LayerHandler):
    weighted = True

    def role(self, module, node):
        if module.groups == 1:
            return LAYER
        if module.groups == module.in_channels == module.out_channels:
            return CHANNELWISE  # depthwise: output channel c reads input channel c only
        return PIN

    def resize(self, new, out_channels, in_channels):
        if new.groups > 1:  # depthwise, sliced channel by channel
            new.in_channels = new.out_channels = new.groups = out_channels
        else:
            new.out_channels, new.in_channels = out_channels, in_channels

    def contribution(self, module, w64: torch.Tensor, value: torch.Tensor, channel: int, factor: int):
        """The bias gained from constant input `channel`, or None where zero padding makes it position-dependent."""
        x = value[channel].double()[None, None]
        out = module._conv_forward(x, w64[:, channel:channel + 1], None)[0]
        flat = out.reshape(out.shape[0], -1)
        spread = (flat - flat[:, :1]).abs().max()
        if spread > 1e-10 * flat.abs().max() + 1e-300:
            return None  # zero padding makes the border sums differ: the channel stays
        return flat[:, 0]


class _Linear(LayerHandler):
    weighted = True

    def role(self, module, node):
        x = _meta_shape(node.args[0]) if node.args else None
        return LAYER if x is not None and len(x) == 2 else PIN

    def resize(self, new, out_channels, in_channels):
        new.out_features, new.in_features = out_channels, in_channels

    def contribution(self, module, w64, value, channel, factor):
        """The bias gained from constant input `channel` (its `factor` flattened features)."""
        cols = slice(channel * factor, (channel + 1) * factor)
        return w64[:, cols] @ value.reshape(-1)[cols].double()


class _BatchNorm(LayerHandler):
    def role(self, module, node):
        return CHANNELWISE

    def resize(self, new, out_channels, in_channels):
        new.num_features = out_channels


class _Flatten(LayerHandler):
    def role(self, module, node):
        return FLATTEN if module.start_dim == 1 and module.end_dim == -1 else PIN


# Module types: a LayerHandler each; functions and tensor methods: rule(node) -> role. One rules.RuleTable.
ROLES = RuleTable()
HANDLERS = ROLES.modules  # module type -> Rule whose fn is the LayerHandler


def register(handler: LayerHandler, *types: type) -> None:
    """Files `handler` under each module type (subclasses inherit it)."""
    ROLES.module(*types)(handler)


def handler_for(module: nn.Module) -> LayerHandler | None:
    rule = ROLES.for_module(module)
    return rule.fn if rule is not None else None


register(_Conv(), *CONV_MODULES)
register(_Linear(), nn.Linear)
register(_BatchNorm(), *BATCH_NORM_MODULES)
register(_Flatten(), nn.Flatten)
register(LayerHandler(PASSTHROUGH), *ACTIVATION_MODULES, nn.Identity, *DROPOUT_MODULES, *POOL_MODULES)
register(LayerHandler(PIN), nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.Unflatten,
         *SOFTMAX_MODULES, *LOG_SOFTMAX_MODULES)


def _fixed(role: str):
    return lambda node: role


ROLES.function(*ACTIVATION_FUNCTIONS, *DROPOUT_FUNCTIONS, *MAX_POOL_FUNCTIONS, *AVG_POOL_FUNCTIONS,
               *ADAPTIVE_MAX_POOL_FUNCTIONS)(_fixed(PASSTHROUGH))
ROLES.function(*ARITHMETIC_FUNCTIONS)(_fixed(JOIN))
# Ops that may select or count channels: kept whole, never an error. `getattr` is
# x.shape: whatever uses it sees the group's channel count unchanged.
ROLES.function(torch.cat, torch.concat, torch.stack, torch.chunk, torch.split, torch.reshape, torch.permute,
               torch.transpose, torch.squeeze, torch.unsqueeze, torch.channel_shuffle, F.interpolate, F.pad,
               torch.mean, torch.sum, *SOFTMAX_FUNCTIONS, *LOG_SOFTMAX_FUNCTIONS, getattr)(_fixed(PIN))
ROLES.method(*ACTIVATION_METHODS, "contiguous", "clone", "detach")(_fixed(PASSTHROUGH))
ROLES.method(*ARITHMETIC_METHODS)(_fixed(JOIN))
ROLES.method("permute", "transpose", "unsqueeze", "squeeze", "chunk", "split", "expand", "mean", "sum",
             *SOFTMAX_METHODS, *LOG_SOFTMAX_METHODS, "__getitem__")(_fixed(PIN))


@ROLES.function(torch.flatten)
def _flatten_function(node):
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return FLATTEN if (start, end) == (1, -1) else PIN


@ROLES.function(operator.getitem)
def _getitem(node):
    if not isinstance(node.args[0], fx.Node) or _meta_shape(node.args[0]) is None:
        return SCALAR  # indexing a torch.Size or tuple
    return PIN


@ROLES.method("size", "dim")
def _size(node):
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return SCALAR if (node.target == "dim" or dim == 0) else PIN


@ROLES.method("view", "reshape", "flatten")
def _reshape(node):
    return FLATTEN if _is_flatten_call(node) else PIN


def _role(node: fx.Node, module: nn.Module | None) -> str | None:
    """The node's role, or None where compaction has no rule for its op."""
    rule = ROLES.for_node(node, module)
    if rule is None:
        return None
    return rule.fn.role(module, node) if module is not None else rule.fn(node)


def _is_flatten_call(node: fx.Node) -> bool:
    """x.view(x.size(0), -1), x.reshape(b, -1), x.flatten(1): batch kept, everything else flattened."""
    if node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1 and len(node.args) <= 2
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = tuple(rest[0])
    if len(rest) != 2 or rest[1] != -1:
        return False
    batch = rest[0]
    return isinstance(batch, fx.Node) and batch.op == "call_method" and batch.target == "size"


def _meta_shape(arg):
    if not isinstance(arg, fx.Node):
        return None
    meta = arg.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


# -- the plan: channel groups over the graph --------------------------------------------------
@dataclass
class _Plan:
    groups: UnionFind = field(default_factory=UnionFind)  # channel groups coupled through joins
    channels: dict[int, int] = field(default_factory=dict)  # group id -> channel count
    pinned: set[int] = field(default_factory=set)  # roots of groups kept whole
    of: dict[fx.Node, tuple[int, int]] = field(default_factory=dict)  # node -> (group, factor)
    layers: list[tuple[fx.Node, nn.Module]] = field(default_factory=list)
    channelwise: list[tuple[fx.Node, nn.Module]] = field(default_factory=list)
    role: dict[fx.Node, str] = field(default_factory=dict)
    inputs: dict[fx.Node, list[fx.Node]] = field(default_factory=dict)

    def new(self, channels: int, pinned: bool = False) -> int:
        gid = len(self.channels)
        self.channels[gid] = channels
        self.groups.union(gid)  # a singleton set
        if pinned:
            self.pinned.add(gid)
        return gid

    def find(self, gid: int) -> int:
        return self.groups[gid]

    def union(self, a: int, b: int) -> int:
        pinned = self.is_pinned(a) or self.is_pinned(b)
        self.groups.union(a, b)
        root = self.find(a)
        if pinned:
            self.pinned.add(root)
        return root

    def roots(self) -> list[int]:
        return sorted({self.find(g) for g in self.channels})

    def group(self, node: fx.Node) -> int:
        return self.find(self.of[node][0])

    def factor(self, node: fx.Node) -> int:
        return self.of[node][1]

    def is_pinned(self, gid: int) -> bool:
        return self.find(gid) in self.pinned

    def pin(self, node) -> None:
        if isinstance(node, fx.Node) and node in self.of:
            self.pinned.add(self.group(node))


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if _meta_shape(n) is not None else None)
    return list(dict.fromkeys(found))


def _plan(gm: fx.GraphModule) -> _Plan:
    plan = _Plan()
    unsupported: list[str] = []
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in gm.graph.nodes:
        shape = _meta_shape(node)
        inputs = _tensor_args(node)
        if node.op == "placeholder":
            if shape is not None:
                plan.of[node] = (plan.new(shape[1] if len(shape) > 1 else 1, pinned=True), 1)
            continue
        if node.op == "output":
            for n in inputs:
                plan.pin(n)
            continue
        if node.op == "get_attr":
            unsupported.append(f"get_attr {node.target}")
            continue
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        role = _role(node, module)
        if module is not None:
            has_state = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
            if role is not None and has_state and calls[node.target] > 1:
                unsupported.append(f"{node.target} ({type(module).__name__}) called {calls[node.target]} times")
                continue
        if role is None:
            what = type(module).__name__ if module is not None else getattr(node.target, "__name__", node.target)
            unsupported.append(f"{node.name} ({what})")
            continue
        if role == SCALAR or (shape is None and role != PIN):
            continue
        if any(n not in plan.of for n in inputs):
            role = PIN  # reads a tensor we could not group (e.g. a pinned op's scalar)
        channels = shape[1] if shape is not None and len(shape) > 1 else 1
        if role == LAYER:
            plan.of[node] = (plan.new(channels), 1)
            plan.layers.append((node, module))
        elif role in (CHANNELWISE, PASSTHROUGH):
            src = inputs[0] if inputs else None
            if src is None or _meta_shape(src)[1:2] != shape[1:2]:
                role = PIN  # changes the channel axis: not a per-channel op here
            else:
                plan.of[node] = plan.of[src]
                if role == CHANNELWISE:
                    plan.channelwise.append((node, module))
        elif role == JOIN:
            same = len({(len(_meta_shape(n)), _meta_shape(n)[1:2], plan.factor(n)) for n in inputs}) == 1
            if inputs and same and _meta_shape(inputs[0])[1:2] == shape[1:2]:
                gid = plan.of[inputs[0]][0]
                for n in inputs[1:]:
                    gid = plan.union(gid, plan.of[n][0])
                plan.of[node] = (gid, plan.factor(inputs[0]))
            else:
                role = PIN
        elif role == FLATTEN:
            src = inputs[0] if inputs else None
            src_shape = _meta_shape(src)
            if src is None or plan.factor(src) != 1 or len(src_shape) < 2:
                role = PIN
            else:
                spatial = 1
                for d in src_shape[2:]:
                    spatial *= d
                plan.of[node] = (plan.of[src][0], spatial)
        if role == PIN:
            for n in inputs:
                plan.pin(n)
            if shape is not None:
                plan.of[node] = (plan.new(channels, pinned=True), 1)
        plan.role[node], plan.inputs[node] = role, inputs
    if unsupported:
        more = f" and {len(unsupported) - 3} more" if len(unsupported) > 3 else ""
        raise CollapsekitError(f"compact does not support this graph ({type(gm).__name__}): "
                               f"{', '.join(unsupported[:3])}{more}; it handles conv/linear, batch norm, "
                               "depthwise conv, activations, pooling, residual adds and flatten")
    for node, module in plan.layers:
        src = node.args[0]
        if src not in plan.of:
            raise CollapsekitError(f"compact: layer {node.target} reads an input it cannot follow")
    return plan


# -- liveness and values at the reading points -------------------------------------------------
def _channel_liveness(gm: fx.GraphModule, plan: _Plan, flow) -> dict[fx.Node, torch.Tensor]:
    """Per grouped node, which channels some kept input path reaches (bool [channels]).

    Starts from flow.run_flow's dead channels of each layer and carries them through
    per-channel ops (an add's channel is dead iff it is dead in every operand). Any
    other node counts as live everywhere, which only ever keeps a channel.
    """
    alive: dict[fx.Node, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node not in plan.of:
            continue
        channels = plan.channels[plan.group(node)]
        role, inputs = plan.role.get(node), plan.inputs.get(node, [])
        if role == LAYER or (role == CHANNELWISE and handler_for(gm.get_submodule(node.target)).weighted):
            a = torch.ones(channels, dtype=torch.bool)
            a[flow.dead_channels.get(f"{node.target}.weight", [])] = False
            if role == CHANNELWISE:
                a &= alive[inputs[0]]
        elif role in (CHANNELWISE, PASSTHROUGH, FLATTEN):
            a = alive[inputs[0]]
        elif role == JOIN:
            a = torch.zeros(channels, dtype=torch.bool)
            for n in inputs:
                a = a | alive[n]
        else:  # placeholder, pinned op
            a = torch.ones(channels, dtype=torch.bool)
        alive[node] = a
    return alive


class _Capture(fx.Interpreter):
    """Real forward pass keeping the values of the nodes asked for (batch dropped)."""

    def __init__(self, gm, want: set):
        super().__init__(gm, garbage_collect_values=True)
        self.want, self.values = want, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.want and isinstance(out, torch.Tensor):
            self.values[n] = out.detach()[0]
        return out


@dataclass(frozen=True)
class _Decision:
    keep: dict[int, torch.Tensor | None]  # group -> kept channel indices (None: all)
    folds: dict[fx.Node, torch.Tensor]  # reading layer -> float64 bias to add


def _decide(plan: _Plan, flow, live, values) -> _Decision:
    in_group: dict[int, list[str]] = {}
    for node, module in plan.layers + plan.channelwise:
        if handler_for(module).weighted:
            in_group.setdefault(plan.group(node), []).append(f"{node.target}.weight")
    readers: dict[int, list[tuple[fx.Node, nn.Module, fx.Node]]] = {}
    for node, module in plan.layers:
        src = node.args[0]
        readers.setdefault(plan.group(src), []).append((node, module, src))
    keep: dict[int, torch.Tensor | None] = {}
    folds: dict[fx.Node, torch.Tensor] = {}
    w64: dict[fx.Node, torch.Tensor] = {}  # readers' weights in float64, converted once
    for gid in plan.roots():
        if gid in plan.pinned or gid not in in_group:
            continue
        channels = plan.channels[gid]
        unused = set.intersection(*(set(flow.unused_channels.get(name, ())) for name in in_group[gid]))
        dead: dict[int, list] = {}
        group_readers = readers.get(gid, [])
        constant = torch.ones(channels, dtype=torch.bool)
        for _, _, src in group_readers:
            constant &= ~live[src]
        for c in torch.nonzero(constant).flatten().tolist() if group_readers else []:
            if c in unused:
                continue
            parts = []
            for node, module, src in group_readers:
                if node not in w64:
                    w64[node] = module.weight.detach().double()
                part = handler_for(module).contribution(module, w64[node], values[src], c, plan.factor(src))
                if part is None:
                    break
                parts.append((node, part))
            else:
                dead[c] = parts
        removed = unused | set(dead)
        if len(removed) == channels:  # keep one channel so no tensor becomes empty
            spare = min(unused) if unused else min(dead)
            removed.discard(spare)
            dead.pop(spare, None)
        if not removed:
            continue
        for c, parts in dead.items():
            if c in removed:
                for node, part in parts:
                    folds[node] = folds.get(node, 0) + part
        keep[gid] = torch.tensor([c for c in range(channels) if c not in removed], dtype=torch.long)
    return _Decision(keep, folds)


# -- rebuilding the modules ---------------------------------------------------------------------
def _features(plan: _Plan, decision: _Decision, node: fx.Node) -> torch.Tensor | None:
    idx = decision.keep.get(plan.group(node))
    f = plan.factor(node)
    if idx is None or f == 1:
        return idx
    return (idx[:, None] * f + torch.arange(f)).reshape(-1)


def _param(tensor: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(tensor.to(like.dtype).contiguous(), requires_grad=like.requires_grad)


def _slice_layer(module: nn.Module, out_idx, in_idx, fold) -> nn.Module:
    new = copy.deepcopy(module)
    with torch.no_grad():
        w = module.weight.detach()
        if out_idx is not None:
            w = w[out_idx]
        if in_idx is not None:
            w = w[:, in_idx]
        new.weight = _param(w, module.weight)
        bias = module.bias
        if fold is not None:
            base = (bias.detach().double() if bias is not None
                    else torch.zeros(module.weight.shape[0], dtype=torch.float64))
            bias_value = (base + fold).to(module.weight.dtype)
            bias = nn.Parameter(bias_value, requires_grad=module.weight.requires_grad)
        if bias is not None:
            new.bias = _param(bias.detach()[out_idx] if out_idx is not None else bias.detach(), bias)
    return new


def _slice_channels(module: nn.Module, idx: torch.Tensor) -> nn.Module:
    new = copy.deepcopy(module)
    with torch.no_grad():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(new, name, _param(p.detach()[idx], p))
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.ndim > 0:
                setattr(new, name, b.detach()[idx].clone())
    return new


def compact(model, masks: dict[str, torch.Tensor], example_inputs=None) -> fx.GraphModule:
    """A smaller dense fx.GraphModule (eval mode) computing what `model` masked by `masks` computes.

    `model` is an nn.Module (traced here on `example_inputs`) or an Analysis,
    whose traced graph is copied instead of tracing again.

    Dead and unused channels (flow.run_flow) are sliced out of every conv, linear,
    batch norm and depthwise conv; a dead channel's constant is folded into the
    bias of each layer reading it when that is exact (Invariant 5). `model` is
    not changed. Outputs match the masked model's in eval mode up to float
    rounding. Raises CollapsekitError for graphs with ops it has no rule for.
    """
    traced = _masked_trace(model, masks, example_inputs)
    gm = traced.gm
    plan = _plan(gm)
    weights = find_prunable(gm)
    keep = [next((masks[n] for n in (w.name, *w.aliases) if n in masks), None) for w in weights]
    keep = [k.cpu() if k is not None else torch.ones(w.shape, dtype=torch.bool) for k, w in zip(keep, weights)]
    flow = run_flow(traced, weights, keep, backward=True)
    sources = {node.args[0] for node, _ in plan.layers}
    live = _channel_liveness(gm, plan, flow)
    with torch.no_grad():
        capture = _Capture(gm, sources)
        capture.run(*traced.example_inputs)
    decision = _decide(plan, flow, live, capture.values)
    for node, module in plan.layers:
        out_idx = _features(plan, decision, node)
        in_idx = _features(plan, decision, node.args[0])
        fold = decision.folds.get(node)
        if out_idx is not None or in_idx is not None or fold is not None:
            gm.set_submodule(node.target, handler_for(module).rebuild_layer(module, out_idx, in_idx, fold))
    for node, module in plan.channelwise:
        idx = _features(plan, decision, node)
        if idx is not None:
            gm.set_submodule(node.target, handler_for(module).rebuild_channels(module, idx))
    return gm.eval()


def _masked_trace(model, masks: dict[str, torch.Tensor], example_inputs) -> TracedModel:
    """The symbolic trace of a masked copy of `model`; an Analysis's trace is copied, not redone."""
    if isinstance(model, Analysis):
        source = model.traced
        _require_symbolic(source, model.name)
        check_masks(source.gm, masks)  # fx keeps the module hierarchy: the same parameter names
        gm = copy.deepcopy(source.gm).eval()  # new modules: the user's stay as they are
        return TracedModel(apply_masks(gm, masks), source.example_inputs, source.method)
    if example_inputs is None:
        raise CollapsekitError("compact needs example_inputs (or an Analysis) to trace the model")
    check_masks(model, masks)
    masked = copy.deepcopy(model).eval()
    apply_masks(masked, masks)
    traced = trace(masked, example_inputs)
    _require_symbolic(traced, type(model).__name__)
    return traced


def _require_symbolic(traced: TracedModel, name: str) -> None:
    if traced.method != "symbolic_trace":
        raise CollapsekitError(f"compact needs a torch.fx symbolic trace; {name} only traces through torch.export")


__all__ = ["compact"]
