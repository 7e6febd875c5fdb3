"""`collapsekit mt-search`: prune + fine-tune over a sweep of MT values from `suggest_mt`; the best MT."""
from __future__ import annotations

from collapsekit.cli import common
from collapsekit.cli.finetune import add_finetune_args, finetune_kwargs, is_main_process
from collapsekit.views.render import mt_search_to_text

HELP = "sweep the Minimum Threshold (prune + fine-tune each) and report the best"


DESCRIPTION = (
    "Start from suggest_mt (the smallest MT that keeps a path at S), prune a copy with each MT "
    "of its search range (and MT=0), fine-tune it, and report accuracy against MT and the best MT.")


def add_arguments(p) -> None:
    """The `mt-search` subcommand's arguments."""
    common.add_training_job_args(p)
    p.add_argument("--sparsity", type=common.sparsity_arg, required=True, metavar="S",
                   help="global sparsity in [0, 1), or N%%")
    p.add_argument("--mt", nargs="+", metavar="MT",
                   help="MT values to try instead of 0 + suggest_mt's search range (each read as --mt elsewhere: "
                        "an integer is a count per layer, a decimal or N%% a percent of all prunable weights)")
    add_finetune_args(p)
    p.add_argument("--format", choices=["text", "json"], default="text", help="output form (default text)")


def run(args) -> int:
    """Sweep MT, print the accuracy-vs-MT table (rank 0 only)."""
    # Here, not at the top: every command loads this module to build the parser, and the search engine
    # (Optuna, which issue 21 brings in) should load only for this one.
    from collapsekit.validation.mtsearch import search_mt

    model, meta, bundle = common.load_job(args)
    result = search_mt(model, bundle, args.sparsity, mts=args.mt, epochs=args.epochs,
                       progress=not args.no_progress and args.format != "json", **finetune_kwargs(args, meta, bundle))
    if is_main_process():  # under torchrun every rank sweeps; rank 0 prints
        common.print_result(result, args.format, mt_search_to_text)
    return 0
