"""The collapse audit behind `collapsekit plot`: the report, the MT comparison it draws, and its figures.

`audit` asks one Analysis (one trace, one sort) three questions:
the report at the requested sparsities and MT, the same without MT, and the
report at one sparsity under the MT that `suggest_mt` (or the reference default)
gives there. `Audit.figures()` draws them; nothing is recomputed when drawing.
"""
from __future__ import annotations

from dataclasses import dataclass

from collapsekit.analysis.analysis import Analysis
from collapsekit.analysis.report import CollapseReport
from collapsekit.analysis.suggest import reference_mt, suggest_mt
from collapsekit.errors import CollapsekitError

DEFAULT_MT_PERCENT = 0.05  # Gupta et al.'s reference --min-threshold (suggest.reference_mt), in %


@dataclass(frozen=True)
class Audit:
    """What `collapsekit plot` shows: the report, its MT-free twin, and the MT comparison at `mt_sparsity`."""

    report: CollapseReport  # at the requested sparsities and MT
    without_mt: CollapseReport  # the same levels (plus mt_sparsity) without MT
    with_mt: CollapseReport | None  # at mt_sparsity under the compared MT; None when no MT applies there
    mt_sparsity: float
    mt_note: str  # why this MT (suggest_mt's reason) or why there is no comparison; "" for a given MT

    def to_dict(self) -> dict:
        """The report's JSON document plus the MT comparison drawn (`mt` None when there is none)."""
        return {"report": self.report.to_dict(), "mt_sparsity": self.mt_sparsity,
                "mt": None if self.with_mt is None else self.with_mt.mt, "mt_note": self.mt_note}

    def figures(self) -> dict:
        """{file stem: Figure}: heatmap, critical and effective sparsity, and mt_effect when there is an MT."""
        from collapsekit.views import plots  # here, not at the top: matplotlib costs every CLI call about a second

        figures = {"sparsity_heatmap": plots.sparsity_heatmap(self.report),
                   "critical_sparsity": plots.critical_sparsity_plot(self.report),
                   "effective_vs_nominal": plots.effective_vs_nominal(self.report)}
        if self.with_mt is not None:
            figures["mt_effect"] = plots.mt_effect(self.without_mt, self.with_mt, self.mt_sparsity)
        return figures


def audit(model, example_inputs=None, sparsities=None, mt=None, include=None, exclude=None, mt_sparsity=None,
          name: str | None = None, progress: bool = False) -> Audit:
    """Audit of `model` under Global MP (+ `mt`) at `sparsities`, with the MT comparison at `mt_sparsity`.

    `model` is an nn.Module (analysed once here: one trace, one sort) or an
    Analysis already built. `mt_sparsity` defaults to the first level that
    cuts an output without MT (what `suggest_mt` asks MT for), else the highest. The compared MT is `mt` when given,
    else `suggest_mt`'s structural floor there, else (nothing collapses) the
    reference 0.05 %, capped at the largest MT the sparsity leaves room for.
    The model is never modified.
    """
    an = Analysis.of(model, example_inputs, include, exclude, mt=0)
    report = an.with_mt(mt).report(sparsities, progress=progress, name=name)
    without = report if not report.mt else an.report(sparsities, name=name)
    s = mt_sparsity if mt_sparsity is not None else \
        next((lv.sparsity for lv in without.levels if lv.outputs_reached < 1.0), without.levels[-1].sparsity)
    compared, note = report.mt, ""
    if not report.mt:
        suggestion = suggest_mt(an, sparsity=s)
        compared, note = suggestion.mt, f"suggest_mt: {suggestion.reason}"
        if not suggestion.collapses_without_mt:
            compared = min(reference_mt(suggestion.total), suggestion.max_mt)
            capped = f", capped at {compared}" if compared == suggestion.max_mt else ""
            note = f"suggest_mt: {suggestion.reason}; showing the default MT of {DEFAULT_MT_PERCENT:g} %{capped}"
    if not compared:
        return Audit(report, without, None, s, note)
    try:
        at_mt = report if report.mt and _has_level(report, s) else \
            an.with_mt(compared).report([s], name=name)
    except CollapsekitError as exc:  # the MT does not fit this sparsity's budget
        return Audit(report, without, None, s, f"{note}; {exc}" if note else str(exc))
    if not _has_level(without, s):
        without = an.report(sorted({lv.sparsity for lv in without.levels} | {s}), name=name)
    return Audit(report, without, at_mt, s, note)


def _has_level(report: CollapseReport, sparsity: float) -> bool:
    return any(abs(lv.sparsity - sparsity) < 1e-9 for lv in report.levels)


__all__ = ["audit", "Audit", "DEFAULT_MT_PERCENT"]
