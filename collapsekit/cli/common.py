"""Arguments and loaders shared by subcommands: which model, which checkpoint, which data, which device."""
from __future__ import annotations

import argparse
from pathlib import Path

from collapsekit.errors import CollapsekitError


def _add_once(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    # --input-size belongs to both the model and the data group; whichever is added first wins.
    if any(flag in parser._option_string_actions for flag in flags):
        return
    parser.add_argument(*flags, **kwargs)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add --model, --checkpoint, --num-classes, --in-channels and --input-size."""
    _add_once(parser, "--model", metavar="NAME",
              help="zoo name (see `collapsekit.models.names()`) or package.module:factory; "
                   "defaults to the one recorded next to --checkpoint")
    _add_once(parser, "--checkpoint", metavar="PATH",
              help="weights to load: a .safetensors file (its .json sidecar gives model and shapes) "
                   "or a plain torch state_dict")
    _add_once(parser, "--num-classes", type=int, metavar="N", help="model outputs (default: checkpoint, then data)")
    _add_once(parser, "--in-channels", type=int, metavar="C",
              help="input channels, or features for sequences (default: checkpoint, then data)")
    _add_once(parser, "--input-size", type=int, metavar="S",
              help="input height = width, or steps for sequences (default: checkpoint, then data)")


def add_data_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """Add --data, --data-path and (if not there yet) --input-size."""
    from collapsekit import data

    _add_once(parser, "--data", metavar="NAME", required=required,
              help=f"data set: {', '.join(data.names())} (the embedded text corpus, for causal LMs), "
                   "text:PATH (your .txt/.jsonl), or package.module:loader returning a DataBundle "
                   "(default: the checkpoint's)")
    _add_once(parser, "--data-path", metavar="DIR",
              help="folder of a downloaded data set (cifar10: the python batches; har: 'UCI HAR Dataset')")
    _add_once(parser, "--input-size", type=int, metavar="S",
              help="resize images to S x S (digits is 8 x 8; 32 fits CIFAR-shaped nets)")


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


def model_shapes(args: argparse.Namespace, meta: dict) -> tuple[str | None, int, int, int]:
    """(spec, num_classes, in_channels, input_size): explicit arguments, then the sidecar, then --data, then the zoo's.

    From --data, input_size is the data's native size, raised for nets that need
    more (`collapsekit.training.train.default_input_size`: MobileNet on digits -> 32).
    """
    from collapsekit import data

    spec = getattr(args, "model", None) or meta.get("model")
    name = getattr(args, "data", None) or meta.get("data")
    native = data.native_shape(name) if name in data.names() or data.is_text(name) else (10, 3, 32)

    def pick(attr: str, key: str, fallback: int) -> int:
        value = getattr(args, attr, None)
        return int(value if value is not None else meta.get(key) if meta.get(key) is not None else fallback)

    # Without a checkpoint, an explicit --input-size/--in-channels reshape the
    # data, so the model follows whatever the data will look like.
    size = native[2]
    if spec and name in data.names():
        from collapsekit.training.train import default_input_size

        size = default_input_size(spec, name) or size
    return spec, pick("num_classes", "num_classes", native[0]), pick("in_channels", "in_channels", native[1]), \
        pick("input_size", "input_size", size)


def load_model(args: argparse.Namespace, stream: bool = False):
    """(model, meta): the model named by --model or the checkpoint's sidecar, with the checkpoint's weights.

    `meta` is the sidecar (or {}) updated with the spec and shapes actually used,
    which `load_data` then follows. `stream=True` builds the model under
    `torch.device("meta")` and loads nothing: the caller streams the weights.
    """
    from collapsekit.files import checkpoint
    from collapsekit.models import names, resolve

    path = getattr(args, "checkpoint", None)
    meta = checkpoint.read_meta(path) if path and Path(path).is_file() else {}
    if path and not meta and not (Path(path).is_file() or (stream and Path(path).is_dir())):
        raise CollapsekitError(f"checkpoint {path} not found")
    spec, num_classes, in_channels, input_size = model_shapes(args, meta)
    if not spec:
        where = f"{checkpoint.sidecar_path(path)} does not exist" if path else "no --checkpoint was given"
        raise CollapsekitError(f"no model given: pass --model (zoo: {', '.join(names())}, or package.module:factory); "
                               f"{where}")
    from collapsekit import data

    # A text model's factory may take the vocabulary and context (num_classes and input_size, for text).
    text = data.is_text(getattr(args, "data", None) or meta.get("data"))
    offered = {"vocab_size": num_classes, "context_length": input_size} if text else None
    seed = getattr(args, "seed", None)
    if seed is not None:  # a fresh model's initialisation repeats with --seed
        from collapsekit.training.train import seed_everything

        seed_everything(seed)
    if stream:
        import torch

        with torch.device("meta"):
            model = resolve(spec, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                            offered=offered)
    else:
        model = resolve(spec, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                        offered=offered)
    if path and not stream:
        checkpoint.load_into(model, path)
    return model, {**meta, "model": spec, "num_classes": num_classes, "in_channels": in_channels,
                   "input_size": input_size}


def load_data(args: argparse.Namespace, meta: dict):
    """The DataBundle for --data (default: the checkpoint's), shaped like the model in `meta`."""
    from collapsekit import data

    name = getattr(args, "data", None) or meta.get("data")
    if not name:
        raise CollapsekitError(f"no data given: pass --data ({', '.join(data.names())})")
    path = getattr(args, "data_path", None) or (meta.get("data_path") if name == meta.get("data") else None)
    input_size = getattr(args, "input_size", None) or meta.get("input_size")
    channels = getattr(args, "in_channels", None) or meta.get("in_channels")
    bundle = data.load(name, path=path, input_size=input_size, channels=channels, seed=getattr(args, "seed", 0) or 0)
    classes = meta.get("num_classes")
    if classes is not None and classes != bundle.num_classes:
        raise CollapsekitError(f"the model has {classes} outputs but {name} has {bundle.num_classes} classes "
                               f"(pass --num-classes {bundle.num_classes})")
    return bundle


__all__ = ["add_model_args", "add_data_args", "add_device_args", "add_mt_arg", "MT_HELP", "load_model", "load_data", "model_shapes"]
