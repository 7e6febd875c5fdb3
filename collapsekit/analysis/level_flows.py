"""Every Global MP level's channel-level flow in one pass, for graphs built from plain CNN ops.

Global MP's masks are nested: a weight kept at a sparser level is kept at every
denser one. At channel level a conv joins input channel c to output channel o at
level l iff its largest |w| over reachable taps (connectivity.py) exceeds the
layer's cut at l, so each pair is kept at a prefix of the levels: its *rank* R
is how many levels keep it. Liveness then travels as the number of levels at
which a channel is live, through the max-min semiring (a bottleneck path):

    T(o) = max over c of min(R[o, c], T(c))     (a conv or linear layer)
    T    = max of the operands' T               (a join: add, mul; a concatenation of channels stacks them)

and usedness backwards the same way from the outputs (U = every level). A channel
is dead at level l iff T <= l and unused iff U <= l: one forward and one backward
pass over the graph answer what ChannelFlow answers one level at a time (its
rules OR over kept pairs and never cancel, flow.py), so the verdicts are the same.
This is the semiring view of path problems (Mohri, "Semiring frameworks and
algorithms for shortest-distance problems", 2002).

It applies where every node is one of the ops below and has a reader, and every
prunable weight is a conv or linear module applied once; else `level_flows`
returns None and the levels run their own flows. Where ties at a layer's cut
survive (kept or not by their position), that level's own mask of the layer
sets its pairs' ranks.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from collapsekit.analysis.connectivity import LevelMasks
from collapsekit.analysis.flow import FlowResult
from collapsekit.analysis.magnitudes import abs_bits, bits_to_float
from collapsekit.analysis.ops import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES, \
    ADAPTIVE_MAX_POOL_FUNCTIONS, ADAPTIVE_MAX_POOL_MODULES, ARITHMETIC_FUNCTIONS, ARITHMETIC_METHODS, \
    AVG_POOL_FUNCTIONS, AVG_POOL_MODULES, BATCH_NORM_MODULES, CONV_MODULES, DROPOUT_FUNCTIONS, DROPOUT_MODULES, \
    MAX_POOL_FUNCTIONS, MAX_POOL_MODULES, PARAMETRIC_ACTIVATION_MODULES

# Ops that keep every channel's liveness as it is (per-element maps, per-channel affine maps, pooling
# over positions of one channel: a window never lies in the padding alone).
_SAME_MODULES = (*ACTIVATION_MODULES, *PARAMETRIC_ACTIVATION_MODULES, nn.Identity, *DROPOUT_MODULES,
                 *BATCH_NORM_MODULES, *MAX_POOL_MODULES, *AVG_POOL_MODULES, *ADAPTIVE_MAX_POOL_MODULES)
_SAME_FUNCTIONS = {*ACTIVATION_FUNCTIONS, *DROPOUT_FUNCTIONS, *MAX_POOL_FUNCTIONS, *AVG_POOL_FUNCTIONS,
                   *ADAPTIVE_MAX_POOL_FUNCTIONS}
_SAME_METHODS = {*ACTIVATION_METHODS, "contiguous", "clone"}
_JOINS = set(ARITHMETIC_FUNCTIONS)
_JOIN_METHODS = set(ARITHMETIC_METHODS)
_FLATTENS = {torch.flatten}
_CATS = {torch.cat, torch.concat}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_REDUCE_METHODS = {"mean", "amax", "sum"}
_SIZE_FUNCTIONS = {operator.getitem, getattr}
_NO_BITS = (1 << 31) - 1  # above every |w| bit pattern (NaN is refused by the index)
LINEAR_LIMIT = 1 << 22  # a linear layer's ranks are per weight: larger ones keep their own flows


class _NotPlain(Exception):
    """The graph has a node outside this module's ops: every level runs its own flow."""


def level_flows(traced, weights, levels: list[LevelMasks]) -> list[FlowResult] | None:
    """The channel-level FlowResult of each of `levels` (nested Global MP masks, densest first, as
    `run_flow(..., channel_level=True)` gives it), or None where this graph or these masks need
    the flows one by one."""
    if not levels:
        return []
    if len(levels) >= torch.iinfo(torch.int16).max:
        return None  # a rank must fit its int16
    try:
        plan = _plan(traced, weights, levels[0].conn)
    except Exception:  # noqa: BLE001 - _NotPlain, or a graph this reading did not foresee: flows one by one
        return None
    return _Pass(traced.gm, plan, levels).results()


class _Plan:
    """The graph's tensor nodes in order, each with its op kind, and the prunable layer of each layer node."""

    def __init__(self):
        self.steps: list[tuple[fx.Node, str, object]] = []  # (node, kind, detail)
        self.layers: dict[str, int] = {}  # layer node name -> prunable position
        self.output: fx.Node | None = None


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _plan(traced, weights, conn) -> _Plan:
    gm = traced.gm
    plan = _Plan()
    by_module = {w.module: i for i, w in enumerate(weights) if w.kind in ("conv", "linear")}
    if len(by_module) != len(weights) or any(w.aliases for w in weights):
        raise _NotPlain
    tensors: set[fx.Node] = set()
    sizes: set[fx.Node] = set()  # nodes that read shapes (x.size(0) for a view)
    applied: set[str] = set()
    for node in gm.graph.nodes:
        shape = _shape(node)
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or out not in tensors or len(_shape(out)) != 2:
                raise _NotPlain
            plan.output = out
            continue
        if node.op == "placeholder":
            if shape is None or len(shape) < 2 or shape[0] != 1:
                raise _NotPlain
            plan.steps.append((node, "input", None))
            tensors.add(node)
            continue
        if node.op.startswith("call_") and shape is not None and (not node.users or "value" in node.meta):
            raise _NotPlain  # the flow skips a tensor nothing reads, and reads a recorded one as it is
        if node.op == "call_function" and node.target in _CATS and shape is not None:
            plan.steps.append((node, "cat", _cat(node, shape, tensors)))
            tensors.add(node)
            continue
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if shape is None:  # a shape read (x.size(0), x.shape[1]) or arithmetic and checks on shapes
            if (node.op == "call_method" and node.target in ("size", "dim") and args[0] in tensors) or (
                    node.op == "call_function" and node.target in _SIZE_FUNCTIONS and args and args[0] in tensors) \
                    or (node.op == "call_function" and all(a in sizes for a in node.all_input_nodes)):
                sizes.add(node)
                continue
            raise _NotPlain
        if len(shape) < 2 or shape[0] != 1 or not args or args[0] not in tensors:
            raise _NotPlain
        kind, detail = _kind(gm, node, shape, tensors, sizes)
        if kind == "layer":
            if node.target not in by_module or node.target in applied:
                raise _NotPlain
            applied.add(node.target)
            plan.layers[node.name] = by_module[node.target]
            i = by_module[node.target]
            if weights[i].kind == "conv" and i not in conn.kmax:
                raise _NotPlain
            if weights[i].kind == "linear" and (len(_shape(args[0])) != 2 or weights[i].numel > LINEAR_LIMIT):
                raise _NotPlain
        plan.steps.append((node, kind, detail))
        tensors.add(node)
    if applied != set(by_module) or plan.output is None:
        raise _NotPlain
    return plan


def _kind(gm, node, shape, tensors, sizes) -> tuple[str, object]:
    """(kind, detail) of a tensor node: "layer", "same", "join" or "flatten" (channels -> features)."""
    src = node.args[0]
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if len(node.args) != 1 or node.kwargs:
            raise _NotPlain
        if isinstance(module, CONV_MODULES) and module.padding_mode == "zeros":
            return "layer", None
        if isinstance(module, nn.Linear):
            return "layer", None
        if isinstance(module, MAX_POOL_MODULES) and module.dilation not in (1, (1,) * (len(shape) - 2)):
            raise _NotPlain  # the flow answers a dilated window conservatively
        if isinstance(module, _SAME_MODULES) and _shape(src)[:2] == shape[:2]:
            return "same", None
        if isinstance(module, nn.Flatten):
            return _reshape(src, shape)
        raise _NotPlain
    rest = [a for a in node.args[1:]] + list(node.kwargs.values())
    if any(isinstance(a, fx.Node) and a not in tensors and a not in sizes for a in rest):
        raise _NotPlain
    if node.op == "call_function":
        if node.target in MAX_POOL_FUNCTIONS and _dilated(node):
            raise _NotPlain
        if node.target in _SAME_FUNCTIONS and _shape(src)[:2] == shape[:2] and not any(
                isinstance(a, fx.Node) for a in rest):
            return "same", None
        if node.target in _JOINS:
            return _join(node, shape, tensors)
        if node.target in _FLATTENS:
            return _reshape(src, shape)
        raise _NotPlain
    if node.op == "call_method":
        if node.target in _SAME_METHODS and len(node.args) == 1:
            return "same", None
        if node.target in _JOIN_METHODS:
            return _join(node, shape, tensors)
        if node.target in _RESHAPE_METHODS:
            return _reshape(src, shape)
        if node.target in _REDUCE_METHODS:
            return _reduce(node, src, shape)
    raise _NotPlain


def _dilated(node) -> bool:
    """A max-pool call with a dilation other than 1 (positional fifth argument or keyword)."""
    d = node.args[4] if len(node.args) > 4 else node.kwargs.get("dilation", 1)
    return any(v != 1 for v in (d if isinstance(d, (tuple, list)) else (d,)))


def _join(node, shape, tensors) -> tuple[str, object]:
    """A join of tensor operands of one channel count (or one channel) and numbers."""
    operands = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    if any(a not in tensors for a in operands):
        raise _NotPlain
    if any(not isinstance(a, (fx.Node, int, float)) for a in (*node.args, *node.kwargs.values())):
        raise _NotPlain
    for a in operands:
        s = _shape(a)
        if len(s) != len(shape) or s[1 if len(s) > 2 else -1] not in (1, _channels(shape)):
            raise _NotPlain
    return "join", operands


def _cat(node, shape, tensors) -> list[fx.Node]:
    """The operands of a concatenation along the channel (feature) dim."""
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(parts, (list, tuple)) or not parts or any(p not in tensors for p in parts) or (
            len(shape) < 2 or shape[0] != 1 or not isinstance(dim, int)):
        raise _NotPlain
    if dim % len(shape) != (1 if len(shape) > 2 else len(shape) - 1):
        raise _NotPlain
    return list(parts)


def _channels(shape) -> int:
    return shape[1] if len(shape) > 2 else shape[-1]


def _reshape(src, shape) -> tuple[str, object]:
    """A pure reshape that keeps the channel (feature) dim, x.view(1, C, -1), or flattens it with the
    positions after it, x.flatten(1): [1, C, *S] -> [1, C * prod(S)] (each channel repeated)."""
    before = _shape(src)
    if shape[1] == before[1]:
        return "same", None
    spread = int(np.prod(before[2:]))
    if len(shape) == 2 and len(before) > 2 and shape[1] == before[1] * spread:
        return "flatten", spread
    raise _NotPlain


def _reduce(node, src, shape) -> tuple[str, object]:
    """x.mean((2, 3)) and the like: a reduction over positions only, each channel kept."""
    before = _shape(src)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else dims
    if len(before) < 3 or not dims or any(not isinstance(d, int) or d % len(before) < 2 for d in dims):
        raise _NotPlain
    return "same", None


def _cuts(conn, i: int, levels: list[LevelMasks]) -> tuple[list, list[int]]:
    """(layer i's cut per level, the levels where ties at the cut survive), in the units its ranks
    compare: float |w| of a conv's tap maxima, int bits of a linear's weights."""
    size = int(conn.index.sizes[i])
    conv = i in conn.kmax
    cuts, ties = [], []
    for level, masks in enumerate(levels):
        n = int(masks.alloc.pruned[i])
        if n == 0:
            cuts.append(-0.5 if conv else -1)  # everything kept (a conv pair with no reachable tap is not)
        elif n == size:
            cuts.append(float("inf") if conv else _NO_BITS)
        else:
            v, surviving = conn.index.cut(i, n)
            cuts.append(bits_to_float(v) if conv else v)
            if surviving:
                ties.append(level)
    return cuts, ties


class _Pass:
    """The forward (T) and backward (U) level counts of one plan, and the FlowResult of each level."""

    def __init__(self, gm, plan: _Plan, levels: list[LevelMasks]):
        self.plan, self.conn, self.levels = plan, levels[0].conn, levels
        self.groups = {node.name: getattr(gm.get_submodule(node.target), "groups", 1)
                       for node, kind, _ in plan.steps if kind == "layer"}
        self.n = len(levels)
        self.dtype = torch.uint8 if self.n < 255 else torch.int16
        self.ranks = {i: self._ranks(i) for i in plan.layers.values()}
        self._on_path: dict[int, torch.Tensor] = {}  # linear layer -> weights on a path per level (_effective)

    def _ranks(self, i: int) -> torch.Tensor:
        """How many levels keep each channel pair of conv i ([O, I/groups]) or each weight of linear i:
        the levels whose cut lies below it, and where ties at a cut survive, the level's own mask says."""
        cuts, ties = _cuts(self.conn, i, self.levels)
        conv = i in self.conn.kmax
        if conv:
            keys, values = torch.tensor(cuts, dtype=torch.float32), self.conn.kmax[i]
        else:
            keys, values = torch.tensor(cuts, dtype=torch.int32), abs_bits(self.conn.tensors[i])
        ranks = torch.searchsorted(keys, values.contiguous(), out_int32=True).to(self.dtype)
        name = self.conn.weights[i].name
        for level in ties:  # nested masks: a pair kept at this level is kept at every denser one
            kept = self.levels[level].channel_conn(name) if conv else self.levels[level].keep(name)
            ranks = torch.maximum(ranks, kept.reshape(ranks.shape).to(self.dtype) * (level + 1))
        return ranks

    def _through(self, node, counts: torch.Tensor, forward: bool) -> torch.Tensor:
        """A layer's max-min step: forward, each output's max over its group's inputs of min(rank, input's
        count); backward, each input's max over its group's outputs of min(rank, output's count)."""
        r = self.ranks[self.plan.layers[node.name]]
        g = self.groups[node.name]
        o, ig = r.shape
        if forward:
            return torch.minimum(r.view(g, o // g, ig), counts.view(g, 1, ig)).amax(-1).reshape(o)
        return torch.minimum(r.view(g, o // g, ig), counts.view(g, o // g, 1)).amax(1).reshape(-1)

    # -- the passes ---------------------------------------------------------------------
    def forward(self) -> dict[fx.Node, torch.Tensor]:
        live: dict[fx.Node, torch.Tensor] = {}
        for node, kind, detail in self.plan.steps:
            shape = _shape(node)
            if kind == "input":
                live[node] = torch.full((_channels(shape),), self.n, dtype=self.dtype)
            elif kind == "same":
                live[node] = live[node.args[0]]
            elif kind == "join":
                out = live[detail[0]]
                for a in detail[1:]:
                    out = torch.maximum(out, live[a])
                live[node] = out.expand(_channels(shape)) if out.numel() == 1 else out
            elif kind == "flatten":
                live[node] = live[node.args[0]].repeat_interleave(detail)
            elif kind == "cat":
                live[node] = torch.cat([live[a] for a in detail])
            else:  # layer
                live[node] = self._through(node, live[node.args[0]], forward=True)
        return live

    def backward(self, live) -> dict[fx.Node, torch.Tensor]:
        used: dict[fx.Node, torch.Tensor] = {}

        def add(node, u):
            used[node] = u if node not in used else torch.maximum(used[node], u)

        add(self.plan.output, torch.full((_channels(_shape(self.plan.output)),), self.n, dtype=self.dtype))
        for node, kind, detail in reversed(self.plan.steps):
            u = used.get(node)
            if u is None or kind == "input":
                continue
            if kind == "same":
                add(node.args[0], u)
            elif kind == "join":
                for a in detail:
                    add(a, u.amax().view(1) if live[a].numel() == 1 else u)
            elif kind == "flatten":
                add(node.args[0], u.view(-1, detail).amax(1))
            elif kind == "cat":
                for a, part in zip(detail, u.split([live[a].numel() for a in detail])):
                    add(a, part)
            else:
                add(node.args[0], self._through(node, u, forward=False))
        return used

    def results(self) -> list[FlowResult]:
        live = self.forward()
        used = self.backward(live)
        out_live = live[self.plan.output]
        size = out_live.numel()
        layer_nodes = [node for node, kind, _ in self.plan.steps if kind == "layer"]
        results = []
        for level, masks in enumerate(self.levels):
            reached = int((out_live > level).sum())
            collapsed = reached == 0
            dead, unused = {}, {}
            for node in layer_nodes:
                name = self.conn.weights[self.plan.layers[node.name]].name
                idx = torch.nonzero(live[node] <= level).flatten().tolist()
                if idx:
                    dead[name] = idx
                u = used.get(node)
                idx = list(range(live[node].numel())) if u is None else torch.nonzero(u <= level).flatten().tolist()
                if idx:
                    unused[name] = idx
            effective = np.zeros(len(self.conn.weights), dtype=np.int64)
            if not collapsed:
                for node in layer_nodes:
                    effective[self.plan.layers[node.name]] = self._effective(node, level, masks, live, used)
            results.append(FlowResult(collapsed, dead, unused, effective, min(1.0, reached / size), {}, False))
        return results

    def _effective(self, node, level: int, masks: LevelMasks, live, used) -> int:
        """Kept weights of the layer at `node` on an input-output path at `level` (EffectiveWeights.count)."""
        i = self.plan.layers[node.name]
        u = used.get(node)
        if u is None:
            return 0
        is_used, is_live = u > level, live[node.args[0]] > level
        r = self.ranks[i]
        if bool(is_used.all()) and bool(is_live.all()) and (i not in self.conn.kmax or bool(self.conn.taps[i].all())):
            return int(self.conn.index.sizes[i] - masks.alloc.pruned[i])  # every kept weight
        if i not in self.conn.kmax:  # a linear layer: per weight, the levels it is kept on a path at
            if i not in self._on_path:
                on_path = torch.minimum(torch.minimum(r, u.view(-1, 1)), live[node.args[0]].view(1, -1))
                counts = torch.bincount(on_path.reshape(-1).to(torch.int64), minlength=self.n + 1)
                self._on_path[i] = counts.flip(0).cumsum(0).flip(0)  # [l]: weights on a path at level >= l
            return int(self._on_path[i][level + 1])
        name = self.conn.weights[i].name
        masks.remember_channel_conn(name, r > level)
        g = self.groups[node.name]
        o, ig = r.shape
        pairs = (is_used.view(g, o // g, 1) & is_live.view(g, 1, ig)).reshape(o, ig)
        return masks.effective_count(name, pairs)
