"""The layer graph: a networkx DiGraph of the fx nodes on input-to-output paths.

It answers the topological questions of the report: which prunable layers a
residual path avoids (bypassable) and which every path crosses (bottlenecks,
found as dominators of the output), where a bypassable layer's branch rejoins
the trunk, and how deep the network stays once some layers are emptied.

A weight inside a module the tracer keeps opaque (nn.TransformerEncoderLayer,
nn.GRU) is judged by that module's node: its verdict can only be as fine as the
graph the tracer gives.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch.fx as fx

from collapsekit.analysis.prunable import PrunableWeight
from collapsekit.analysis.trace import TracedModel, aliases_of

if TYPE_CHECKING:
    import networkx as nx

SOURCE = "__input__"


def networkx():
    """The networkx module, imported on first use.

    Its `__init__` imports all of networkx (algorithms, generators, readwrite:
    ~0.1-0.2 s, most of collapsekit's own import in a fresh process), and only the
    graph, built once the model is traced, needs it: not at import time (a cold
    WRN-28-8 report with its import went from 1.18 to 1.10 s, median of 8,
    alternated), and in a fresh process `import_beside` starts it during the trace.
    """
    import networkx as nx

    return nx


def import_beside() -> None:
    """Starts importing networkx in a thread where no one has yet: Analysis calls this as its trace begins,
    so that a fresh process's import runs while the trace's forward pass releases the GIL, off the way to
    the graph. `networkx()` then waits for it (Python's per-module import lock)."""
    if "networkx" not in sys.modules:
        threading.Thread(target=_import_quietly, name="collapsekit-import").start()


def _import_quietly() -> None:
    try:
        networkx()
    except Exception:  # noqa: BLE001 - the graph's own networkx() raises it where it is needed
        pass


@dataclass(frozen=True)
class LayerGraph:
    """Data-flow graph of a traced model restricted to nodes between the input and the output."""

    graph: nx.DiGraph
    sink: str
    layer_nodes: dict[str, tuple[str, ...]]  # prunable weight name -> fx nodes that apply it
    bypassable: dict[str, bool]
    rejoins_at: dict[str, str | None]  # first merge node after a layer that every path from it crosses


def build_graph(traced: TracedModel, weights: list[PrunableWeight]) -> LayerGraph:
    """The LayerGraph of `traced` for the prunable `weights`."""
    nx = networkx()
    g = nx.DiGraph()
    nodes = list(traced.gm.graph.nodes)
    sink = next(n.name for n in nodes if n.op == "output")
    order = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        g.add_node(n.name, op=n.op, target=str(n.target))
        for inp in n.all_input_nodes:
            g.add_edge(inp.name, n.name)
        if n.op == "placeholder":
            g.add_edge(SOURCE, n.name)
        for alias, _ in aliases_of(n):  # readers of a tensor after an in-place op on it read the result
            for user in alias.users:
                if order[user] > order[n]:
                    g.add_edge(n.name, user.name)
    on_path = (nx.descendants(g, SOURCE) | {SOURCE}) & (nx.ancestors(g, sink) | {sink})
    g = g.subgraph(on_path).copy()

    layer_nodes = _layer_nodes(traced.gm, weights, g)
    idom = nx.immediate_dominators(g, SOURCE) if sink in g else {}
    trunk = _dominator_chain(idom, sink)
    ipdom = nx.immediate_dominators(g.reverse(copy=False), sink) if sink in g else {}
    bypassable, rejoins = {}, {}
    for name, layer in layer_nodes.items():
        if not layer:
            bypassable[name], rejoins[name] = True, None  # on no input-output path at all
            continue
        if len(layer) == 1:
            bypassable[name] = layer[0] not in trunk
        else:  # a shared weight: a bottleneck if removing all its uses cuts the graph
            rest = g.subgraph(set(g) - set(layer))
            bypassable[name] = sink in rest and nx.has_path(rest, SOURCE, sink)
        rejoins[name] = _rejoin(g, ipdom, layer[0], sink) if bypassable[name] else None
    return LayerGraph(g, sink, layer_nodes, bypassable, rejoins)


def _layer_nodes(gm: fx.GraphModule, weights: list[PrunableWeight], g: nx.DiGraph) -> dict[str, tuple[str, ...]]:
    by_module = {}
    for w in weights:
        for alias in (w.name, *w.aliases):  # a shared tensor is applied by every module holding it
            by_module.setdefault(alias.rpartition(".")[0], []).append(w.name)
    by_attr = {alias: w.name for w in weights for alias in (w.name, *w.aliases)}
    found: dict[str, list[str]] = {w.name: [] for w in weights}
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.name in g:
            # The module itself, or a leaf module the tracer did not enter that holds
            # it (e.g. nn.TransformerEncoderLayer owning its attention and linears).
            for module, names in by_module.items():
                if module == n.target or module.startswith(n.target + "."):
                    for name in names:
                        found[name].append(n.name)
        elif n.op == "get_attr" and n.target in by_attr:
            # A bare matrix: the layer is where it first meets the activations.
            found[by_attr[n.target]].extend(_first_on_path(n, g))
    return {k: tuple(dict.fromkeys(v)) for k, v in found.items()}


def _first_on_path(node: fx.Node, g: nx.DiGraph) -> list[str]:
    hits, frontier, seen = [], list(node.users), set()
    while frontier:
        user = frontier.pop()
        if user.name in seen:
            continue
        seen.add(user.name)
        if user.name in g:
            hits.append(user.name)
        else:
            frontier.extend(user.users)
    return hits


def _dominator_chain(idom: dict, node: str) -> set[str]:
    chain = set()
    while node in idom and node not in chain:
        chain.add(node)
        if idom[node] == node:
            break
        node = idom[node]
    return chain


def _rejoin(g: nx.DiGraph, ipdom: dict, node: str, sink: str) -> str | None:
    # The first node after `node` that every path to the output crosses and that
    # has more than one input: the add (or cat) where the branch rejoins the trunk.
    cur = ipdom.get(node)
    while cur is not None and cur != sink:
        if g.in_degree(cur) > 1:
            return cur
        nxt = ipdom.get(cur)
        cur = None if nxt == cur else nxt
    return None


def effective_depth(lg: LayerGraph, emptied: set[str]) -> int:
    """Most prunable layers on one input-to-output path that avoids every emptied layer; 0 if none does."""
    nx = networkx()
    cut = {n for name in emptied for n in lg.layer_nodes.get(name, ())}
    g = lg.graph.subgraph(set(lg.graph) - cut)
    if lg.sink not in g or not nx.has_path(g, SOURCE, lg.sink):
        return 0
    layer_set = {n for nodes in lg.layer_nodes.values() for n in nodes}
    depth = {SOURCE: 0}
    for n in nx.topological_sort(g):
        if n == SOURCE:
            continue
        preds = [depth[p] for p in g.predecessors(n) if p in depth]
        if preds:
            depth[n] = max(preds) + (1 if n in layer_set else 0)
    return depth.get(lg.sink, 0)
