"""The pre-prune collapse report: what Global MP (+MT) would do to a model, per sparsity and per layer.

`analyze` traces the model once, sorts its magnitudes once (MagnitudeIndex),
and for every requested sparsity derives the Global MP masks and runs the
structural channel flow on them; the model itself is never modified.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn

from collapsekit.analysis.connectivity import Connectivity, LevelMasks
from collapsekit.errors import CollapsekitError
from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.graph import LayerGraph, build_graph, effective_depth
from collapsekit.analysis.magnitudes import MagnitudeIndex, resolve_mt, sparsity_to_count
from collapsekit.analysis.prunable import PrunableWeight, find_prunable, tensors
from collapsekit.analysis.trace import TracedModel, trace
from collapsekit.analysis.values import relu_cuts

# Above this many multiply-accumulates per forward pass, the per-level flow runs at
# channel level (exact collapse sparsity still comes from the element level).
ELEMENT_LEVEL_MACS = 3e8

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
    value_collapsed: bool = False  # proven constant at the current weights (True implies nothing structural)

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
    """Everything one analysis builds once: the trace, the index, the graph and the connectivity."""

    traced: TracedModel
    weights: list[PrunableWeight]
    tensors: list[torch.Tensor]
    index: MagnitudeIndex
    graph: LayerGraph
    connectivity: Connectivity
    mt: int
    channel_level: bool

    def level(self, k: int) -> LevelMasks:
        """The Global MP masks that prune `k` weights, served lazily."""
        return self.connectivity.level(self.index.allocate(k, self.mt))

    def keep_masks(self, k: int) -> tuple[list[torch.Tensor], np.ndarray, float]:
        """Full keep-masks, per-layer pruned counts and the threshold for `k` pruned weights."""
        level = self.level(k)
        return level.keep_list(), level.alloc.pruned, level.alloc.threshold

    def collapsed_at(self, k: int, channel_level: bool | None = None) -> bool:
        channel = self.channel_level if channel_level is None else channel_level
        return run_flow(self.traced, self.weights, self.level(k), backward=False, channel_level=channel).collapsed


def prepare(model: nn.Module, example_inputs, mt=None, include=None, exclude=None, exact="auto") -> _Analysis:
    """Trace, discover, index and graph `model` once for any number of questions.

    `exact`: True runs every level's flow per element (exact dead channels),
    False per channel (sound, fast), "auto" per element for models under
    ELEMENT_LEVEL_MACS. The collapse sparsity is exact either way.
    """
    traced = trace(model, example_inputs)
    weights = find_prunable(model, include, exclude)
    params = tensors(model, weights)
    index = MagnitudeIndex(weights, params)
    channel_level = (forward_macs(traced) > ELEMENT_LEVEL_MACS) if exact == "auto" else not exact
    return _Analysis(traced, weights, params, index, build_graph(traced, weights),
                     Connectivity(traced, weights, params, index), resolve_mt(mt, index.total), channel_level)


def forward_macs(traced: TracedModel) -> int:
    """Multiply-accumulates of the traced convs and linears for the batch-1 example input."""
    total = 0
    for node in traced.gm.graph.nodes:
        if node.op != "call_module" or "tensor_meta" not in node.meta:
            continue
        module = traced.gm.get_submodule(node.target)
        out = getattr(node.meta["tensor_meta"], "shape", None)
        if out is None:
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            total += int(np.prod(out)) * module.weight[0].numel()
        elif isinstance(module, nn.Linear):
            total += int(np.prod(out)) * module.in_features
    return total


def analyze(model: nn.Module, example_inputs, sparsities=None, mt=None, include=None, exclude=None,
            progress: bool = False, name: str | None = None, exact="auto") -> CollapseReport:
    """The CollapseReport of `model` for Global MP at `sparsities` (default: 21 levels, 0.5-0.999).

    `mt` is the Minimum Threshold: an int count per layer, or a percent of all
    prunable weights (float or "0.05%"). `example_inputs` fixes the input shape.
    """
    levels_wanted = _levels(sparsities)  # validated before any work
    an = prepare(model, example_inputs, mt, include, exclude, exact)
    return analyze_prepared(an, levels_wanted, progress=progress, name=name or type(model).__name__)


def with_mt(an: _Analysis, mt) -> _Analysis:
    """The same prepared analysis under another Minimum Threshold (no new trace or sort)."""
    return replace(an, mt=resolve_mt(mt, an.index.total))


def analyze_prepared(an: _Analysis, sparsities=None, progress: bool = False, name: str = "model") -> CollapseReport:
    """`analyze` on an analysis `prepare` already built: callers asking several questions of one
    model (validate, mt-search) trace it and sort its magnitudes once."""
    levels_wanted = _levels(sparsities)
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
        masks = an.level(k)
        pruned = masks.alloc.pruned
        flow = run_flow(an.traced, an.weights, masks, channel_level=an.channel_level)
        emptied = tuple(w.name for w, n in zip(an.weights, pruned) if n == w.numel)
        value_collapsed = flow.collapsed or (not an.channel_level and value_level_collapsed(an, masks))
        levels.append(LevelReport(
            sparsity=float(s), pruned=k, threshold=masks.alloc.threshold, collapsed=flow.collapsed,
            emptied_layers=emptied, emptied_bottlenecks=tuple(n for n in emptied if n in bottlenecks),
            dead_channels=flow.dead_channels, unused_channels=flow.unused_channels,
            effective_sparsity=1.0 - float(flow.effective.sum()) / an.index.total,
            effective_depth=effective_depth(an.graph, set(emptied)),
            layer_sparsity={w.name: float(n) / w.numel for w, n in zip(an.weights, pruned)},
            value_collapsed=value_collapsed,
        ))
    collapse = collapse_sparsity(an, [(lv.pruned, lv.collapsed) for lv in levels], crit, bottlenecks)
    if an.channel_level:  # the exact boundary decides what the coarser per-level flow may have missed
        levels = [lv if lv.collapsed or lv.sparsity < collapse else replace(lv, collapsed=True, effective_sparsity=1.0)
                  for lv in levels]
    return CollapseReport(
        model=name, total=an.index.total, mt=an.mt, collapse_sparsity=collapse,
        layers=layers, levels=tuple(levels), trace_method=an.traced.method,
        input_shapes=tuple(tuple(x.shape) for x in an.traced.example_inputs))


def value_level_collapsed(an: _Analysis, masks: LevelMasks) -> bool:
    """True if the masked network is provably constant at its current weights (sign analysis)."""
    keep = masks.keep_list()
    cuts = relu_cuts(an.traced, an.weights, keep)
    return bool(cuts) and run_flow(an.traced, an.weights, keep, backward=False, cuts=cuts).collapsed


def collapse_sparsity(an: _Analysis, known: list[tuple[int, bool]] = (), crit=None, bottlenecks=()) -> float:
    """The smallest global sparsity (to the weight) whose Global MP masks collapse the network.

    Masks are nested in k, so collapse is monotone and bisection over k is exact;
    levels already analysed and the first bottleneck's critical count bracket it.
    At channel level the bisection finds an upper bound (channel level keeps at
    least as much alive), which one element-level flow confirms or, rarely, a
    second bisection at element level lowers.
    """
    lo, hi = -1, an.index.max_count(an.mt)  # lo: known alive (-1: nothing known); hi: candidate collapsed
    for k, collapsed in known:
        if collapsed:
            hi = min(hi, k)
        else:
            lo = max(lo, k)
    if crit is not None:
        for w, c in zip(an.weights, crit):
            if w.name in bottlenecks and c < 1.0:
                hi = min(hi, int(round(c * an.index.total)))
    if not any(c for k, c in known if k == hi) and not an.collapsed_at(hi):
        return 1.0
    hi = _bisect(an, lo, hi, an.channel_level)
    if an.channel_level and hi > 0 and an.collapsed_at(hi - 1, channel_level=False):
        hi = _bisect(an, -1, hi - 1, channel_level=False)
    return hi / an.index.total


def _bisect(an: _Analysis, lo: int, hi: int, channel_level: bool) -> int:
    """Smallest k in (lo, hi] that collapses, given that hi does."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if an.collapsed_at(mid, channel_level):
            hi = mid
        else:
            lo = mid
    return hi


def _levels(sparsities) -> list[float]:
    levels = sorted(set(DEFAULT_SPARSITIES if sparsities is None else _as_list(sparsities)))
    for s in levels:
        sparsity_to_count(s, 1)  # raises a one-line error for a level outside [0, 1)
    return levels


def _as_list(sparsities) -> list[float]:
    if isinstance(sparsities, (int, float)):
        return [float(sparsities)]
    return [float(s) for s in sparsities]


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, disable=None)  # None: silent when not a terminal
