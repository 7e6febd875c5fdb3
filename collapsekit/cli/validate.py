"""`collapsekit validate`: the analyzer's collapse prediction beside a real prune + fine-tune, per sparsity."""
from __future__ import annotations

import json

from collapsekit.cli import common
from collapsekit.cli.finetune import add_finetune_args, finetune_kwargs, is_main_process

HELP = "check predicted collapse against real Global MP + fine-tuning"


DESCRIPTION = (
    "For each sparsity: the report's prediction (collapsed, emptied layers, effective sparsity) "
    "beside a real Global MP prune of a copy, a forward-pass collapse check and masked "
    "fine-tuning; a level agrees when the forward check sees collapse exactly where predicted "
    "and no predicted-collapsed network trains above chance.")


def add_arguments(p) -> None:
    """The `validate` subcommand's arguments."""
    common.add_training_job_args(p)
    p.add_argument("--sparsity", type=float, nargs="+", required=True, metavar="S", help="sparsity levels")
    common.add_mt_arg(p)
    p.add_argument("--margin", type=float,
                   help="'trained' means accuracy > 1/classes + MARGIN (default: 0.1); for a language model, "
                        "closing MARGIN of the log-perplexity gap from unigram to dense (default: 0.5)")
    add_finetune_args(p)
    p.add_argument("--out", metavar="DIR", help="keep each level's fine-tuning run under DIR/s<sparsity>/")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output form (default text)")


def run(args) -> int:
    """Validate the prediction at each sparsity and print the table (rank 0 only)."""
    from collapsekit.validation.validate import validate
    from collapsekit.views.render import validation_to_text

    model, meta = common.load_model(args)
    bundle = common.load_data(args, meta)
    kwargs = finetune_kwargs(args, meta, bundle)
    report = validate(model, bundle, args.sparsity, mt=args.mt, epochs=args.epochs, margin=args.margin,
                      name=meta.get("model"), out=args.out,
                      progress=not args.no_progress and args.format != "json", **kwargs)
    if is_main_process():  # under torchrun every rank validates; rank 0 prints
        print(json.dumps(report.to_dict(), indent=2) if args.format == "json" else validation_to_text(report))
    return 0
