"""`collapsekit plot`: the collapse report's figures (per-layer heatmap, critical and effective sparsity, MT effect)."""
from __future__ import annotations

import json
from pathlib import Path

from collapsekit.cli.common import add_model_args, load_model
from collapsekit.cli.report import add_analysis_args, example_input
from collapsekit.errors import CollapsekitError

HELP = "draw the collapse report as figures (PNG and SVG)"
DEFAULT_MT_PERCENT = 0.05  # Gupta et al.'s reference --min-threshold, in % of all prunable weights


def register(subparsers) -> None:
    """Add the `plot` subcommand."""
    p = subparsers.add_parser(
        "plot", help=HELP,
        description="Analyse the model as `collapsekit report` does and write OUT/sparsity_heatmap, "
                    "OUT/critical_sparsity, OUT/effective_vs_nominal and OUT/mt_effect in each --format, plus "
                    "OUT/report.json. The first three show Global MP (+ --mt when given); mt_effect compares the "
                    "kept weights per layer without MT and with --mt (without --mt: suggest_mt's MT, or 0.05% "
                    "of the weights when nothing collapses) at --mt-sparsity. The model is never modified.")
    add_model_args(p)
    add_analysis_args(p)
    p.add_argument("--mt-sparsity", type=float, metavar="S",
                   help="sparsity of the MT-effect figure (default: the first analysed level that collapses "
                        "without MT, else the highest)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--format", nargs="+", choices=["png", "svg"], default=["png", "svg"],
                   help="file formats (default: png svg)")
    p.add_argument("--dpi", type=int, default=110, help="PNG resolution (default: 110)")
    p.set_defaults(func=run)


def run(args) -> int:
    from collapsekit.views import plots
    from collapsekit.analysis.analysis import analyze

    model, meta = load_model(args)
    x = example_input(args, meta, model)
    name = meta.get("model") or args.model
    common = dict(include=args.include, exclude=args.exclude, name=name)
    report = analyze(model, x, sparsities=args.sparsity, mt=args.mt, progress=True, **common)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    figures = {"sparsity_heatmap": plots.sparsity_heatmap(report),
               "critical_sparsity": plots.critical_sparsity_plot(report),
               "effective_vs_nominal": plots.effective_vs_nominal(report)}
    base, with_mt, s, note = _mt_comparison(model, x, report, args, common)
    if with_mt is not None:
        figures["mt_effect"] = plots.mt_effect(base, with_mt, s)

    written = []
    for stem, fig in figures.items():
        written += plots.save(fig, out / stem, args.format, dpi=args.dpi)
    verdict = (f"collapses at sparsity {report.collapse_sparsity:.6f}" if report.collapse_sparsity < 1.0
               else "never collapses")
    print(f"{name}: Global MP{f' + MT {report.mt}' if report.mt else ''} {verdict}")
    if with_mt is None:
        print(f"no mt_effect figure at sparsity {s:g}{note}")
    else:
        print(f"mt_effect at sparsity {s:g}: MT {with_mt.mt} per layer{note}")
    print("wrote " + ", ".join(str(p) for p in [out / "report.json", *written]))
    return 0


def _mt_comparison(model, x, report, args, common):
    """(report without MT, report with MT or None, sparsity, note) for the mt_effect figure.

    The sparsity is --mt-sparsity, else the first analysed level that collapses
    without MT, else the highest; the MT is --mt, else suggest_mt's, else (nothing
    collapses there) the reference default, capped at what the sparsity allows.
    """
    from collapsekit.analysis.suggest import suggest_mt
    from collapsekit.analysis.analysis import analyze

    base = report if not report.mt else analyze(model, x, sparsities=args.sparsity, **common)
    s = args.mt_sparsity if args.mt_sparsity is not None else \
        next((lv.sparsity for lv in base.levels if lv.collapsed), base.levels[-1].sparsity)
    mt, note = args.mt, ""
    if not report.mt:
        suggestion = suggest_mt(model, x, s, include=args.include, exclude=args.exclude)
        mt, note = suggestion.mt or None, f" (suggest_mt: {suggestion.reason})"
        if not suggestion.collapses_without_mt:
            mt = min(int(round(DEFAULT_MT_PERCENT / 100 * suggestion.total)), suggestion.max_mt) or None
            capped = f", capped at {mt}" if mt == suggestion.max_mt else ""
            note = f" (suggest_mt: {suggestion.reason}; showing the default MT of {DEFAULT_MT_PERCENT:g} %{capped})"
    if mt is None:
        return base, None, s, note
    try:
        with_mt = analyze(model, x, sparsities=[s], mt=mt, **common)
    except CollapsekitError as exc:  # the MT does not fit this sparsity's budget
        return base, None, s, note + f" ({exc})"
    if not with_mt.mt:
        return base, None, s, note
    if all(abs(lv.sparsity - s) > 1e-9 for lv in base.levels):
        base = analyze(model, x, sparsities=[s], **common)
    return base, with_mt, s, note
