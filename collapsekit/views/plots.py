"""Figures of collapse results: each function reads a CollapseReport (or a result object) and returns a Figure.

Nothing here re-runs an analysis: every number drawn comes from the result
object passed in (docs/design.md, Style 5). Figures are built with `matplotlib.figure.Figure`
on an Agg canvas, never through `pyplot`, so importing this module changes no
global backend and a long sweep leaks no figure managers; in Jupyter a returned
Figure displays as any other. Artists that carry data get a `gid`
(`"emptied"`, `"bottleneck"`, `"collapse_sparsity"`...) so callers and tests can
find them without guessing at draw order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import FuncNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from collapsekit.analysis.report import CollapseReport, LevelReport
from collapsekit.files.atomic import atomic_write

# One palette for the whole toolkit: a bottleneck is always red, a bypassable layer always blue.
BOTTLENECK = "#c0392b"
BYPASSABLE = "#2471a3"
COLLAPSED = "#c0392b"
ALIVE = "#1e8449"
EMPTIED_MARK = "\u00d7"  # the multiplication sign drawn in an emptied heatmap cell


def new_figure(width: float, height: float) -> Figure:
    """An empty constrained-layout Figure (inches) on its own Agg canvas: savefig and Jupyter need no pyplot."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def style():
    """Context manager: seaborn's whitegrid look for the axes created inside it (rcParams are left alone)."""
    import seaborn as sns

    return sns.axes_style("whitegrid")


def _path_colour(bypassable: bool) -> str:
    return BYPASSABLE if bypassable else BOTTLENECK


def _short(name: str, limit: int = 32) -> str:
    """A layer name for an axis label: parameter suffix dropped, middle elided when long."""
    name = name[:-len(".weight")] if name.endswith(".weight") else name
    return name if len(name) <= limit else name[: limit // 2 - 1] + "\u2026" + name[-(limit // 2):]


def logit_sparsity_axis(ax, axis: str, lo: float, hi: float) -> None:
    """A logit axis from `lo` to `hi`: 0.9, 0.99 and 0.999 equally far apart, where collapse happens."""
    from matplotlib.ticker import FuncFormatter, LogitLocator, NullFormatter

    set_scale, set_lim, target = (ax.set_xscale, ax.set_xlim, ax.xaxis) if axis == "x" else \
        (ax.set_yscale, ax.set_ylim, ax.yaxis)
    set_scale("logit")
    set_lim(lo, hi)
    target.set_major_locator(LogitLocator())
    target.set_major_formatter(FuncFormatter(_sparsity_label))
    target.set_minor_formatter(NullFormatter())


def _sparsity_label(x: float, _pos=None) -> str:
    """0.9, 0.99, 0.999 as decimals (the logit scale's default writes 1-10^-2)."""
    if not 0.0 < x < 1.0:
        return ""
    if x <= 0.5:
        return f"{x:.2g}"
    return f"{x:.{max(1, int(round(-np.log10(1.0 - x))))}f}"


def _sparsity_range(values, pad: float = 3.0) -> tuple[float, float]:
    """Logit-axis limits that hold `values` (each in (0, 1)) with a margin on both sides."""
    v = np.clip(np.asarray(values, dtype=float), 1e-6, 1 - 1e-7)
    lo = min(0.5, float(v.min()))
    lo = 1.0 / (1.0 + (1.0 - lo) / lo * pad)  # odds divided by `pad`
    hi_odds = float(v.max()) / (1.0 - float(v.max())) * pad
    return lo, hi_odds / (1.0 + hi_odds)


# -- per-layer pruned fraction over the target sparsities ---------------------------------------------------------
def heatmap_matrix(report: CollapseReport) -> tuple[list[str], list[float], np.ndarray, np.ndarray]:
    """(layer names, sparsities, pruned fraction, emptied): the [layers x levels] data `sparsity_heatmap` draws.

    Emptied comes from each level's `emptied_layers`, not from a float compare,
    so a layer 99.999 % pruned is never marked emptied.
    """
    names = [lay.name for lay in report.layers]
    sparsities = [lv.sparsity for lv in report.levels]
    fraction = np.array([[lv.layer_sparsity.get(n, np.nan) for lv in report.levels] for n in names], dtype=float)
    emptied = np.array([[n in set(lv.emptied_layers) for lv in report.levels] for n in names], dtype=bool)
    return names, sparsities, fraction.reshape(len(names), len(sparsities)), \
        emptied.reshape(len(names), len(sparsities))


def _density_norm():
    # Colour by -log10 of the kept fraction: 0.9, 0.99 and 0.999 pruned are one step apart,
    # where a linear scale would paint every interesting cell the same dark shade.
    def forward(x):
        return -np.log10(np.clip(1.0 - np.asarray(x, dtype=float), 1e-4, 1.0))

    def inverse(y):
        return 1.0 - 10.0 ** (-np.asarray(y, dtype=float))

    return FuncNorm((forward, inverse), vmin=0.0, vmax=1.0)


def sparsity_heatmap(report: CollapseReport) -> Figure:
    """Figure: per-layer pruned fraction (rows: layers, columns: target sparsity), emptied cells marked x.

    The strip left of the rows tells bottleneck (red) from bypassable (blue)
    layers, the row labels repeat the colour, and a collapsed level's column
    label is red with the first collapsed column outlined.
    """
    import seaborn as sns

    names, sparsities, fraction, emptied = heatmap_matrix(report)
    bypass = np.array([lay.bypassable for lay in report.layers], dtype=bool)
    n_rows, n_cols = fraction.shape
    fig = new_figure(max(6.0, 2.6 + 0.42 * n_cols), max(3.2, 1.6 + 0.24 * n_rows))
    with style():
        grid = fig.add_gridspec(1, 2, width_ratios=[0.35, max(n_cols, 1)], wspace=0.01)
        strip = fig.add_subplot(grid[0, 0])
        ax = fig.add_subplot(grid[0, 1])
    sns.heatmap(fraction, ax=ax, cmap="rocket_r", norm=_density_norm(), linewidths=0.3, linecolor="white",
                cbar_kws={"label": "fraction of the layer pruned", "ticks": [0, 0.9, 0.99, 0.999, 1.0],
                          "format": "%g", "shrink": 0.8},
                xticklabels=[f"{s:g}" for s in sparsities], yticklabels=False)
    rows, cols = np.nonzero(emptied)
    for r, c in zip(rows, cols):
        ax.text(c + 0.5, r + 0.5, EMPTIED_MARK, ha="center", va="center", color="white", fontsize=10,
                fontweight="bold", gid="emptied")
    collapsed = [lv.collapsed for lv in report.levels]
    for label, dead in zip(ax.get_xticklabels(), collapsed):
        label.set_color(COLLAPSED if dead else "black")
        label.set_rotation(60)
    if any(collapsed):
        first = collapsed.index(True)
        ax.axvline(first, color=COLLAPSED, lw=2.0, gid="collapse_boundary")
    ax.set_xlabel("target global sparsity (red: network collapsed)")
    ax.set_ylabel("")

    strip.imshow(bypass.astype(float)[:, None], aspect="auto", cmap=_two_colour(), vmin=0, vmax=1,
                 extent=(0, 1, n_rows, 0), interpolation="nearest")
    strip.set_xticks([])
    strip.set_yticks(np.arange(n_rows) + 0.5)
    strip.set_yticklabels([_short(n) for n in names], fontsize=8)
    for label, b in zip(strip.get_yticklabels(), bypass):
        label.set_color(_path_colour(bool(b)))
    strip.set_ylim(n_rows, 0)
    strip.grid(False)
    n_emptied = int(emptied.sum())
    title = (f"{report.model}: pruned fraction per layer under Global MP"
             + (f" + MT {report.mt}" if report.mt else "") + f" ({n_emptied} emptied cells \u00d7)")
    fig.suptitle(title, fontsize=11)
    fig.legend(handles=[Patch(color=BOTTLENECK, label=f"bottleneck ({int((~bypass).sum())})"),
                        Patch(color=BYPASSABLE, label=f"bypassable ({int(bypass.sum())})")],
               loc="outside lower left", ncols=2, fontsize=8, frameon=False)
    return fig


def _two_colour():
    from matplotlib.colors import ListedColormap

    return ListedColormap([BOTTLENECK, BYPASSABLE])


# -- critical sparsity per layer ------------------------------------------------------------------------------
def critical_sparsity_plot(report: CollapseReport) -> Figure:
    """Figure: each layer's critical sparsity (logit axis), bottlenecks in red, the collapse sparsity as a line.

    A layer with critical sparsity 1 (MT protects it, or it holds the net's
    largest weight) is drawn as a triangle at the right edge. The first
    bottleneck to empty bounds the collapse sparsity from above (it cuts every
    path); collapse can come earlier through dead channels.
    """
    layers = report.layers
    n = len(layers)
    crit = np.array([lay.critical_sparsity for lay in layers], dtype=float)
    finite = crit < 1.0
    marks = list(crit[finite]) + ([report.collapse_sparsity] if report.collapse_sparsity < 1.0 else [])
    lo, hi = _sparsity_range(marks or [0.5, 0.99])
    fig = new_figure(7.5, max(3.2, 1.5 + 0.22 * n))
    with style():
        ax = fig.add_subplot()
    logit_sparsity_axis(ax, "x", lo, hi)
    y = np.arange(n)
    bypass = np.array([lay.bypassable for lay in layers], dtype=bool)
    for group, colour, label, size in ((~bypass, BOTTLENECK, "bottleneck", 55), (bypass, BYPASSABLE, "bypassable", 30)):
        pick = group & finite
        ax.scatter(crit[pick], y[pick], s=size, color=colour, zorder=3, label=f"{label} layer ({int(group.sum())})",
                   gid=label)
        never = group & ~finite
        if never.any():
            ax.scatter(np.full(int(never.sum()), hi), y[never], marker=">", s=size, color=colour, zorder=3,
                       clip_on=False, gid=f"{label}_never")
    if (~finite).any():
        # Critical sparsity 1: MT protects the layer, or it holds the largest weight of the net.
        ax.scatter([], [], marker=">", color="0.4", label="empties only at sparsity 1 (MT or largest weight)")
    if report.collapse_sparsity < 1.0:
        ax.axvline(report.collapse_sparsity, color="black", ls="--", lw=1.2, gid="collapse_sparsity",
                   label=f"collapse sparsity {report.collapse_sparsity:.4f}")
    first = report.first_bottleneck
    if first is not None:
        i = next(k for k, lay in enumerate(layers) if lay.name == first.name)
        ax.annotate("first bottleneck to empty", (first.critical_sparsity, i), xytext=(8, -4),
                    textcoords="offset points", fontsize=8, color=BOTTLENECK)
    ax.set_yticks(y)
    ax.set_yticklabels([_short(lay.name) for lay in layers], fontsize=8)
    for label, b in zip(ax.get_yticklabels(), bypass):
        label.set_color(_path_colour(bool(b)))
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("critical sparsity: global sparsity at which Global MP empties the layer")
    verdict = (f"collapses at {report.collapse_sparsity:.4f}" if report.collapse_sparsity < 1.0
               else "never collapses")
    ax.set_title(f"{report.model}: critical sparsity per layer ({verdict})", fontsize=11)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


# -- effective vs nominal sparsity ------------------------------------------------------------------------------
def effective_vs_nominal(report: CollapseReport) -> Figure:
    """Figure: effective against nominal sparsity per level; left on linear axes, right as weights left (log).

    Effective sparsity (Vysogorets & Kempe) counts a kept weight on no
    input-to-output path as pruned; at a collapsed level it is 1 and nothing is
    left, drawn as a red x on the right panel's floor.
    """
    levels = report.levels
    nominal = np.array([lv.sparsity for lv in levels], dtype=float)
    effective = np.array([lv.effective_sparsity for lv in levels], dtype=float)
    collapsed = np.array([lv.collapsed for lv in levels], dtype=bool)
    fig = new_figure(10.0, 4.2)
    with style():
        left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="effective = nominal")
    left.plot(nominal, effective, "-o", color=BYPASSABLE, ms=4, label="effective sparsity", gid="effective")
    left.scatter(nominal[collapsed], effective[collapsed], color=COLLAPSED, marker="x", s=50, zorder=3,
                 label="collapsed", gid="collapsed")
    lo = float(min(nominal.min(initial=0.5), effective.min(initial=0.5)))
    left.set_xlim(lo - 0.02, 1.005)
    left.set_ylim(lo - 0.02, 1.005)
    left.set_xlabel("nominal (target) sparsity")
    left.set_ylabel("effective sparsity")
    left.legend(fontsize=8, loc="upper left")

    kept_nominal = 1.0 - nominal
    kept_effective = 1.0 - effective
    floor = max(min(kept_nominal.min(initial=1.0), kept_effective[kept_effective > 0].min(initial=1.0)) / 3, 1e-7)
    right.plot(nominal, kept_nominal, "-o", color="0.45", ms=4, label="kept (nominal)")
    alive = kept_effective > 0
    right.plot(nominal[alive], kept_effective[alive], "-o", color=BYPASSABLE, ms=4,
               label="kept on an input-output path (effective)")
    right.scatter(nominal[~alive], np.full(int((~alive).sum()), floor), color=COLLAPSED, marker="x", s=50,
                  clip_on=False, zorder=3, label="nothing effective left", gid="nothing_left")
    right.set_yscale("log")
    right.set_ylim(floor * 0.8, 1.0)
    if len(nominal):
        logit_sparsity_axis(right, "x", *_sparsity_range(nominal, pad=1.5))
    if report.collapse_sparsity < 1.0:
        for ax in (left, right):
            ax.axvline(report.collapse_sparsity, color="black", ls="--", lw=1, gid="collapse_sparsity")
    right.set_xlabel("nominal (target) sparsity")
    right.set_ylabel("fraction of prunable weights left")
    right.legend(fontsize=8, loc="upper right")
    gap = (effective - nominal)[~collapsed]
    extra = f"; up to {gap.max():.3f} above nominal before collapse" if gap.size else ""
    fig.suptitle(f"{report.model}: effective vs nominal sparsity under Global MP"
                 + (f" + MT {report.mt}" if report.mt else "") + extra, fontsize=11)
    return fig


# -- what MT changes -----------------------------------------------------------------------------------------
def kept_weights(report: CollapseReport, sparsity: float) -> dict[str, int]:
    """{layer name: weights Global MP keeps} at `sparsity`, from the level's per-layer pruned fraction."""
    level = report.at(sparsity)
    return {lay.name: lay.numel - int(round(level.layer_sparsity[lay.name] * lay.numel)) for lay in report.layers}


def mt_effect(report_without_mt: CollapseReport, report_with_mt: CollapseReport, sparsity: float) -> Figure:
    """Figure: kept weights per layer at `sparsity` without and with MT (log axis), emptied layers marked x.

    Both reports must come from the same model and have analysed `sparsity`;
    the MT count per layer is the second report's `mt`.
    """
    base, with_mt = report_without_mt, report_with_mt
    if [lay.name for lay in base.layers] != [lay.name for lay in with_mt.layers]:
        raise ValueError("the two reports describe different layers; analyse the same model twice")
    a, b = base.at(sparsity), with_mt.at(sparsity)
    kept_a, kept_b = kept_weights(base, sparsity), kept_weights(with_mt, sparsity)
    layers = base.layers
    n = len(layers)
    y = np.arange(n)
    fig = new_figure(8.0, max(3.4, 1.6 + 0.26 * n))
    with style():
        ax = fig.add_subplot()
    floor = 0.5  # log axis: an emptied layer's bar would start at -inf, so it gets an x at the floor instead
    height = 0.38
    values_a = np.array([kept_a[lay.name] for lay in layers], dtype=float)
    values_b = np.array([kept_b[lay.name] for lay in layers], dtype=float)
    ax.barh(y - height / 2, np.maximum(values_a, floor), height, left=0, color="0.55",
            label=f"without MT ({_verdict(a)})", gid="without_mt")
    ax.barh(y + height / 2, np.maximum(values_b, floor), height, left=0, color=ALIVE,
            label=f"with MT {with_mt.mt} ({_verdict(b)})", gid="with_mt")
    ax.scatter([lay.numel for lay in layers], y, marker="|", s=80, color="black", zorder=3, label="layer size",
               gid="size")
    for values, offset, gid in ((values_a, -height / 2, "emptied_without_mt"), (values_b, height / 2,
                                                                                  "emptied_with_mt")):
        empty = values == 0
        if empty.any():
            ax.scatter(np.full(int(empty.sum()), floor * 1.4), y[empty] + offset, marker="x", s=40,
                       color=COLLAPSED, zorder=4, gid=gid,
                       label="emptied layer" if gid == "emptied_without_mt" else None)
    if with_mt.mt:
        ax.axvline(with_mt.mt, color=ALIVE, ls="--", lw=1, gid="mt", label=f"MT = {with_mt.mt} per layer")
    ax.set_xscale("log")
    ax.set_xlim(floor, max(lay.numel for lay in layers) * 2.5)
    ax.set_yticks(y)
    ax.set_yticklabels([_short(lay.name) for lay in layers], fontsize=8)
    for label, lay in zip(ax.get_yticklabels(), layers):
        label.set_color(_path_colour(lay.bypassable))
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("weights kept (log)")
    ax.set_title(f"{base.model} at sparsity {sparsity:g}: kept weights per layer, without and with MT",
                 fontsize=11)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


def _verdict(level: LevelReport) -> str:
    emptied = len(level.emptied_layers)
    state = "collapsed" if level.collapsed else "outputs cut" if level.outputs_reached < 1.0 else "alive"
    return state + f", {emptied} emptied"


# -- results of prune + fine-tune ------------------------------------------------------------------------------
def mt_search_curve(result) -> Figure:
    """Figure: test accuracy against MT (per layer) after pruning and after fine-tuning; best MT starred.

    `result` is an `mtsearch.MTSearchResult` or its `to_dict()`. MT = 0 sits at
    the left of a symlog axis; points predicted collapsed are red x's.
    """
    doc = result if isinstance(result, dict) else result.to_dict()
    points = doc["points"]
    mt = np.array([p["mt"] for p in points], dtype=float)
    tuned = np.array([p["accuracy"] for p in points], dtype=float)
    pruned = np.array([p["accuracy_pruned"] for p in points], dtype=float)
    dead = np.array([p["predicted_collapsed"] for p in points], dtype=bool)
    fig = new_figure(6.5, 4.0)
    with style():
        ax = fig.add_subplot()
    ax.plot(mt, tuned, "-o", color=ALIVE, label=f"after fine-tuning ({doc.get('epochs', '?')} epochs)",
            gid="accuracy")
    ax.plot(mt, pruned, ":o", color="0.55", ms=4, label="right after pruning", gid="accuracy_pruned")
    if dead.any():
        ax.scatter(mt[dead], tuned[dead], marker="x", s=70, color=COLLAPSED, zorder=3, label="predicted collapsed",
                   gid="collapsed")
    best = int(np.argmax(tuned)) if len(tuned) else None
    if best is not None:
        ax.scatter([mt[best]], [tuned[best]], marker="*", s=220, color="gold", edgecolor="black", zorder=4,
                   label=f"best MT {int(mt[best])}", gid="best")
    suggested = (doc.get("suggestion") or {}).get("mt")
    if suggested:
        ax.axvline(suggested, color="black", ls="--", lw=1, label=f"suggest_mt: {suggested}", gid="suggested")
    for p, x, acc in zip(points, mt, tuned):
        if p.get("emptied_layers"):
            ax.annotate(f"{p['emptied_layers']} emptied", (x, acc), xytext=(4, -12), textcoords="offset points",
                        fontsize=7, color=COLLAPSED)
    positive = mt[mt > 0]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("MT (weights kept per layer at least)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"accuracy vs MT at sparsity {doc['sparsity']:g}", fontsize=11)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


def compare_reports(reports: dict[str, CollapseReport]) -> Figure:
    """Figure: collapse sparsity (logit axis) and bypassable vs bottleneck layer counts, one row per model."""
    names = list(reports)
    collapse = np.array([reports[n].collapse_sparsity for n in names], dtype=float)
    bypass = np.array([sum(lay.bypassable for lay in reports[n].layers) for n in names])
    total = np.array([len(reports[n].layers) for n in names])
    fig = new_figure(10.0, 1.6 + 0.6 * len(names))
    with style():
        left, right = fig.subplots(1, 2)
    y = np.arange(len(names))
    shown = np.where(collapse < 1.0, collapse, np.nan)
    lo, hi = _sparsity_range(collapse[collapse < 1.0] if (collapse < 1.0).any() else [0.9, 0.999])
    logit_sparsity_axis(left, "x", lo, hi)
    left.scatter(shown, y, s=70, color=COLLAPSED, zorder=3, gid="collapse_sparsity")
    for i, c in enumerate(collapse):
        text = f"{c:.4f}" if c < 1.0 else "never"
        left.annotate(text, (c if c < 1.0 else hi, i), xytext=(6, 6), textcoords="offset points", fontsize=8,
                      ha="left" if c < 1.0 else "right")
    left.set_yticks(y)
    left.set_yticklabels(names)
    left.set_ylim(len(names) - 0.5, -0.5)
    left.set_xlabel("collapse sparsity (higher is more robust)")
    right.barh(y, bypass, color=BYPASSABLE, label="bypassable", gid="bypassable")
    right.barh(y, total - bypass, left=bypass, color=BOTTLENECK, label="bottleneck", gid="bottleneck")
    right.set_yticks(y)
    right.set_yticklabels([])
    right.set_ylim(len(names) - 0.5, -0.5)
    right.set_xlabel("prunable layers")
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle("collapse under Global MP: residual bypasses vs bottlenecks", fontsize=11)
    return fig


# -- saving ---------------------------------------------------------------------------------------------------
FORMATS = ("png", "svg")


def save(fig: Figure, path, formats=FORMATS, dpi: int = 110) -> list[Path]:
    """Paths written: `fig` saved as `path` plus one suffix per format (a .png/.svg/.pdf suffix on `path` is dropped).

    Only a figure suffix is dropped, so "figure_s0.995" becomes figure_s0.995.png, not figure_s0.png.
    """
    base = Path(path)
    if base.suffix.lower() in (".png", ".svg", ".pdf"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        out = base.with_name(f"{base.name}.{fmt}")
        written.append(atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi,
                                                                 metadata=_metadata(fmt))))
    return written


def _metadata(fmt: str) -> dict | None:
    # No date or software version in the files, so regenerated figures differ only where the data does.
    if fmt == "svg":
        return {"Date": None, "Creator": None}
    if fmt == "png":
        return {"Software": None}
    return None


__all__ = ["new_figure", "style", "logit_sparsity_axis", "sparsity_heatmap", "heatmap_matrix", "critical_sparsity_plot", "effective_vs_nominal", "mt_effect",
           "kept_weights", "mt_search_curve", "compare_reports", "save", "FORMATS", "EMPTIED_MARK"]
