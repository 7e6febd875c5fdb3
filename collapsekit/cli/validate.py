"""`collapsekit validate`: the analyzer's collapse prediction beside a real prune + fine-tune, per sparsity."""
from __future__ import annotations

from collapsekit.cli import common
from collapsekit.cli.finetune import add_finetune_args, finetune_kwargs
from collapsekit.validation.validate import validate
from collapsekit.views.render import validation_to_text

HELP = "check predicted collapse against real Global MP + fine-tuning"


DESCRIPTION = (
    "For each sparsity: the report's prediction (collapsed, emptied layers, effective sparsity) "
    "beside a real Global MP prune of a copy, a forward-pass collapse check and masked "
    "fine-tuning; a level agrees when the forward check sees collapse exactly where predicted "
    "and no predicted-collapsed network trains above chance.")


def add_arguments(p) -> None:
    """The `validate` subcommand's arguments."""
    common.add_training_job_args(p)
    p.add_argument("--sparsity", type=common.sparsity_arg, nargs="+", required=True, metavar="S",
                   help="sparsity levels in [0, 1), or N%%")
    common.add_mt_arg(p)
    p.add_argument("--margin", type=float,
                   help="'trained' means accuracy > 1/classes + MARGIN (default: 0.1); for a language model, "
                        "closing MARGIN of the log-perplexity gap from unigram to dense (default: 0.5)")
    add_finetune_args(p)
    common.add_output_arg(p, "--out", metavar="DIR", help="keep each level's fine-tuning run under DIR/s<sparsity>/")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output form (default text)")


def run(args) -> int:
    """Validate the prediction at each sparsity and print the table (rank 0 only)."""
    model, meta, bundle = common.load_job(args)
    kwargs = finetune_kwargs(args, meta, bundle)
    report = validate(model, bundle, args.sparsity, mt=args.mt, epochs=args.epochs, margin=args.margin,
                      name=meta.get("model"), out=args.out,
                      progress=not args.no_progress and args.format != "json", **kwargs)
    if common.is_main_process():  # under torchrun every rank validates; rank 0 prints
        common.print_result(report, args.format, validation_to_text)
    return 0
