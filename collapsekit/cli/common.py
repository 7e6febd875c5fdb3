"""Arguments and loaders shared by subcommands: which model, which checkpoint, which data, which device."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch

from collapsekit import data, models
from collapsekit.analysis.lazy import lazy_modules
from collapsekit.errors import CollapsekitError
from collapsekit.files import checkpoint
from collapsekit.files.stream import INDEX_NAME, SINGLE_NAME, Checkpoint, materialize
from collapsekit.models.meta import on_meta as meta_device
from collapsekit.spec import fraction, keyword_defaults, load_callable
from collapsekit.training.train import default_input_size, seed_everything

DEFAULT_TOKENS = 16  # the example sequence length of a token model given no --tokens


def _add_once(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    # --input-size belongs to both the model and the data group; whichever is added first wins.
    if any(flag in parser._option_string_actions for flag in flags):
        return
    parser.add_argument(*flags, **kwargs)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add --model, --checkpoint, --num-classes, --in-channels, --input-size and the input options."""
    _add_once(parser, "--model", metavar="NAME",
              help="zoo name (see `collapsekit.models.names()`) or package.module:factory; "
                   "defaults to the one recorded next to --checkpoint")
    _add_once(parser, "--checkpoint", metavar="PATH",
              help="weights to load: a .safetensors file (its .json sidecar gives model and shapes), a folder "
                   "(Hugging Face sharded layout, or holding model.safetensors) or a plain torch state_dict")
    _add_once(parser, "--num-classes", type=int, metavar="N",
              help="model outputs (default: checkpoint, then data, then the factory's own default)")
    _add_once(parser, "--in-channels", type=int, metavar="C",
              help="input channels, or features for sequences (default: checkpoint, then data)")
    _add_once(parser, "--input-size", type=int, metavar="S",
              help="input height = width, or steps for sequences (default: checkpoint, then data)")
    add_input_args(parser)


def add_input_args(parser: argparse.ArgumentParser) -> None:
    """Add --input-shape and --tokens: the example input of every command that takes --model.

    Without --data they are the input traced; with --data they must describe the
    data's inputs (checked by `load_data`), since the data decides what the model sees.
    """
    _add_once(parser, "--input-shape", type=int, nargs="+", metavar="N",
              help="example input shape including the batch, e.g. 1 3 32 32 (default: from the model, or --data)")
    _add_once(parser, "--tokens", type=int, metavar="L",
              help="token model: random input_ids of sequence length L (and decoder_input_ids for an "
                   f"encoder-decoder), vocabulary from the model's config (default: {DEFAULT_TOKENS} for a model "
                   "whose input is an embedding)")


def add_data_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """Add --data, --data-path and (if not there yet) --input-size."""
    _add_once(parser, "--data", metavar="NAME", required=required,
              help=f"data set: {', '.join(data.names())} (the embedded text corpus, for causal LMs), "
                   "text:PATH (your .txt/.jsonl), or package.module:loader returning a DataBundle "
                   "(default: the checkpoint's)")
    _add_once(parser, "--data-path", metavar="DIR",
              help="folder of a downloaded data set (cifar10: the python batches; har: 'UCI HAR Dataset')")
    _add_once(parser, "--input-size", type=int, metavar="S",
              help="resize images to S x S (digits is 8 x 8; 32 fits CIFAR-shaped nets)")


def add_output_arg(parser: argparse.ArgumentParser, *flags: str, kind: str = "dir", **kwargs) -> None:
    """Add an option naming something the command writes (`kind` "dir" or "file"); `check_outputs`
    then proves it writable before any long work starts (a run is never lost to a bad --out)."""
    action = parser.add_argument(*flags, **kwargs)
    parser.set_defaults(_outputs=[*(parser.get_default("_outputs") or []), (action.dest, flags[0], kind)])


def check_outputs(args: argparse.Namespace) -> list[Path]:
    """Raise CollapsekitError naming the option and path unless every output option given can be written;
    returns the folders this created (deepest first), for `remove_empty` should the command then fail.

    A folder is created (parents too) and a file is created in it and removed
    again: the one test that sees read-only mounts, permissions and quotas alike.
    """
    created = []
    for dest, flag, kind in getattr(args, "_outputs", None) or ():
        value = getattr(args, dest, None)
        if value:
            created += check_writable(value, flag, kind)
    return created


def remove_empty(folders: list[Path]) -> None:
    """Removes those of `folders` (deepest first) that are still empty: a failed command leaves no empty
    output folder behind that it created itself."""
    for folder in folders:
        with contextlib.suppress(OSError):  # holds something now, or is gone already
            folder.rmdir()


def check_writable(path, flag: str, kind: str = "dir") -> list[Path]:
    """Raise CollapsekitError unless `path` (a folder, or a file when `kind` is "file") can be written; returns
    the folders it created to find out (deepest first)."""
    p = Path(path)
    if kind == "file" and p.is_dir():
        raise CollapsekitError(f"{flag} {path} is a directory; name a file in it")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise CollapsekitError(f"{flag} {path} exists and is not a directory")
    folder = p if kind == "dir" else p.parent
    blocker = next((a for a in (folder, *folder.parents) if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CollapsekitError(f"{flag} {path} cannot be written: {blocker} is a file, not a directory")
    missing = [a for a in (folder, *folder.parents) if not a.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".collapsekit-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        remove_empty(missing)
        raise CollapsekitError(f"{flag} {path} cannot be written: {exc.strerror or exc}") from None
    return missing


def is_main_process() -> bool:
    """True unless this is a torchrun rank other than 0 (only rank 0 prints)."""
    return os.environ.get("RANK", "0") == "0"


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path(s) it names and the system's reason."""
    paths = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{paths}: {reason}" if paths else f"{type(exc).__name__}: {reason}"


def add_sparsity_arg(parser: argparse.ArgumentParser, help: str = "global sparsity in [0, 1), or N%%") -> None:
    """Add the required --sparsity of a command that prunes to one level."""
    parser.add_argument("--sparsity", type=sparsity_arg, required=True, metavar="S", help=help)


def sparsity_arg(text: str) -> float:
    """argparse type of --sparsity: a fraction (0.95) or a percent (95%), read by `spec.fraction` as
    `sparsity=` is in Python; the range is checked where the sparsity is used (one-line error)."""
    try:
        return fraction(text)
    except CollapsekitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


MT_HELP = ("Minimum Threshold, read as mt= in Python: an integer is a count of weights per layer (96), a "
           "decimal or N%% a percent of all prunable weights (0.05 and 0.05%% are both 0.05 %%)")


def add_mt_arg(parser: argparse.ArgumentParser) -> None:
    """Add --mt, resolved by `collapsekit.analysis.magnitudes.resolve_mt` exactly as the Python `mt=`."""
    _add_once(parser, "--mt", metavar="MT", help=MT_HELP)


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """Add --device (auto picks CUDA when present) and --seed."""
    _add_once(parser, "--device", default="auto", metavar="DEV", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    _add_once(parser, "--seed", type=int, default=0, help="seed for initialisation, shuffling and synthetic data")


def add_training_job_args(parser: argparse.ArgumentParser) -> None:
    """Add what every command that trains needs: the model, the data and the device options."""
    add_model_args(parser)
    add_data_args(parser)
    add_device_args(parser)


def add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    """Add the optimizer flags that train and fine-tune share; unset, each takes the model family's default."""
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the model family's)")
    parser.add_argument("--batch-size", type=int, help="batch size over all processes (default: the model family's)")
    parser.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="default: the model family's")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    parser.add_argument("--weight-decay", type=float, help="default: the model family's (5e-4 with SGD)")


def model_shapes(args: argparse.Namespace, meta: dict) -> tuple[str | None, int | None, int | None, int | None]:
    """(spec, num_classes, in_channels, input_size): explicit arguments, then the sidecar, then --data.

    From --data, input_size is the data's native size, raised for nets that need
    more (`collapsekit.training.train.default_input_size`: MobileNet on digits -> 32).
    A shape nothing asks for is None: a `package.module:factory` then keeps its own
    default (`models.resolve`), a zoo model takes 10 classes, 3 channels, 32 x 32.
    """
    spec = getattr(args, "model", None) or meta.get("model")
    name = getattr(args, "data", None) or meta.get("data")
    native = data.native_shape(name) if name in data.names() or data.is_text(name) else (None, None, None)
    if spec and ":" not in spec:
        native = tuple(n if n is not None else z for n, z in zip(native, (10, 3, 32)))

    def pick(attr: str, key: str, fallback: int | None) -> int | None:
        value = getattr(args, attr, None)
        value = value if value is not None else meta.get(key) if meta.get(key) is not None else fallback
        return None if value is None else int(value)

    # Without a checkpoint, an explicit --input-size/--in-channels reshape the
    # data, so the model follows whatever the data will look like.
    size = native[2]
    if spec and name in data.names():
        size = default_input_size(spec, name) or size
    return spec, pick("num_classes", "num_classes", native[0]), pick("in_channels", "in_channels", native[1]), \
        pick("input_size", "input_size", size)


def shapes_from_input(args: argparse.Namespace) -> None:
    """Let --input-shape imply --in-channels/--input-size where those were not given."""
    shape = getattr(args, "input_shape", None)
    if not shape or len(shape) < 3:
        return
    spec = getattr(args, "model", None)
    sequence = models.input_shape(spec, 1, 2) == (1, 2, 1) if spec else False
    channels, size = (shape[-1], shape[1]) if sequence else (shape[1], shape[-1])
    if getattr(args, "in_channels", None) is None:
        args.in_channels = channels
    if getattr(args, "input_size", None) is None:
        args.input_size = size


def example_input(args: argparse.Namespace, meta: dict, model=None, bundle=None):
    """The example input to trace: token ids from --tokens, a tensor from --input-shape, else --data's
    first example, else a random tensor of the model's recorded shape."""
    if getattr(args, "tokens", None) is not None:
        return token_inputs(model, args.tokens)
    shape = getattr(args, "input_shape", None)
    if shape:
        if any(d <= 0 for d in shape):
            raise CollapsekitError(f"--input-shape must be positive integers, got {shape}")
        embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if isinstance(embed, torch.nn.Embedding):
            return torch.randint(0, embed.num_embeddings, tuple(shape))
        return torch.randn(*shape)
    if bundle is not None:
        return bundle.example_input()
    if _token_vocabulary(model):  # an image-shaped tensor means nothing to an embedding
        return token_inputs(model, DEFAULT_TOKENS)
    if data.is_text(meta.get("data")) and meta.get("num_classes") and meta.get("input_size"):
        # trained on text, no config to read: token ids of one context window
        return torch.randint(0, int(meta["num_classes"]), (1, int(meta["input_size"])),
                             generator=torch.Generator().manual_seed(0))
    spec = meta.get("model") or getattr(args, "model", None)
    in_channels = meta.get("in_channels") or getattr(args, "in_channels", None) or 3
    input_size = meta.get("input_size") or getattr(args, "input_size", None) or 32
    return torch.randn(*models.input_shape(spec, in_channels, input_size))


def _token_vocabulary(model) -> int | None:
    """The vocabulary size of a model whose input goes through an embedding table (a token model), else None."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return vocab if isinstance(embed, torch.nn.Embedding) and vocab else None


def token_inputs(model, length: int) -> dict:
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


def check_input_matches(args: argparse.Namespace, bundle) -> None:
    """Raise CollapsekitError when --input-shape or --tokens describe other inputs than the data set's."""
    x = bundle.example_input()
    x = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, (tuple, list)) else x
    shape = getattr(args, "input_shape", None)
    if shape and tuple(shape[1:]) != tuple(x.shape[1:]):
        raise CollapsekitError(f"--input-shape {' '.join(map(str, shape))} does not describe {bundle.name}'s inputs "
                               f"{list(x.shape)} (the data decides the input; drop --input-shape or reshape the "
                               "data with --in-channels/--input-size)")
    tokens = getattr(args, "tokens", None)
    if tokens is not None and (x.is_floating_point() or x.shape[-1] != tokens):
        raise CollapsekitError(f"--tokens {tokens} does not describe {bundle.name}'s inputs "
                               f"({list(x.shape)} {str(x.dtype).removeprefix('torch.')}); drop --tokens")


def load_model(args: argparse.Namespace, stream: bool = False, on_meta: bool | None = None):
    """(model, meta): the model named by --model or the checkpoint's sidecar, with the checkpoint's weights.

    `meta` is the sidecar (or {}) updated with the spec and shapes actually used,
    which `load_data` then follows. `stream=True` loads nothing: the caller streams
    the weights (`ck.analyze(..., checkpoint=)`), and the model is built under
    the meta device (initialisers skipped: models/meta.py) unless `on_meta=False` (a question that runs the model on
    data needs its non-persistent buffers, which only a real build computes).
    """
    shapes_from_input(args)
    path = resolve_checkpoint(args)
    described = Path(path or "")  # a sharded folder has no sidecar
    meta = checkpoint.read_meta(described) if path and described.is_file() else {}
    spec, num_classes, in_channels, input_size = model_shapes(args, meta)
    if not spec:
        if path and described.is_file():  # a damaged file is the first thing to say, not its missing sidecar
            checkpoint.check_readable(described)
        where = f"{checkpoint.sidecar_path(described)} does not exist" if path else "no --checkpoint was given"
        raise CollapsekitError(f"no model given: pass --model (zoo: {', '.join(models.names())}, or "
                               f"package.module:factory); {where}")
    # A text model's factory may take the vocabulary and context (num_classes and input_size, for text).
    text = data.is_text(getattr(args, "data", None) or meta.get("data"))
    offered = {"vocab_size": num_classes, "context_length": input_size} if text else None
    seed = getattr(args, "seed", None)
    if seed is not None:  # a fresh model's initialisation repeats with --seed
        seed_everything(seed)
    shapes = dict(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    if stream and (on_meta is None or on_meta):
        with meta_device():
            model = models.resolve(spec, offered=offered, **shapes)
    else:
        model = models.resolve(spec, offered=offered, **shapes)
    if path and stream and lazy_modules(model):  # lazy modules take their shapes from the file's header
        checkpoint.shape_lazy(model, Checkpoint(path).shapes)
    if path and not stream:
        if Path(path).is_dir() or path.endswith(".index.json"):  # a sharded checkpoint (Hugging Face layout)
            model = _load_sharded(model, path)
        else:
            checkpoint.load_into(model, path)
    if ":" in spec:  # what the factory took by its own defaults shapes the example input, as the flags would
        own = keyword_defaults(load_callable(spec, "model"), [k for k, v in shapes.items() if v is None])
        shapes.update({k: v for k, v in own.items() if isinstance(v, int)})
    return model, {**meta, "model": spec, **shapes}


def _load_sharded(model, path):
    """A copy of `model` holding the tensors of the sharded checkpoint at `path`; every one the model has must be there."""
    source = Checkpoint(path)
    names: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(name)
    missing = [group[0] for group in names.values() if source.first_of(group) is None]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CollapsekitError(f"checkpoint {path} does not fit the model: missing {', '.join(missing[:3])}{more}")
    return materialize(model, source)


def resolve_checkpoint(args: argparse.Namespace) -> str | None:
    """--checkpoint made a weights file or a sharded folder (and stored back in `args`), or a one-line error.

    A folder holding the Hugging Face index is a sharded checkpoint; one holding
    model.safetensors (what `train --out` and a small Hugging Face save write)
    means that file; any other folder names the weights files it does hold.
    """
    path = getattr(args, "checkpoint", None)
    if not path:
        return None
    p = Path(path)
    if p.is_dir() and not (p / INDEX_NAME).is_file():
        if not (p / SINGLE_NAME).is_file():
            found = sorted(q.name for q in p.iterdir() if q.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"))
            hint = f"; did you mean {p / found[0]}?" if found else " holding no weights file (.safetensors, .pt)"
            raise CollapsekitError(f"checkpoint {path} is a directory{hint}")
        args.checkpoint = path = str(p / SINGLE_NAME)
    elif not p.exists():
        raise CollapsekitError(f"checkpoint {path} not found")
    return path


def load_job(args: argparse.Namespace):
    """(model, meta, bundle) of a command that trains: `load_model`, then `load_data` shaped like it."""
    model, meta = load_model(args)
    return model, meta, load_data(args, meta)


def print_result(result, fmt: str, to_text) -> None:
    """Print `result` as its JSON document (`fmt` "json") or as `to_text(result)`."""
    print(json.dumps(result.to_dict(), indent=2) if fmt == "json" else to_text(result))


def load_data(args: argparse.Namespace, meta: dict):
    """The DataBundle for --data (default: the checkpoint's), shaped like the model in `meta`."""
    name = getattr(args, "data", None) or meta.get("data")
    if not name:
        raise CollapsekitError(f"no data given: pass --data ({', '.join(data.names())})")
    path = getattr(args, "data_path", None) or (meta.get("data_path") if name == meta.get("data") else None)
    input_size = getattr(args, "input_size", None) or meta.get("input_size")
    channels = getattr(args, "in_channels", None) or meta.get("in_channels")
    bundle = data.load(name, path=path, input_size=input_size, channels=channels, seed=getattr(args, "seed", 0) or 0)
    check_input_matches(args, bundle)
    classes = meta.get("num_classes")
    if classes is not None and classes != bundle.num_classes:
        raise CollapsekitError(f"the model has {classes} outputs but {name} has {bundle.num_classes} classes "
                               f"(pass --num-classes {bundle.num_classes})")
    return bundle


__all__ = ["add_input_args", "example_input", "token_inputs", "shapes_from_input", "check_input_matches",
           "add_output_arg", "add_sparsity_arg", "check_outputs", "check_writable", "remove_empty", "os_error_line", "add_model_args", "add_data_args",
           "add_device_args", "add_mt_arg", "add_optimizer_args", "MT_HELP", "load_model", "load_data", "load_job",
           "print_result", "model_shapes"]
