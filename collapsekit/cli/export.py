"""`collapsekit export`: a sparse checkpoint written out as a plain dense safetensors file (and its masks, on request)."""
from __future__ import annotations

from collapsekit.errors import CollapsekitError
from collapsekit.files.checkpoint import save_state, sidecar_path
from collapsekit.files.sparse import load_sparse, read_sparse_meta
from collapsekit.pruning import masks as mask_io
from collapsekit.cli.common import add_output_arg


HELP = "write a pruned (sparse) checkpoint as a plain dense safetensors file"
DESCRIPTION = (
    "Decode a collapsekit sparse checkpoint (what `prune --out` and `finetune --out` write) into "
    "a plain safetensors state_dict that any torch or safetensors tool loads (pruned weights as "
    "+0.0, tied names each written out), with a .json sidecar naming the model for collapsekit; "
    "--masks-file writes the masks alone. The same decoding in Python: ck.load_sparse(path).")


def add_arguments(p) -> None:
    """The `export` subcommand's arguments."""
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="the sparse checkpoint to read")
    add_output_arg(p, "--dense", kind="file", metavar="OUT", help="plain safetensors file to write, e.g. pruned-dense.safetensors")
    add_output_arg(p, "--masks-file", kind="file", metavar="PATH", help="also write the masks alone to PATH")


def run(args) -> int:
    """Decode, write what was asked, print one line per file written."""
    if not args.dense and not args.masks_file:
        raise CollapsekitError("nothing to write: pass --dense OUT and/or --masks-file PATH")
    state, masks = load_sparse(args.checkpoint, with_masks=True)
    written = []
    if args.dense:
        dense = save_state(state, args.dense, read_sparse_meta(args.checkpoint))
        written += [dense, sidecar_path(dense)]  # the sidecar names the model for collapsekit
    if args.masks_file:
        written.append(mask_io.save(masks, args.masks_file))
    for path in written:
        print(f"wrote {path}")
    return 0
