"""`collapsekit report`: the pre-prune collapse report of a model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from collapsekit.validation.trainable import analyze  # with --data, levels carry the forecast
from collapsekit.files.atomic import atomic_write_text
from collapsekit.files.stream import is_streamable
from collapsekit.files.sparse import is_sparse_checkpoint
from collapsekit.views.render import report_to_markdown, report_to_text
from collapsekit.cli.common import (add_data_args, add_model_args, add_mt_arg, add_output_arg, example_input, load_data,
                                    load_model, resolve_checkpoint, sparsity_arg)


HELP = "predict where Global MP collapses a model (no pruning)"
DESCRIPTION = (
    "Trace the model and predict, for each target sparsity, which layers Global MP empties, "
    "which channels die, the effective sparsity and the sparsity at which the network "
    "collapses. The model is never modified.")


def add_arguments(p) -> None:
    """The `report` subcommand's arguments."""
    add_model_args(p)
    add_analysis_args(p)
    add_data_args(p)  # optional: with data, each level carries a trainability forecast
    p.add_argument("--format", choices=["text", "md", "json"], default="text", help="output form (default text)")
    add_output_arg(p, "--output", kind="file", metavar="FILE", help="also write the JSON document to FILE")


def add_analysis_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that analyses a model at several sparsities."""
    p.add_argument("--sparsity", type=sparsity_arg, nargs="+", metavar="S",
                   help="target global sparsities in [0, 1), or N%% (default: 21 levels from 0.5 to 0.999)")
    add_mt_arg(p)
    p.add_argument("--include", nargs="+", metavar="PATTERN", help="prune only weights matching these patterns")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN", help="never prune weights matching these patterns")


def run(args) -> int:
    """Analyse the model and print the report as text, markdown or JSON."""
    # A safetensors checkpoint (file, sharded directory or index) is streamed: each weight
    # is read from the file when needed. Without data the model is a meta skeleton; with
    # data it is built for real, since the forecast runs it on the checkpoint's values.
    # A sparse checkpoint (prune --out) is decoded whole: its tensors are codes, not weights.
    resolve_checkpoint(args)
    stream = bool(args.checkpoint) and is_streamable(args.checkpoint) and not (
        Path(args.checkpoint).is_file() and is_sparse_checkpoint(args.checkpoint))
    model, meta = load_model(args, stream=stream, on_meta=not args.data)
    bundle = load_data(args, meta) if args.data else None
    x = example_input(args, meta, model, bundle)
    report = analyze(model, x, sparsities=args.sparsity, mt=args.mt,
                     include=args.include, exclude=args.exclude, progress=args.format != "json",
                     name=meta.get("model") or args.model, data=bundle,
                     checkpoint=args.checkpoint if stream else None)
    document = json.dumps(report.to_dict(), indent=2)
    if args.output:
        atomic_write_text(args.output, document + "\n")
    render = {"json": lambda _: document, "md": report_to_markdown, "text": report_to_text}[args.format]
    print(render(report))
    return 0
