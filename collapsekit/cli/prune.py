"""`collapsekit prune`: Global MP (+ MT) on a model, writing one sparse checkpoint (weights and masks) and a JSON report."""
from __future__ import annotations

import json
from pathlib import Path

from collapsekit.analysis.cost import count_macs
from collapsekit.analysis.lazy import initialize_lazy
from collapsekit.analysis.trace import trace
from collapsekit.cli.common import (add_model_args, add_mt_arg, add_output_arg, add_sparsity_arg, example_input,
                                    load_model)
from collapsekit.files.atomic import atomic_write_text
from collapsekit.files.checkpoint import SHA_KEY
from collapsekit.pruning import masks as mask_io
from collapsekit.pruning.export import save_sparse
from collapsekit.pruning.prune import prune
from collapsekit.views.render import prune_to_text


HELP = "prune a model with Global MP (+ MT) and save it sparse"
DESCRIPTION = (
    "Prune the model one-shot with Global Magnitude Pruning at exactly round(S * N) of its N "
    "prunable weights, every layer keeping at least MT weights. Writes OUT/pruned.safetensors "
    "(one sparse checkpoint: kept values plus each keep-mask in its shortest code; every command "
    "that takes masks reads them from it, `collapsekit export --dense` makes it a plain file) and "
    "OUT/prune.json (per-layer sparsity, emptied layers, MACs before and after).")


def add_arguments(p) -> None:
    """The `prune` subcommand's arguments."""
    add_model_args(p)
    add_sparsity_arg(p)
    add_mt_arg(p)
    p.add_argument("--include", nargs="+", metavar="PATTERN", help="prune only weights matching these patterns")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN", help="never prune weights matching these patterns")
    add_output_arg(p, "--out", required=True, metavar="DIR", help="output directory")
    add_output_arg(p, "--masks-file", kind="file", metavar="PATH",
                   help="also write the masks alone to PATH (they are in pruned.safetensors already)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output form (default text)")


def run(args) -> int:
    model, meta = load_model(args)
    example = example_input(args, meta, model)
    initialize_lazy(model, example)  # lazy modules get their weights: this model is pruned in place anyway
    traced = trace(model, example)  # before pruning: a bad shape fails with nothing written
    result = prune(model, args.sparsity, mt=args.mt, include=args.include, exclude=args.exclude)
    macs = count_macs(traced, result.masks)
    document = {"model": meta.get("model") or args.model, **result.to_dict(),
                "macs": {"dense": sum(m["dense"] for m in macs.values()),
                         "kept": sum(m["kept"] for m in macs.values()), "layers": macs}}
    out = Path(args.out)
    meta = {k: v for k, v in meta.items() if k != SHA_KEY}  # the dense file's hash, not this one's
    written = [save_sparse(model, result.masks, out / "pruned.safetensors",
                           meta={**meta, "prune": {k: document[k] for k in ("target_sparsity", "sparsity", "mt_count")}})]
    if args.masks_file:
        written.append(mask_io.save(result.masks, args.masks_file))
    written.append(atomic_write_text(out / "prune.json", json.dumps(document, indent=2) + "\n"))
    if args.format == "json":
        print(json.dumps(document, indent=2))
    else:
        print(prune_to_text(document, written))
    return 0

