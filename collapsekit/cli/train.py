"""`collapsekit train`: train a dense model on a data set and save it as a checkpoint with its sidecar."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from collapsekit.analysis.timing import tqdm_class
from collapsekit.cli import common
from collapsekit.cli.finetune import metrics_line
from collapsekit.training.train import dense_train

HELP = "train a dense model (the network to analyse and prune) and save it"


DESCRIPTION = (
    HELP + ". Unset hyper-parameters take per-family defaults "
    "(collapsekit.training.train.FAMILY_DEFAULTS); --checkpoint starts from saved weights.")


def add_arguments(p) -> None:
    """The `train` subcommand's arguments."""
    common.add_training_job_args(p)
    common.add_output_arg(p, "--out", required=True, metavar="DIR", help="writes DIR/model.safetensors and DIR/model.json")
    p.add_argument("--epochs", type=int, help="epochs (default: per family, e.g. 8 for resnet20)")
    common.add_optimizer_args(p)
    p.add_argument("--lr-schedule", choices=["cosine", "linear", "constant", "warmup_cosine"],
                   help="learning-rate decay to 0 over the run (default: cosine; warmup_cosine for language "
                        "models: 5 %% linear warm-up, then cosine)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", action="store_true", default=None,
                   help="random flips and shifts (default: on for cifar10 only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--format", choices=["text", "json"], default="text", help="json prints the TrainResult")


def run(args) -> int:
    """Train, save, print the final test accuracy."""
    model, meta, bundle = common.load_job(args)
    quiet = args.no_progress

    def log_epoch(epoch: int, m: dict) -> None:
        if not quiet:
            tqdm = tqdm_class()
            tqdm.write(f"epoch {epoch}: loss {m['loss']:.4f}  {metrics_line(m)}  ({m['seconds']:.1f} s)",
                       file=sys.stderr)

    # A recorded data path belongs to the data set the checkpoint was trained on.
    data_path = args.data_path or (meta.get("data_path") if meta.get("data") == bundle.name else None)
    result = dense_train(meta["model"], bundle, args.epochs, args.out, model=model, data_path=data_path, lr=args.lr,
                         batch_size=args.batch_size, optimizer=args.optimizer, momentum=args.momentum,
                         weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
                         label_smoothing=args.label_smoothing, augment=args.augment, device=args.device,
                         seed=args.seed, progress=not quiet, on_epoch_end=log_epoch)
    out = Path(args.out) / "model.safetensors"
    if args.format == "json":
        print(json.dumps({**result.to_dict(), "checkpoint": str(out)}, indent=2))
    else:
        score = (f"test perplexity {result.perplexity:.4f} (next-token accuracy {result.accuracy:.4f})"
                 if result.perplexity is not None else f"test accuracy {result.accuracy:.4f}")
        print(f"{score} ({meta['model']} on {bundle.name}, "
              f"{len(result.history)} epochs); wrote {out} and {out.with_suffix('.json')}")
    return 0
