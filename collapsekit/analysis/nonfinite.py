"""Non-finite outputs: where the pruned model divides by a norm of pruned weights and computes NaN or inf.

Weight normalisation (Salimans & Kingma 2016, `torch.nn.utils.parametrizations.weight_norm`;
the wav2vec2 / HuBERT positional convolution) computes `w = g * v / ||v||` over slices of
`v`. Global MP ranks `v`; once it prunes a whole slice, `||v|| = 0` and the slice becomes
`0 / 0 = NaN`. A NaN weight spreads through every later op, pruned weights included
(`0 * NaN = NaN`), so the model's output is NaN: a broken model, not a collapsed one (its
kept paths may all remain). The same holds for any `x / norm(w)` written in `forward`.

Predicted from the masks, before pruning, by computing what depends on the weights alone:

- in the traced graph, the values computed from weights and constants only (no input)
  where an input-dependent op reads them (torch.export inlines parametrizations as such
  values), and the first input-dependent ops that read a computed weight, run on an input
  of ones (`x / ||w||`);
- for a module that fx keeps whole (symbolic_trace leaves a parametrized conv as one
  call), its parametrized weight (`module.parametrizations`) or a weight-norm hook's
  `compute_weight`, under the masked tensors.

A value counts where it is finite with the dense weights and not under the masks. Which
values can turn non-finite is screened once, with every prunable weight zero (a pruned
slice is a zero slice); each level then recomputes only those, and only where they reach
the model's output. An op that fails on these stand-ins is skipped (nothing is claimed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx

from collapsekit.analysis.prunable import PrunableWeight
from collapsekit.analysis.trace import TracedModel, mutates_first_operand


@dataclass(frozen=True)
class _Source:
    """A value that may turn non-finite: how to compute it from the prunable tensors, and which they are."""

    node: fx.Node
    weights: tuple[str, ...]  # canonical names of the prunable weights it reads
    compute: Callable | None = None  # a whole module's computed weight (`node` is its call): compute(module, *stored)
    stored: tuple[str, ...] = ()  # the tensors `compute` reads, relative to the module


class NonFinite:
    """Where one traced model may divide by a norm of pruned weights; `layers(masks)` asks it per level."""

    def __init__(self, traced: TracedModel, weights: list[PrunableWeight], tensors):
        self.gm = traced.gm
        self._canonical = {alias: w.name for w in weights for alias in (w.name, *w.aliases)}
        self._index = {w.name: i for i, w in enumerate(weights)}
        self._tensors = tensors  # aligned with `weights`; read only for the few screened sources
        self._shapes = {w.name: w.shape for w in weights}
        self.live: set[fx.Node] = set()  # nodes that depend on an input (filled with the candidates)
        reaching = _reaching_output(self.gm.graph)
        candidates = [s for s in (*self._graph_candidates(), *self._module_candidates()) if s.node in reaching]
        zero = {name: None for name in self._shapes}  # None: a zero tensor of the weight's shape
        broken = self._non_finite(candidates, zero)
        dense = self._non_finite(broken, {})
        self.sources: tuple[_Source, ...] = tuple(s for s in broken if s not in dense)

    # -- per level ----------------------------------------------------------------------------
    def layers(self, masks) -> tuple[str, ...]:
        """Names of the prunable weights (in model order) whose masked values make the output non-finite.
        `masks.keep(name)` gives a weight's keep-mask."""
        if not self.sources:
            return ()
        names = {n for s in self.sources for n in s.weights}
        masked = {n: masks.keep(n) for n in names}
        found = set()
        for s in self._non_finite(self.sources, masked):
            # The weights whose own mask breaks it (weight norm's direction v, not its scale g), else all.
            alone = [n for n in s.weights if len(s.weights) > 1 and self._non_finite([s], {n: masked[n]})]
            found.update(alone or s.weights)
        return tuple(sorted(found, key=self._index.__getitem__))

    # -- what could turn non-finite -------------------------------------------------------------
    def _graph_candidates(self) -> list[_Source]:
        """Weight-only values read by an input-dependent op, and input-dependent ops reading a computed weight."""
        graph = self.gm.graph
        live = self.live
        reads: dict[fx.Node, frozenset[str]] = {}  # prunable weights a weight-only node is computed from
        for node in graph.nodes:
            if node.op == "placeholder" or any(a in live for a in node.all_input_nodes):
                live.add(node)
            elif node.op == "get_attr":
                name = self._canonical.get(node.target)
                reads[node] = frozenset({name} if name else ())
            elif node.op != "output":
                reads[node] = frozenset().union(*(reads.get(a, frozenset()) for a in node.all_input_nodes))
        found = []
        for node, names in reads.items():
            if not names or node.op == "get_attr":
                continue
            if any(u in live or u.op == "output" for u in node.users):
                found.append(_Source(node, tuple(sorted(names))))
            for user in node.users:  # x / ||w||: the op mixing the input with a computed weight
                if user in live and user.op != "output":
                    found.append(_Source(user, tuple(sorted(names))))
        return list(dict.fromkeys(found))

    def _module_candidates(self) -> list[_Source]:
        """Whole-module calls whose weight a parametrization or weight-norm hook computes from prunable tensors."""
        found = []
        for node in self.gm.graph.nodes:
            if node.op != "call_module":
                continue
            module = self.gm.get_submodule(node.target)
            for compute, stored in _computed_weights(module):
                names = tuple(dict.fromkeys(self._canonical[f"{node.target}.{s}"] for s in stored
                                            if f"{node.target}.{s}" in self._canonical))
                if names:
                    found.append(_Source(node, names, compute, tuple(stored)))
        return found

    # -- evaluation -----------------------------------------------------------------------------
    def _value(self, name: str, masked: dict) -> torch.Tensor:
        """Prunable weight `name` as `masked` says: absent, its dense values; None, zeros; else a keep-mask."""
        if name in masked and masked[name] is None:
            return torch.zeros(self._shapes[name])
        dense = self._tensors[self._index[name]].detach()
        return dense if name not in masked else dense * masked[name].to(dense.dtype)

    def _non_finite(self, sources, masked: dict) -> list[_Source]:
        """The sources whose value is non-finite with the prunable weights given by `masked` (see `_value`)."""
        graph_sources = [s for s in sources if s.compute is None]
        broken = _Partial(self, masked, {s.node for s in graph_sources}).non_finite() if graph_sources else set()
        return [s for s in sources if (s.node in broken if s.compute is None else
                                       _is_non_finite(self._module_value(s, masked)))]

    def _module_value(self, source: _Source, masked: dict):
        """The module's computed weight from its stored tensors as `masked` says; the module is only read."""
        module = self.gm.get_submodule(source.node.target)
        try:
            with torch.no_grad():
                stored = [self._stored(source.node.target, rel, masked, module) for rel in source.stored]
                return source.compute(module, *stored)
        except Exception:  # noqa: BLE001 - a transform these stand-ins cannot run: nothing claimed
            return None

    def _stored(self, owner: str, rel: str, masked: dict, module) -> torch.Tensor:
        name = self._canonical.get(f"{owner}.{rel}")
        return self._value(name, masked) if name else module.get_parameter(rel).detach()


def _computed_weights(module) -> list[tuple[Callable, list[str]]]:
    """(compute(module, *stored), stored tensors' names relative to `module`) for each weight of `module`
    that a parametrization or a weight-norm hook computes: the transform itself, on given tensors."""
    found = []
    for attr, plist in getattr(getattr(module, "parametrizations", None), "items", lambda: [])():
        found.append((lambda m, *stored, plist=plist: _parametrized(plist, *stored),
                      [f"parametrizations.{attr}.{n}" for n, _ in plist.named_parameters(recurse=False)]))
    for hook in module._forward_pre_hooks.values():
        if hasattr(hook, "compute_weight") and isinstance(getattr(hook, "dim", None), int):
            # torch.nn.utils.weight_norm's hook: w = g * v / ||v||, the norm over every dim but `dim`
            found.append((lambda m, g, v, dim=hook.dim: torch._weight_norm(v, g, dim),
                          [f"{hook.name}_g", f"{hook.name}_v"]))
    return found


def _parametrized(plist, *originals):
    """What a parametrization list computes from its stored tensors (as `parametrize` does, nothing written)."""
    out = plist[0](originals[0]) if plist.is_tensor else plist[0](*originals)
    for p in list(plist)[1:]:
        out = p(out)
    return out


class _Partial(fx.Interpreter):
    """Runs the nodes `wanted` needs and nothing else: what depends on an input is ones of its recorded
    shape, prunable weights are given by the NonFinite's `_value`, ops that fail give None."""

    def __init__(self, owner: NonFinite, masked: dict, wanted: set[fx.Node]):
        super().__init__(owner.gm, garbage_collect_values=True)
        self.owner, self.masked, self.wanted = owner, masked, wanted
        needed, stack = set(), list(wanted)
        while stack:
            node = stack.pop()
            if node not in needed:
                needed.add(node)
                if node in wanted or node not in owner.live:  # an input-dependent operand is a stand-in
                    stack.extend(node.all_input_nodes)
        self.needed = needed

    def non_finite(self) -> set[fx.Node]:
        """The wanted nodes whose value holds a NaN or inf. Each value is dropped once its last reader ran,
        so the run holds a few weights' values at a time."""
        readers = {n: sum(u in self.needed for u in n.users) for n in self.needed}
        found = set()
        with torch.no_grad():
            for node in self.module.graph.nodes:
                if node not in self.needed:
                    continue
                self.env[node] = self._run(node)
                if node in self.wanted and _is_non_finite(self.env[node]):
                    found.add(node)
                for arg in node.all_input_nodes:
                    if arg in readers:
                        readers[arg] -= 1
                        if readers[arg] == 0:
                            self.env.pop(arg, None)
                if readers[node] == 0:
                    self.env.pop(node, None)
        self.env.clear()
        return found

    def _run(self, node: fx.Node):
        if node.op == "get_attr":
            name = self.owner._canonical.get(node.target)
            return self.owner._value(name, self.masked) if name else self.fetch_attr(node.target)
        if node in self.owner.live and node not in self.wanted:
            meta = node.meta.get("tensor_meta")  # an input-dependent operand: ones of its recorded shape
            dtype = getattr(meta, "dtype", None)
            ok = hasattr(meta, "shape") and dtype is not None and dtype.is_floating_point
            return torch.ones(tuple(meta.shape), dtype=dtype) if ok else None
        if mutates_first_operand(node) or any(self.env.get(a) is None for a in node.all_input_nodes):
            return None
        try:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            return getattr(self, node.op)(node.target, args, kwargs)
        except Exception:  # noqa: BLE001 - unknown here: nothing is claimed through it
            return None


def _is_non_finite(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all())


def _reaching_output(graph: fx.Graph) -> set[fx.Node]:
    """Nodes with a path to the graph's output (a NaN anywhere else is never seen)."""
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    seen, stack = set(), [out]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen


__all__ = ["NonFinite"]
