"""`collapsekit report`: the pre-prune collapse report of a model."""
from __future__ import annotations

import argparse
import json

import torch

from collapsekit.cli.common import add_data_args, add_model_args, add_mt_arg, load_data, load_model
from collapsekit.errors import CollapsekitError


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
    p.add_argument("--output", metavar="FILE", help="also write the JSON document to FILE")


def add_analysis_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that analyses a model."""
    p.add_argument("--input-shape", type=int, nargs="+", metavar="N",
                   help="example input shape including the batch, e.g. 1 3 32 32 (default: from the model)")
    p.add_argument("--tokens", type=int, metavar="L",
                   help="token model: random input_ids of sequence length L (and decoder_input_ids for an "
                        "encoder-decoder), vocabulary from the model's config")
    p.add_argument("--sparsity", type=float, nargs="+", metavar="S",
                   help="target global sparsities in [0, 1) (default: 21 levels from 0.5 to 0.999)")
    add_mt_arg(p)
    p.add_argument("--include", nargs="+", metavar="PATTERN", help="prune only weights matching these patterns")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN", help="never prune weights matching these patterns")


def example_input(args, meta: dict, model=None):
    """A random example input: token ids from --tokens, a tensor from --input-shape, else the model's recorded shape."""
    from collapsekit import data, models

    if getattr(args, "tokens", None) is not None:
        return token_inputs(model, args.tokens)
    if args.input_shape:
        if any(d <= 0 for d in args.input_shape):
            raise CollapsekitError(f"--input-shape must be positive integers, got {args.input_shape}")
        shape = tuple(args.input_shape)
    else:
        spec = meta.get("model") or args.model
        in_channels = meta.get("in_channels") or args.in_channels or 3
        input_size = meta.get("input_size") or args.input_size or 32
        shape = models.input_shape(spec, in_channels, input_size)
        if data.is_text(meta.get("data")):  # trained on text: token ids [1, context]
            shape = (1, input_size)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embed, torch.nn.Embedding):  # a token model: ids, not floats
        return torch.randint(0, embed.num_embeddings, shape, generator=torch.Generator().manual_seed(0))
    return torch.randn(*shape)


def token_inputs(model, length: int) -> dict[str, torch.Tensor]:
    """Keyword inputs of a token model: input_ids (and decoder_input_ids when the config says
    is_encoder_decoder) of `length` tokens drawn from the config's vocabulary."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if length <= 0:
        raise CollapsekitError(f"--tokens must be a positive length, got {length}")
    if not vocab:
        raise CollapsekitError(f"--tokens needs a token model whose config has a vocab_size; "
                               f"{type(model).__name__} has none (pass --input-shape instead)")
    g = torch.Generator().manual_seed(0)
    ids = {"input_ids": torch.randint(0, vocab, (1, length), generator=g)}
    if getattr(config, "is_encoder_decoder", False):
        ids["decoder_input_ids"] = torch.randint(0, vocab, (1, length), generator=g)
    return ids


def shapes_from_input(args) -> None:
    """Let --input-shape imply --in-channels/--input-size where those were not given."""
    from collapsekit import models

    shape = getattr(args, "input_shape", None)
    if not shape or len(shape) < 3:
        return
    sequence = models.input_shape(args.model or "", 1, 2) == (1, 2, 1) if args.model else False
    channels, size = (shape[-1], shape[1]) if sequence else (shape[1], shape[-1])
    if args.in_channels is None:
        args.in_channels = channels
    if args.input_size is None:
        args.input_size = size


def run(args) -> int:
    """Analyse the model and print the report as text, markdown or JSON."""
    from collapsekit.analysis.analysis import analyze
    from collapsekit.files.atomic import atomic_write_text
    from collapsekit.views.render import report_to_markdown, report_to_text

    from collapsekit.files.stream import is_streamable

    shapes_from_input(args)
    # A safetensors checkpoint (file, sharded directory or index) is streamed: the model
    # is built on the meta device and each weight is read from the file when needed.
    stream = bool(args.checkpoint) and is_streamable(args.checkpoint)
    model, meta = load_model(args, stream=stream)
    bundle = load_data(args, meta) if args.data else None
    x = bundle.example_input() if bundle is not None else example_input(args, meta, model)
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
