"""Arguments and loaders shared by subcommands: which model, which checkpoint, which data, which device."""
from __future__ import annotations

import argparse
import os
import tempfile
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
              help=f"data set: {', '.join(data.names())}, or package.module:loader returning a DataBundle "
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


def check_outputs(args: argparse.Namespace) -> None:
    """Raise CollapsekitError naming the option and path unless every output option given can be written.

    A folder is created (parents too) and a file is created in it and removed
    again: the one test that sees read-only mounts, permissions and quotas alike.
    """
    for dest, flag, kind in getattr(args, "_outputs", None) or ():
        value = getattr(args, dest, None)
        if value:
            check_writable(value, flag, kind)


def check_writable(path, flag: str, kind: str = "dir") -> None:
    """Raise CollapsekitError unless `path` (a folder, or a file when `kind` is "file") can be written."""
    p = Path(path)
    if kind == "file" and p.is_dir():
        raise CollapsekitError(f"{flag} {path} is a directory; name a file in it")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise CollapsekitError(f"{flag} {path} exists and is not a directory")
    folder = p if kind == "dir" else p.parent
    blocker = next((a for a in (folder, *folder.parents) if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CollapsekitError(f"{flag} {path} cannot be written: {blocker} is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".collapsekit-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise CollapsekitError(f"{flag} {path} cannot be written: {exc.strerror or exc}") from None


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path(s) it names and the system's reason."""
    paths = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{paths}: {reason}" if paths else f"{type(exc).__name__}: {reason}"


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
    native = data.native_shape(name) if name in data.names() else (10, 3, 32)

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


def load_model(args: argparse.Namespace, stream: bool = False, on_meta: bool | None = None):
    """(model, meta): the model named by --model or the checkpoint's sidecar, with the checkpoint's weights.

    `meta` is the sidecar (or {}) updated with the spec and shapes actually used,
    which `load_data` then follows. `stream=True` loads nothing: the caller streams
    the weights (`ck.analyze(..., checkpoint=)`), and the model is built under
    `torch.device("meta")` unless `on_meta=False` (a question that runs the model on
    data needs its non-persistent buffers, which only a real build computes).
    """
    from collapsekit.files import checkpoint
    from collapsekit.models import names, resolve

    path = getattr(args, "checkpoint", None)
    if path:
        check_checkpoint_path(path, directory_ok=stream)
    # A checkpoint folder holding one model.safetensors has its sidecar beside that file.
    described = Path(path) / "model.safetensors" if path and Path(path).is_dir() else Path(path or "")
    meta = checkpoint.read_meta(described) if path and described.is_file() else {}
    spec, num_classes, in_channels, input_size = model_shapes(args, meta)
    if not spec:
        where = f"{checkpoint.sidecar_path(described)} does not exist" if path else "no --checkpoint was given"
        raise CollapsekitError(f"no model given: pass --model (zoo: {', '.join(names())}, or package.module:factory); "
                               f"{where}")
    seed = getattr(args, "seed", None)
    if seed is not None:  # a fresh model's initialisation repeats with --seed
        from collapsekit.training.train import seed_everything

        seed_everything(seed)
    shapes = dict(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    if stream and (on_meta is None or on_meta):
        import torch

        with torch.device("meta"):
            model = resolve(spec, **shapes)
    else:
        model = resolve(spec, **shapes)
    if path and not stream:
        checkpoint.load_into(model, path)
    return model, {**meta, "model": spec, "num_classes": num_classes, "in_channels": in_channels,
                   "input_size": input_size}


def check_checkpoint_path(path, directory_ok: bool = False) -> None:
    """Raise CollapsekitError unless `path` is a weights file (or, where `directory_ok`, a sharded checkpoint folder)."""
    from collapsekit.files.stream import INDEX_NAME, SINGLE_NAME

    p = Path(path)
    if p.is_dir():
        if directory_ok and ((p / INDEX_NAME).is_file() or (p / SINGLE_NAME).is_file()):
            return
        found = sorted(q.name for q in p.iterdir() if q.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"))
        found.sort(key=lambda name: name != SINGLE_NAME)
        hint = f"; did you mean {p / found[0]}?" if found else " holding no weights file (.safetensors, .pt)"
        raise CollapsekitError(f"checkpoint {path} is a directory{hint}")
    if not p.is_file():
        raise CollapsekitError(f"checkpoint {path} not found")


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


__all__ = ["add_output_arg", "check_outputs", "check_writable", "os_error_line", "add_model_args", "add_data_args", "add_device_args", "add_mt_arg", "MT_HELP", "load_model", "load_data", "model_shapes"]
