"""Every text table collapsekit prints: result objects in, strings out; nothing here recomputes a result.

One column-aligned `table` (and its markdown twin `md_table`) serves the
collapse report, validate, mt-search, prune and plot views, so every command's
output lines up the same way (docs/design.md, Style 5: rendering reads the result objects).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type names only: rendering a report must not import training code
    from collapsekit.analysis.report import CollapseReport
    from collapsekit.validation.mtsearch import MTSearchResult
    from collapsekit.validation.validate import ValidationReport
    from collapsekit.views.audit import Audit


# -- the shared table -------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list], align: str = "") -> str:
    """Plain-text table: header, a dashed rule, then the rows, columns padded to their widest cell.

    `align` holds one 'l' or 'r' per column (missing: 'l'); numbers read best right-aligned.
    Trailing blanks are stripped from every line.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    sides = align.ljust(len(header), "l")

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, sides)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def md_table(header: list[str], rows: list[list], align: str = "") -> str:
    """The same table as GitHub markdown; `align` as in `table`."""
    sides = align.ljust(len(header), "l")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in sides)
    return "\n".join(["| " + " | ".join(map(str, header)) + " |", rule]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _alive(collapsed: bool) -> str:
    return "collapsed" if collapsed else "alive"


# -- collapse report (`collapsekit report`) ---------------------------------------------------------------------
def verdict_lines(report: CollapseReport) -> list[str]:
    """The headline: collapse sparsity, first bottleneck to empty, what empties at each level."""
    lines = [f"model {report.model}: {report.total:,} prunable weights in {len(report.layers)} layers"
             + (f", MT {report.mt} per layer" if report.mt else "")]
    if report.collapse_sparsity >= 1.0:
        lines.append("verdict: Global MP never collapses this network (some input-output path always survives)")
    else:
        lines.append(f"verdict: Global MP collapses the network at sparsity {report.collapse_sparsity:.6f} "
                     "(from there the output is a constant function)")
    if report.non_finite_sparsity < 1.0:
        lines.append(f"from sparsity {report.non_finite_sparsity:.6f} the pruned model computes NaN: it divides by "
                     "the norm of a slice Global MP empties (a broken model, whatever its paths)")
    first = report.first_bottleneck
    if first is not None:
        lines.append(f"first bottleneck to empty: {first.name} at sparsity {first.critical_sparsity:.6f}")
    elif any(lay.critical_sparsity < 1.0 for lay in report.layers):
        lines.append("no bottleneck layer empties: every layer that empties has a bypass")
    else:
        lines.append("no layer ever empties" + (f" (MT keeps {report.mt} weights in each)" if report.mt else ""))
    bypassable = sum(lay.bypassable for lay in report.layers)
    lines.append(f"bypassable layers: {bypassable} of {len(report.layers)} (a residual path avoids them)")
    if report.conservative_ops:
        ops = sorted(report.conservative_ops.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append(f"interpreted conservatively (every output element depends on every input element; "
                     f"sound, less precise): {sum(n for _, n in ops)} ops: "
                     + ", ".join(f"{op} x{n}" for op, n in ops[:6]) + (" ..." if len(ops) > 6 else ""))
    unhandled = {name: ops for name, ops in report.unhandled_ops.items() if name != "flow" and ops}
    if unhandled:
        lines.append("value-level passes answered ops they have no rule for as unknown (sound; nothing is claimed "
                     "through them): " + "; ".join(f"{name} {sum(ops.values())} ({', '.join(sorted(ops)[:4])}"
                                                   f"{' ...' if len(ops) > 4 else ''})"
                                                   for name, ops in sorted(unhandled.items())))
    return lines


LEVEL_HEADER = ["sparsity", "verdict", "effective", "reached", "depth", "dead ch", "emptied", "emptied layers"]
LEVEL_ALIGN = "llrrrrrl"
LAYER_HEADER = ["layer", "kind", "shape", "weights", "path", "critical sparsity"]
LAYER_ALIGN = "lllrlr"
VALUE_NOTE = ("* constant at the current weights although a kept path remains "
              "(value-level collapse: ReLUs cut off by weight signs)")


def level_verdict(lv) -> str:
    """One level's verdict: COLLAPSED (no output reached), outputs cut (some not), constant* (value level), ok;
    NaN where the pruned model divides by a pruned norm (a broken model, whatever its paths)."""
    verdict = ("COLLAPSED" if lv.collapsed else "outputs cut" if lv.outputs_reached < 1.0
               else "constant*" if lv.value_collapsed else "ok")
    return f"{verdict}, NaN" if lv.non_finite else verdict


def level_notes(report: CollapseReport) -> list[str]:
    """Lines under the levels table explaining the verdicts it uses: outputs cut, constant*, NaN."""
    notes = []
    cut = [lv for lv in report.levels if not lv.collapsed and lv.outputs_reached < 1.0]
    if cut:
        notes.append(f"outputs cut: from sparsity {cut[0].sparsity:g} no kept path reaches "
                     f"{1 - cut[0].outputs_reached:.1%} of the output elements: those outputs are constants that "
                     "fine-tuning cannot move; suggest_mt (require=\"every_output\") gives the MT that reaches all")
    if any(lv.value_collapsed and not lv.collapsed for lv in report.levels):
        notes.append(VALUE_NOTE)
    broken = [lv for lv in report.levels if lv.non_finite]
    if broken:
        modules = {lay.name: lay.module for lay in report.layers}
        layers = ", ".join(dict.fromkeys(modules.get(n, n) for lv in broken for n in lv.non_finite_layers))
        notes.append(f"NaN: from sparsity {broken[0].sparsity:g} the pruned model computes NaN (layer {layers}: "
                     "pruned norm): Global MP empties a slice whose norm it divides by")
    return notes


def level_rows(report: CollapseReport) -> list[list[str]]:
    """One row per analysed sparsity: verdict, effective sparsity and depth, dead channels, emptied layers."""
    rows = []
    for lv in report.levels:
        emptied = ", ".join(lv.emptied_layers[:2]) + (f" (+{len(lv.emptied_layers) - 2} more)"
                                                       if len(lv.emptied_layers) > 2 else "")
        rows.append([f"{lv.sparsity:g}", level_verdict(lv), f"{lv.effective_sparsity:.4f}", f"{lv.outputs_reached:.4g}",
                     str(lv.effective_depth), str(lv.dead_channel_count), str(len(lv.emptied_layers)),
                     emptied or "-"])
    return rows


def layer_rows(report: CollapseReport) -> list[list[str]]:
    """One row per prunable weight: shape, size, bottleneck or bypassable, critical sparsity."""
    return [[lay.name, lay.kind, "x".join(map(str, lay.shape)), f"{lay.numel:,}",
             "bypassable" if lay.bypassable else "BOTTLENECK",
             "never (MT)" if lay.mt_protected else f"{lay.critical_sparsity:.6f}"]
            for lay in report.layers]


def levels_table(report: CollapseReport) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, align) of the levels; with data, a `forecast` column (trainable or not, and why)."""
    rows = level_rows(report)
    if all(lv.forecast is None for lv in report.levels):
        return LEVEL_HEADER, rows, LEVEL_ALIGN
    cells = ["-" if lv.forecast is None else f"{_trainable(lv.forecast.trainable)} ({lv.forecast.reason})"
             for lv in report.levels]
    return LEVEL_HEADER + ["forecast"], [row + [cell] for row, cell in zip(rows, cells)], LEVEL_ALIGN + "l"


def _trainable(flag: bool | None) -> str:
    return {True: "trainable", False: "untrainable", None: "-"}[flag]


def report_to_text(report: CollapseReport) -> str:
    """The terminal form of a CollapseReport: verdict first, then the levels, then the per-layer table."""
    parts = verdict_lines(report)
    parts += ["", table(*levels_table(report)), *level_notes(report)]
    parts += ["", table(LAYER_HEADER, layer_rows(report), LAYER_ALIGN)]
    return "\n".join(parts)


def report_to_markdown(report: CollapseReport) -> str:
    """The same content as `report_to_text`, as GitHub markdown."""
    parts = [f"# Collapse report: {report.model}", ""] + [f"- {line}" for line in verdict_lines(report)]
    parts += ["", "## Levels", "", md_table(*levels_table(report))]
    notes = level_notes(report)
    parts += ["", *[f"- {line}" for line in notes]] if notes else []
    parts += ["", "## Layers", "", md_table(LAYER_HEADER, layer_rows(report), LAYER_ALIGN)]
    return "\n".join(parts)


# -- validate (`collapsekit validate`) --------------------------------------------------------------------------
def validation_to_text(report: ValidationReport) -> str:
    """The table `collapsekit validate` prints: one row per level, then the two agreement rates.

    `agree` is the forecast (made before fine-tuning) against `trained`; `structural`
    the predicted collapse against the forward checks and the outcome.
    """
    lm = report.metric == "perplexity"
    if lm:
        dense = (f"dense perplexity {report.dense_perplexity:.3f}, unigram perplexity {report.unigram_perplexity:.3f}")
        trained = f"trained = closes {report.margin:.0%} of the log gap from unigram to dense"
    else:
        dense = f"dense accuracy {report.dense_accuracy:.4f}"
        trained = f"above chance = > {report.chance + report.margin:.2f}"
    head = (f"{report.model}: {dense}, MT {report.mt}, predicted collapse sparsity {report.collapse_sparsity:.6g}, "
            f"{report.epochs} fine-tuning epochs, {trained}")
    what = "ppl" if lm else "acc"
    header = ["sparsity", "predicted", "emptied", "eff.sparsity", "forecast", f"{what} pruned", f"{what} tuned",
              "trained", "observed", "agree", "structural"]
    rows = [[f"{lv.sparsity:g}", _alive(lv.predicted_collapsed), len(lv.emptied_layers),
             f"{lv.effective_sparsity:.4f}", _trainable(lv.forecast_trainable),
             f"{lv.perplexity_pruned if lm else lv.accuracy_pruned:.4f}", f"{lv.perplexity if lm else lv.accuracy:.4f}",
             _yes(lv.trained), _alive(lv.observed_collapsed), _yes(lv.forecast_agree), _yes(lv.agree)]
            for lv in report.levels]
    n = len(report.levels)
    return "\n".join([head, table(header, rows, "r" * len(header)),
                      f"agreement {sum(lv.forecast_agree for lv in report.levels)}/{n} ({report.agreement:.0%}) "
                      f"forecast vs trained; structural {sum(lv.agree for lv in report.levels)}/{n} "
                      f"({report.structural_agreement:.0%})"])


# -- mt-search (`collapsekit mt-search`) ------------------------------------------------------------------------
def mt_search_to_text(result: MTSearchResult) -> str:
    """The accuracy-vs-MT table `collapsekit mt-search` prints: best, suggested and structural floor rows marked."""
    s = result.suggestion
    best = result.best

    def marks(p) -> str:
        hits = [m for m, hit in (("best", p is best), ("suggested", p.mt == s["mt"]),
                                 ("floor", p.mt == s.get("floor", s["mt"]))) if hit]
        return f"<- {', '.join(hits)}" if hits else ""

    lm = result.metric == "perplexity"
    what = "ppl" if lm else "acc"
    header = ["MT", "percent", "predicted", "emptied", "forecast", f"{what} pruned", f"{what} tuned", "epochs", ""]
    rows = [[p.mt, f"{p.percent:.4f}", _alive(p.predicted_collapsed), p.emptied_layers,
             _trainable(p.forecast_trainable), f"{p.accuracy_pruned:.4f}", f"{p.accuracy:.4f}",
             f"{result.epochs if p.budget is None else p.budget:g}", marks(p)] for p in result.points]
    accuracies = [p.accuracy for p in result.points]
    if result.search == "halving":
        last = (f"picked MT {best.mt} ({best.percent:.4g} %): {result.metric} {best.accuracy:.4f} after "
                f"{best.budget:g} epochs; successive halving fine-tuned {result.fine_tune_epochs:g} epochs here, the "
                f"full sweep {result.epochs * len(result.points)} (epochs column: how far each candidate got)")
    else:
        last = (f"best MT {best.mt} ({best.percent:.4g} %): {result.metric} {best.accuracy:.4f} (range "
                f"{min(accuracies):.4f}-{max(accuracies):.4f} over {len(accuracies)} values, {result.epochs} "
                "epochs each)")
    return "\n".join([
        f"sparsity {result.sparsity:g}: suggested MT {s['mt']} ({s['percent']:.4g} % of {s['total']} "
        f"prunable weights; {s['reason']}; {s.get('seconds', 0.0):.2f} s), structural floor "
        f"{s.get('floor', s['mt'])}",
        table(header, rows, "rrrrrrrrl"), last])


# -- prune (`collapsekit prune`) --------------------------------------------------------------------------------
def prune_to_text(document: dict, written) -> str:
    """What `collapsekit prune` prints from its prune.json document: totals, MACs, then one row per layer."""
    dense, kept = document["macs"]["dense"], document["macs"]["kept"]
    rows = [[layer["name"], layer["size"], layer["kept"], f"{layer['sparsity']:.2%}",
             "EMPTIED" if layer["emptied"] else ""] for layer in document["layers"]]
    return "\n".join([
        f"pruned {document['pruned']} of {document['total']} weights (sparsity {document['sparsity']:.4%}, "
        f"MT {document['mt_count']} per layer, threshold |w| {document['threshold']:.4g})",
        f"MACs {dense:,} -> {kept:,} ({kept / dense:.2%} of dense)" if dense else "MACs: no weight applied as a matrix product",
        f"emptied layers: {', '.join(document['emptied_layers']) or 'none'}",
        table(["layer", "size", "kept", "sparsity", ""], rows, "lrrrl"),
        "wrote " + ", ".join(str(p) for p in written)])


# -- plot (`collapsekit plot`) ----------------------------------------------------------------------------------
def audit_to_text(audit: Audit, written) -> str:
    """What `collapsekit plot` prints: the verdict, the MT-effect figure's MT (or why there is none), the files."""
    report = audit.report
    verdict = (f"collapses at sparsity {report.collapse_sparsity:.6f}" if report.collapse_sparsity < 1.0
               else "never collapses")
    lines = [f"{report.model}: Global MP{f' + MT {report.mt}' if report.mt else ''} {verdict}"]
    note = f" ({audit.mt_note})" if audit.mt_note else ""
    if audit.with_mt is None:
        lines.append(f"no mt_effect figure at sparsity {audit.mt_sparsity:g}{note}")
    else:
        lines.append(f"mt_effect at sparsity {audit.mt_sparsity:g}: MT {audit.with_mt.mt} per layer{note}")
    lines.append("wrote " + ", ".join(str(p) for p in written))
    return "\n".join(lines)


__all__ = ["table", "md_table", "report_to_text", "report_to_markdown", "validation_to_text", "mt_search_to_text",
           "prune_to_text", "audit_to_text", "verdict_lines", "level_rows", "layer_rows",
           "level_verdict", "level_notes"]
