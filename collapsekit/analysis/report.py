"""The pre-prune collapse report's result types: per sparsity level and per layer, and their JSON.

`collapsekit.analysis.analysis.Analysis.report` fills them; rendering reads them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
    """What Global MP at one target sparsity does, as the masks alone decide (docs/design.md terms)."""

    sparsity: float
    pruned: int
    threshold: float
    collapsed: bool
    emptied_layers: tuple[str, ...]
    emptied_bottlenecks: tuple[str, ...]
    dead_channels: dict[str, list[int]]
    unused_channels: dict[str, list[int]]
    effective_sparsity: float
    effective_depth: int  # 0 wherever `collapsed`
    layer_sparsity: dict[str, float]
    value_collapsed: bool = False  # proven constant at the current weights (True implies nothing structural)
    forecast: object = None  # forecast.Forecast with data (will masked fine-tuning train it?), else None
    outputs_reached: float = 1.0  # fraction of output elements a kept input path reaches; 0 iff `collapsed`
    non_finite: bool = False  # the pruned model computes NaN/inf: it divides by a norm of pruned weights
    non_finite_layers: tuple[str, ...] = ()  # the weights whose pruned norm it divides by

    def __post_init__(self):
        # One structural verdict, read three ways: no kept path reaches any output element, and none
        # of the paths that avoid emptied layers is left (docs/design.md terms; report-schema.md).
        if self.collapsed and (self.effective_depth or self.outputs_reached):
            raise ValueError(f"level {self.sparsity}: collapsed with effective_depth {self.effective_depth} "
                             f"and outputs_reached {self.outputs_reached}")

    @property
    def outputs_cut(self) -> bool:
        """Some output element, but not all, is out of reach of every kept path (its logit cannot move)."""
        return not self.collapsed and self.outputs_reached < 1.0

    @property
    def dead_channel_count(self) -> int:
        return sum(len(v) for v in self.dead_channels.values())


@dataclass(frozen=True)
class CollapseReport:
    """The pre-prune collapse report of one model (docs/design.md, Public contract)."""

    model: str
    total: int
    mt: int
    collapse_sparsity: float  # in (0, 1]; 1.0 if it never collapses
    layers: tuple[LayerReport, ...]
    levels: tuple[LevelReport, ...]
    trace_method: str
    input_shapes: tuple[tuple[int, ...], ...] = field(default=())
    conservative_ops: dict[str, int] = field(default_factory=dict)  # op -> nodes no exact rule interpreted
    # per abstract interpreter ("flow", "signs", "intervals", "averages"): op -> nodes answered by its fallback
    unhandled_ops: dict[str, dict[str, int]] = field(default_factory=dict)
    non_finite_sparsity: float = 1.0  # from here the pruned model computes NaN/inf (a pruned norm); 1.0 never

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
            "non_finite_sparsity": self.non_finite_sparsity,
            "first_bottleneck": None if first is None else {"name": first.name,
                                                            "critical_sparsity": first.critical_sparsity},
            "trace_method": self.trace_method,
            "input_shapes": [list(s) for s in self.input_shapes],
            "conservative_ops": dict(self.conservative_ops),
            "unhandled_ops": {name: dict(ops) for name, ops in self.unhandled_ops.items()},
            "layers": [{**asdict(lay), "shape": list(lay.shape)} for lay in self.layers],
            "levels": [{**asdict(lv), "emptied_layers": list(lv.emptied_layers),
                        "emptied_bottlenecks": list(lv.emptied_bottlenecks),
                        "non_finite_layers": list(lv.non_finite_layers),
                        "dead_channel_count": lv.dead_channel_count,
                        "forecast": None if lv.forecast is None else lv.forecast.to_dict()} for lv in self.levels],
        }


__all__ = ["CollapseReport", "LevelReport", "LayerReport"]
