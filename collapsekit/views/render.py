"""Text and markdown views of a CollapseReport; they read the report and never recompute it."""
from __future__ import annotations

from collapsekit.analysis.report import CollapseReport


def verdict_lines(report: CollapseReport) -> list[str]:
    """The headline: collapse sparsity, first bottleneck to empty, what empties at each level."""
    lines = [f"model {report.model}: {report.total:,} prunable weights in {len(report.layers)} layers"
             + (f", MT {report.mt} per layer" if report.mt else "")]
    if report.collapse_sparsity >= 1.0:
        lines.append("verdict: Global MP never collapses this network (some input-output path always survives)")
    else:
        lines.append(f"verdict: Global MP collapses the network at sparsity {report.collapse_sparsity:.6f} "
                     "(from there the output is a constant function)")
    first = report.first_bottleneck
    if first is not None:
        lines.append(f"first bottleneck to empty: {first.name} at sparsity {first.critical_sparsity:.6f}")
    else:
        lines.append("no bottleneck layer empties: every layer that empties has a bypass")
    bypassable = sum(lay.bypassable for lay in report.layers)
    lines.append(f"bypassable layers: {bypassable} of {len(report.layers)} (a residual path avoids them)")
    if report.conservative_ops:
        ops = sorted(report.conservative_ops.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append(f"interpreted conservatively (every output element depends on every input element; "
                     f"sound, less precise): {sum(n for _, n in ops)} ops: "
                     + ", ".join(f"{op} x{n}" for op, n in ops[:6]) + (" ..." if len(ops) > 6 else ""))
    return lines


def level_rows(report: CollapseReport) -> list[list[str]]:
    rows = []
    for lv in report.levels:
        emptied = ", ".join(lv.emptied_layers[:2]) + (f" (+{len(lv.emptied_layers) - 2} more)"
                                                       if len(lv.emptied_layers) > 2 else "")
        verdict = "COLLAPSED" if lv.collapsed else "constant*" if lv.value_collapsed else "ok"
        rows.append([f"{lv.sparsity:g}", verdict, f"{lv.effective_sparsity:.4f}",
                     str(lv.effective_depth), str(lv.dead_channel_count), str(len(lv.emptied_layers)),
                     emptied or "-"])
    return rows


LEVEL_HEADER = ["sparsity", "verdict", "effective", "depth", "dead ch", "emptied", "emptied layers"]
LAYER_HEADER = ["layer", "kind", "shape", "weights", "path", "critical sparsity"]


def layer_rows(report: CollapseReport) -> list[list[str]]:
    return [[lay.name, lay.kind, "x".join(map(str, lay.shape)), f"{lay.numel:,}",
             "bypassable" if lay.bypassable else "BOTTLENECK",
             "never (MT)" if lay.mt_protected else f"{lay.critical_sparsity:.6f}"]
            for lay in report.layers]


VALUE_NOTE = ("* constant at the current weights although a kept path remains "
              "(value-level collapse: ReLUs cut off by weight signs)")


def to_text(report: CollapseReport) -> str:
    """The terminal form: verdict first, then the levels, then the per-layer table."""
    parts = verdict_lines(report)
    parts += ["", _table(LEVEL_HEADER, level_rows(report))]
    if any(lv.value_collapsed and not lv.collapsed for lv in report.levels):
        parts.append(VALUE_NOTE)
    parts += ["", _table(LAYER_HEADER, layer_rows(report))]
    return "\n".join(parts)


def to_markdown(report: CollapseReport) -> str:
    """The same content as GitHub markdown."""
    parts = [f"# Collapse report: {report.model}", ""] + [f"- {line}" for line in verdict_lines(report)]
    parts += ["", "## Levels", "", _md_table(LEVEL_HEADER, level_rows(report))]
    if any(lv.value_collapsed and not lv.collapsed for lv in report.levels):
        parts += ["", VALUE_NOTE]
    parts += ["", "## Layers", "", _md_table(LAYER_HEADER, layer_rows(report))]
    return "\n".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
