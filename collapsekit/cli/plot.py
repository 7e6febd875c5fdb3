"""`collapsekit plot`: the collapse report's figures (per-layer heatmap, critical and effective sparsity, MT effect)."""
from __future__ import annotations

import json
from pathlib import Path

from collapsekit.cli.common import add_model_args, add_output_arg, example_input, load_model, sparsity_arg
from collapsekit.cli.report import add_analysis_args
from collapsekit.files.atomic import atomic_write_text
from collapsekit.views.audit import audit
from collapsekit.views.render import audit_to_text

HELP = "draw the collapse report as figures (PNG and SVG)"


DESCRIPTION = (
    "Analyse the model as `collapsekit report` does and write OUT/sparsity_heatmap, "
    "OUT/critical_sparsity, OUT/effective_vs_nominal and OUT/mt_effect in each --format, plus "
    "OUT/report.json. The first three show Global MP (+ --mt when given); mt_effect compares the "
    "kept weights per layer without MT and with --mt (without --mt: suggest_mt's MT, or 0.05% "
    "of the weights when nothing collapses) at --mt-sparsity. The model is never modified.")


def add_arguments(p) -> None:
    """The `plot` subcommand's arguments."""
    add_model_args(p)
    add_analysis_args(p)
    p.add_argument("--mt-sparsity", type=sparsity_arg, metavar="S",
                   help="sparsity of the MT-effect figure (default: the first analysed level that cuts an "
                        "output without MT, else the highest)")
    add_output_arg(p, "--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--format", nargs="+", choices=["png", "svg"], default=["png", "svg"],
                   help="file formats (default: png svg)")
    p.add_argument("--dpi", type=int, default=110, help="PNG resolution (default: 110)")


def run(args) -> int:
    """Audit the model, save the report and every figure, print the verdict and the files written."""
    from collapsekit.views import plots  # here, not at the top: matplotlib costs every CLI call about a second

    model, meta = load_model(args)
    result = audit(model, example_input(args, meta, model), sparsities=args.sparsity, mt=args.mt,
                   include=args.include, exclude=args.exclude, mt_sparsity=args.mt_sparsity,
                   name=meta.get("model") or args.model, progress=True)
    out = Path(args.out)
    written = [atomic_write_text(out / "report.json", json.dumps(result.report.to_dict(), indent=2) + "\n")]
    for stem, fig in result.figures().items():
        written += plots.save(fig, out / stem, args.format, dpi=args.dpi)
    print(audit_to_text(result, written))
    return 0
