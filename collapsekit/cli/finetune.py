"""`collapsekit finetune`: prune with Global MP (+ MT) on a schedule and fine-tune with masks held exact."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from collapsekit.analysis.timing import tqdm_class
from collapsekit.cli import common
from collapsekit.data.tasks import task_of
from collapsekit.errors import CollapsekitError
from collapsekit.files import runstate
from collapsekit.training.finetune import MODEL_FILE, prune_and_finetune
from collapsekit.training.train import EpochEnd, defaults_for

HELP = "prune (one-shot, gradual or IMP) and fine-tune with fixed masks; resumable, torchrun-ready"


def add_finetune_args(p) -> None:
    """Fine-tuning hyper-parameters shared by finetune, validate and mt-search (unset: the model family's)."""
    p.add_argument("--epochs", type=int, required=True, help="fine-tuning epochs")
    common.add_optimizer_args(p)
    p.add_argument("--lr-schedule", choices=["cosine", "linear", "warmup_cosine"],
                   help="learning-rate decay to 0 (default: cosine, warmup_cosine for language models; linear "
                        "for IMP, after Zimmer et al.)")
    p.add_argument("--label-smoothing", type=float,
                   help="default: 0.1 for classifiers, 0 for language models (it would bias their perplexity)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")


def finetune_kwargs(args, meta: dict, bundle=None) -> dict:
    """Keyword arguments of `finetune.finetune` from the parsed flags and the family defaults of the model
    (a causal LM's, AdamW with warm-up and cosine, when `bundle` holds text)."""
    task = task_of(bundle) if bundle is not None else None
    hp = defaults_for(meta.get("model") or "", task)
    kwargs = dict(lr=args.lr or hp["lr"], batch_size=args.batch_size or hp["batch_size"],
                  optimizer=args.optimizer or hp["optimizer"], momentum=args.momentum,
                  weight_decay=hp["weight_decay"] if args.weight_decay is None else args.weight_decay,
                  label_smoothing=args.label_smoothing, device=args.device, seed=args.seed)
    if args.lr_schedule or hp.get("lr_schedule"):  # else finetune's own default (cosine; IMP: linear)
        kwargs["lr_schedule"] = args.lr_schedule or hp["lr_schedule"]
    return kwargs


def metrics_line(m: dict) -> str:
    """An epoch's train/test numbers for a progress line (perplexities too for a language model)."""
    line = f"train {m['train_acc']:.2%}  test {m['test_acc']:.2%}"
    if "test_perplexity" in m:
        line += f"  perplexity train {m['train_perplexity']:.2f} test {m['test_perplexity']:.2f}"
    return line


DESCRIPTION = (
    "Prune the model with Global MP at exactly round(S * N) of its N prunable weights (every "
    "layer keeping at least MT), one-shot, gradually (Zhu & Gupta's cubic schedule) or by IMP, "
    "and fine-tune it with the masks re-applied after every step. Writes OUT/metrics.jsonl, "
    "OUT/checkpoint.safetensors every epoch (--resume continues a killed run), then "
    "OUT/model.safetensors (one sparse file carrying the masks) and OUT/finetune.json. Under "
    "`torchrun --nproc-per-node N -m collapsekit finetune ...` it trains with DDP.")


def add_arguments(p) -> None:
    """The `finetune` subcommand's arguments."""
    common.add_training_job_args(p)
    common.add_sparsity_arg(p, help="final global sparsity in [0, 1), or N%%")
    common.add_mt_arg(p)
    p.add_argument("--pruning-schedule", choices=["oneshot", "gradual", "imp"], default="oneshot",
                   help="when to prune: once before fine-tuning, gradually (cubic) or by IMP rounds "
                        "(default: oneshot)")
    p.add_argument("--rounds", type=int, default=3, help="IMP rounds (default: 3)")
    p.add_argument("--steps", type=int, help="gradual: pruning steps, one per epoch (default: epochs // 2)")
    add_finetune_args(p)
    common.add_output_arg(p, "--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from its last complete epoch (with no run there: a warning on "
                        "stderr, then a fresh run, so a job script may always pass it)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="json prints the FinetuneResult")


def run(args) -> int:
    """Load, prune on the schedule, fine-tune, print the result (rank 0 only)."""
    common.resolve_checkpoint(args)
    if args.checkpoint and (Path(args.out) / MODEL_FILE).resolve() == Path(args.checkpoint).resolve():
        raise CollapsekitError(f"--out {args.out} would overwrite the --checkpoint being fine-tuned; "
                               "choose another output directory")
    main = common.is_main_process()
    if args.resume and main and not (Path(args.out) / runstate.STATE_FILE).is_file():
        print(f"collapsekit finetune: warning: nothing to resume in {args.out} (no {runstate.STATE_FILE}); "
              "starting a fresh run", file=sys.stderr)
    model, meta, bundle = common.load_job(args)
    quiet = args.no_progress or not main

    def log_epoch(epoch: int, m: dict) -> None:
        if not quiet:
            tqdm = tqdm_class()
            tqdm.write(f"epoch {epoch}: sparsity {m['sparsity']:.4f}  loss {m['loss']:.4f}  {metrics_line(m)}  "
                       f"lr {m['lr']:.4g}  ({m['seconds']:.1f} s)", file=sys.stderr)

    result = prune_and_finetune(model, bundle, args.sparsity, args.epochs, pruning_schedule=args.pruning_schedule,
                                mt=args.mt, rounds=args.rounds, steps=args.steps, out=args.out, resume=args.resume,
                                progress=not quiet, callbacks=[EpochEnd(log_epoch)], meta=meta,
                                **finetune_kwargs(args, meta, bundle))
    if not main:
        return 0
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
        what, before, after = "test accuracy", result.accuracy_before, result.accuracy
        if result.perplexity is not None:
            what, before, after = "test perplexity", result.perplexity_before, result.perplexity
        print(f"{args.pruning_schedule} to sparsity {result.sparsity:.4f}: {what} {before:.4f} "
              f"before fine-tuning -> {after:.4f} after {result.epochs} epochs ({result.device}, "
              f"{result.world_size} process{'es' if result.world_size > 1 else ''}{resumed}); wrote {args.out}")
    return 0
