"""The pre-prune collapse report: what Global MP (+MT) would do to a model, per sparsity and per layer.

`analyze` traces the model once, sorts its magnitudes once (MagnitudeIndex),
and for every requested sparsity derives the Global MP masks and runs the
structural channel flow on them; the model itself is never modified.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.flow import run_flow
from collapsekit.graph import LayerGraph, build_graph, effective_depth
from collapsekit.magnitudes import MagnitudeIndex, resolve_mt, sparsity_to_count
from collapsekit.prunable import PrunableWeight, find_prunable, tensors
from collapsekit.trace import TracedModel, trace

# 21 levels from 0.5 to 0.999, denser where collapse usually happens.
DEFAULT_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985,
                      0.99, 0.992, 0.994, 0.995, 0.996, 0.997, 0.998, 0.999)


@dataclass(frozen=True)
class LayerReport:
    """One prunable weight: its size, topology and the sparsity at which Global MP empties it."""

    name: str
    module: str
    kind: str
    shape: tuple[int, ...]
    numel: int
    bypassable: bool
    critical_sparsity: float  # 1.0 where it never empties (MT)
    rejoins_at: str | None  # merge node where a bypassable layer's branch rejoins the trunk
    mt_protected: int  # weights MT keeps in this layer whatever the sparsity


@dataclass(frozen=True)
class LevelReport:
    """What Global MP at one target sparsity does, as the masks alone decide (DESIGN.md terms)."""

    sparsity: float
    pruned: int
    threshold: float
    collapsed: bool
    emptied_layers: tuple[str, ...]
    emptied_bottlenecks: tuple[str, ...]
    dead_channels: dict[str, list[int]]
    unused_channels: dict[str, list[int]]
    effective_sparsity: float
    effective_depth: int
    layer_sparsity: dict[str, float]
    value_collapsed: bool | None = None  # None: not proven either way

    @property
    def dead_channel_count(self) -> int:
        return sum(len(v) for v in self.dead_channels.values())


@dataclass(frozen=True)
class CollapseReport:
    """The pre-prune collapse report of one model (DESIGN.md, Public contract)."""

    model: str
    total: int
    mt: int
    collapse_sparsity: float  # in (0, 1]; 1.0 if it never collapses
    layers: tuple[LayerReport, ...]
    levels: tuple[LevelReport, ...]
    trace_method: str
    input_shapes: tuple[tuple[int, ...], ...] = field(default=())

    def at(self, sparsity: float) -> LevelReport:
        """The level analysed at `sparsity` (nearest within 1e-9)."""
        for level in self.levels:
            if abs(level.sparsity - sparsity) < 1e-9:
                return level
        have = ", ".join(f"{lv.sparsity:g}" for lv in self.levels)
        raise KeyError(f"sparsity {sparsity} was not analysed (have: {have})")

    @property
    def first_bottleneck(self) -> LayerReport | None:
        """The bottleneck layer that Global MP empties first (lowest critical sparsity), if any."""
        bottlenecks = [lay for lay in self.layers if not lay.bypassable and lay.critical_sparsity < 1.0]
        return min(bottlenecks, key=lambda lay: lay.critical_sparsity, default=None)

    def to_dict(self) -> dict:
        """The JSON document `collapsekit report --format json` prints."""
        first = self.first_bottleneck
        return {
            "model": self.model,
            "total_prunable": self.total,
            "mt": self.mt,
            "collapse_sparsity": self.collapse_sparsity,
            "first_bottleneck": None if first is None else {"name": first.name,
                                                            "critical_sparsity": first.critical_sparsity},
            "trace_method": self.trace_method,
            "input_shapes": [list(s) for s in self.input_shapes],
            "layers": [{**asdict(lay), "shape": list(lay.shape)} for lay in self.layers],
            "levels": [{**asdict(lv), "emptied_layers": list(lv.emptied_layers),
                        "emptied_bottlenecks": list(lv.emptied_bottlenecks),
                        "dead_channel_count": lv.dead_channel_count} for lv in self.levels],
        }


@dataclass
class _Analysis:
    """Everything one analysis builds once: the trace, the index and the graph."""

    traced: TracedModel
    weights: list[PrunableWeight]
    tensors: list[torch.Tensor]
    index: MagnitudeIndex
    graph: LayerGraph
    mt: int

    def keep_masks(self, k: int) -> tuple[list[torch.Tensor], np.ndarray, float]:
        alloc = self.index.allocate(k, self.mt)
        return [m for _, m in self.index.layer_masks(alloc, self.tensors)], alloc.pruned, alloc.threshold

    def collapsed_at(self, k: int) -> bool:
        keep, _, _ = self.keep_masks(k)
        return run_flow(self.traced, self.weights, keep, backward=False).collapsed


def prepare(model: nn.Module, example_inputs, mt=None, include=None, exclude=None) -> _Analysis:
    """Trace, discover, index and graph `model` once for any number of questions."""
    traced = trace(model, example_inputs)
    weights = find_prunable(model, include, exclude)
    params = tensors(model, weights)
    index = MagnitudeIndex(weights, params)
    return _Analysis(traced, weights, params, index, build_graph(traced, weights), resolve_mt(mt, index.total))


def analyze(model: nn.Module, example_inputs, sparsities=None, mt=None, include=None, exclude=None,
            progress: bool = False, name: str | None = None) -> CollapseReport:
    """The CollapseReport of `model` for Global MP at `sparsities` (default: 21 levels, 0.5-0.999).

    `mt` is the Minimum Threshold: an int count per layer, or a percent of all
    prunable weights (float or "0.05%"). `example_inputs` fixes the input shape.
    """
    levels_wanted = sorted(set(DEFAULT_SPARSITIES if sparsities is None else _as_list(sparsities)))
    for s in levels_wanted:
        sparsity_to_count(s, 1)  # validates the range before any work
    an = prepare(model, example_inputs, mt, include, exclude)
    crit = an.index.critical_sparsities(an.mt)
    protected = an.index.protected(an.mt)
    layers = tuple(
        LayerReport(w.name, w.module, w.kind, w.shape, w.numel, an.graph.bypassable[w.name], float(c),
                    an.graph.rejoins_at[w.name], int(p))
        for w, c, p in zip(an.weights, crit, protected))
    bottlenecks = {lay.name for lay in layers if not lay.bypassable}

    levels = []
    for s in _progress(levels_wanted, progress, "levels"):
        k = sparsity_to_count(s, an.index.total)
        if k > an.index.max_count(an.mt):
            raise CollapsekitError(f"sparsity {s} needs {k} pruned weights but MT={an.mt} per layer leaves "
                                   f"only {an.index.max_count(an.mt)} prunable")
        keep, pruned, threshold = an.keep_masks(k)
        flow = run_flow(an.traced, an.weights, keep)
        emptied = tuple(w.name for w, n in zip(an.weights, pruned) if n == w.numel)
        levels.append(LevelReport(
            sparsity=float(s), pruned=k, threshold=threshold, collapsed=flow.collapsed,
            emptied_layers=emptied, emptied_bottlenecks=tuple(n for n in emptied if n in bottlenecks),
            dead_channels=flow.dead_channels, unused_channels=flow.unused_channels,
            effective_sparsity=1.0 - float(flow.effective.sum()) / an.index.total,
            effective_depth=effective_depth(an.graph, set(emptied)),
            layer_sparsity={w.name: float(n) / w.numel for w, n in zip(an.weights, pruned)},
        ))
    collapse = collapse_sparsity(an, [(lv.pruned, lv.collapsed) for lv in levels], crit, bottlenecks)
    return CollapseReport(
        model=name or type(model).__name__, total=an.index.total, mt=an.mt, collapse_sparsity=collapse,
        layers=layers, levels=tuple(levels), trace_method=an.traced.method,
        input_shapes=tuple(tuple(x.shape) for x in an.traced.example_inputs))


def collapse_sparsity(an: _Analysis, known: list[tuple[int, bool]] = (), crit=None, bottlenecks=()) -> float:
    """The smallest global sparsity (to the weight) whose Global MP masks collapse the network.

    Masks are nested in k, so collapse is monotone and bisection over k is exact;
    levels already analysed and the first bottleneck's critical count bracket it.
    """
    lo, hi = 0, an.index.max_count(an.mt)  # lo: known alive; hi: candidate collapsed
    for k, collapsed in known:
        if collapsed:
            hi = min(hi, k)
        else:
            lo = max(lo, k)
    if crit is not None:
        for w, c in zip(an.weights, crit):
            if w.name in bottlenecks and c < 1.0:
                hi = min(hi, int(round(c * an.index.total)))
    if not any(c for _, c in known if _ == hi) and not an.collapsed_at(hi):
        return 1.0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if an.collapsed_at(mid):
            hi = mid
        else:
            lo = mid
    return hi / an.index.total


def _as_list(sparsities) -> list[float]:
    if isinstance(sparsities, (int, float)):
        return [float(sparsities)]
    return [float(s) for s in sparsities]


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)
