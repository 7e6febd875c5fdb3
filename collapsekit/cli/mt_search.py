"""`collapsekit mt-search`: pick the MT by successive halving over suggest_mt's candidates (or sweep them all)."""
from __future__ import annotations

from collapsekit.cli import common
from collapsekit.cli.finetune import add_finetune_args, finetune_kwargs
from collapsekit.views.render import mt_search_to_text

HELP = "find the best Minimum Threshold by pruning + fine-tuning candidates (successive halving, or --full)"


DESCRIPTION = (
    "Start from suggest_mt (the smallest MT that keeps a path at S): prune a copy with each MT of its search "
    "range (and MT=0 and the forecast's suggestion) and fine-tune them by successive halving, in the forecast's "
    "order: each gets a short part of its run, the better half goes on, until one is left and finishes; about a "
    "third of fine-tuning every candidate. --full fine-tunes every candidate for every epoch. --storage and "
    "--study-name share one search between processes or machines (an Optuna study).")


def add_arguments(p) -> None:
    """The `mt-search` subcommand's arguments."""
    common.add_training_job_args(p)
    common.add_sparsity_arg(p)
    p.add_argument("--mt", nargs="+", metavar="MT",
                   help="MT values to try instead of 0 + suggest_mt's search range (each read as --mt elsewhere: "
                        "an integer is a count per layer, a decimal or N%% a percent of all prunable weights)")
    p.add_argument("--full", action="store_true",
                   help="fine-tune every candidate for every epoch (the exhaustive sweep) instead of successive halving")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage shared by every process of the search: sqlite:///FILE.db on one machine, "
                        "postgresql://... or mysql://... across machines (default: in memory, this process only)")
    p.add_argument("--study-name", metavar="NAME",
                   help="the search's study in --storage (default: a name made from the model, data and settings)")
    p.add_argument("--heartbeat", type=int, metavar="SECONDS",
                   help="with --storage: seconds between a process's heartbeats; a candidate whose process is "
                        "silent for 3 of them is run again by another (default: 10)")
    add_finetune_args(p)
    p.add_argument("--format", choices=["text", "json"], default="text", help="output form (default text)")


def run(args) -> int:
    """Search MT, print the accuracy-vs-MT table (rank 0 only)."""
    # Here, not at the top: every command loads this module to build the parser, and the search engine
    # (Optuna) should load only for this one.
    from collapsekit.validation.mtsearch import search_mt

    model, meta, bundle = common.load_job(args)
    result = search_mt(model, bundle, args.sparsity, mts=args.mt, epochs=args.epochs, full=args.full,
                       storage=args.storage, study_name=args.study_name, heartbeat=args.heartbeat,
                       progress=not args.no_progress and args.format != "json", **finetune_kwargs(args, meta, bundle))
    if common.is_main_process():  # under torchrun every rank searches; rank 0 prints
        common.print_result(result, args.format, mt_search_to_text)
    return 0
