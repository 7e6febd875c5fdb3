"""Checkpoints: safetensors weights plus a JSON sidecar saying how they were made; loading runs no pickled code."""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parameter import is_lazy
from safetensors import safe_open
from safetensors.torch import load_file, save_file, save_model

from collapsekit.errors import CollapsekitError, first_line
from collapsekit.files import sparse
from collapsekit.files.atomic import atomic_write, atomic_write_text
from collapsekit.files.jsontext import json_default
from collapsekit.files.safefile import separate_storages, storage_key
from collapsekit.version import __version__

TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}
SHA_KEY = "weights_sha256"  # sidecar key: lets load_into notice a corrupted payload


def sidecar_path(path) -> Path:
    """The JSON sidecar of a weights file: `runs/x/model.safetensors` -> `runs/x/model.json`."""
    return Path(path).with_suffix(".json")


def save(model: nn.Module, out_path, meta: dict) -> Path:
    """Path of the safetensors file written with every parameter and persistent buffer of `model`.

    Tied tensors are stored once (safetensors' save_model). `meta` (model spec,
    shapes, data, args, accuracy, seed...) goes to the `<stem>.json` sidecar
    with the file's sha256 added. Both files are replaced atomically.
    """
    path = _weights_path(out_path)
    atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata=_plain_header()))
    return _write_sidecar(path, meta)


def save_state(state: dict[str, torch.Tensor], out_path, meta: dict) -> Path:
    """Path of a plain safetensors file of the state_dict `state`, readable by any safetensors tool, + sidecar.

    Names that share one tensor (tied weights) are each written out, since a
    plain file has no aliases; `meta` goes to the sidecar as in `save`.
    """
    path = _weights_path(out_path)
    tensors = separate_storages({key: t.detach().to("cpu") for key, t in state.items()})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=_plain_header()))
    return _write_sidecar(path, meta)


def save_pruned(model: nn.Module, masks: dict[str, torch.Tensor], out_path, meta: dict) -> Path:
    """Path of the one sparse checkpoint (`files.sparse`) of `model` and `masks`, + sidecar.

    `meta` goes into the file's header, so the file alone says which model it
    is, and to the `<stem>.json` sidecar with the file's sha256, as in `save`.
    """
    path = sparse.write_sparse(model.state_dict(keep_vars=False), masks, _weights_path(out_path), meta=meta,
                               owner=type(model).__name__)
    return _write_sidecar(path, meta)


def _plain_header() -> dict[str, str]:
    return {"format": "pt", "collapsekit": __version__}  # "pt": what transformers' loaders expect


def _weights_path(out_path) -> Path:
    path = Path(out_path)
    if path.suffix == ".json":
        raise CollapsekitError(f"checkpoint path {path} must not end in .json (that name is its sidecar)")
    return path


def _write_sidecar(path: Path, meta: dict) -> Path:
    document = {**meta, SHA_KEY: _sha256(path)}
    text = json.dumps(document, indent=2, sort_keys=True, default=json_default) + "\n"
    atomic_write_text(sidecar_path(path), text)
    return path


def read_meta(path) -> dict:
    """The sidecar metadata of a weights file; a sparse checkpoint's own header meta when it has no sidecar; or {}."""
    side = sidecar_path(path)
    if not side.is_file():
        if Path(path).is_file() and sparse.is_sparse_checkpoint(path):
            return sparse.read_sparse_meta(path)
        return {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CollapsekitError(f"checkpoint metadata {side} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CollapsekitError(f"checkpoint metadata {side} is not a JSON object")
    return meta


def load_into(model: nn.Module, path) -> nn.Module:
    """`model` with its parameters and buffers replaced by the checkpoint's, strictly and in place.

    Reads safetensors (what `save` writes), or a plain state_dict saved with
    torch.save (.pt/.pth/.bin/.ckpt) through `torch.load(weights_only=True)`:
    never pickled code. The model is untouched when the weights do not fit it.
    """
    path = Path(path)
    if not path.is_file():
        raise CollapsekitError(f"checkpoint {path} not found")
    if sparse.is_sparse_checkpoint(path):
        # Our pruned file: decoded to a plain state_dict, the masks' zeros included.
        state = sparse.load_sparse(path)
        _check_sha(path)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        shape_lazy(model, shapes)
        _check_fits(model, shapes, path)
        _load_state(model, state, path)
    elif _is_safetensors(path):
        shapes = _safetensors_shapes(path)
        _check_sha(path)
        shape_lazy(model, shapes)
        _check_fits(model, shapes, path)
        # load_file + load_state_dict rather than load_model: a plain file (`save_state`,
        # other tools) holds every name of a tied tensor, which load_model rejects.
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure here is the file's
            raise CollapsekitError(f"checkpoint {path} could not be loaded: {first_line(exc)}") from None
        _load_state(model, state, path)
    else:
        state = _torch_state(path)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        shape_lazy(model, shapes)
        _check_fits(model, shapes, path)
        _load_state(model, state, path)
    return model


def shape_lazy(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """`model` with every lazy parameter or buffer (nn.LazyLinear before its first forward) that `shapes`
    names given that shape, on its own device, as torch's load_state_dict does; the values come with the load."""
    for name, tensor in model.state_dict(keep_vars=True).items():
        if is_lazy(tensor) and name in shapes:
            tensor.materialize(shapes[name])
    return model


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    _fill_tied(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise CollapsekitError(f"checkpoint {path} could not be loaded: {first_line(exc)}") from None


def _corrupt(path, exc: Exception) -> CollapsekitError:
    return CollapsekitError(f"checkpoint {path} is corrupt or truncated: {first_line(exc)}")


def check_readable(path) -> None:
    """Raises the one-line "corrupt or truncated" error of a weights file that cannot be opened (a safetensors
    header that fails its bounds checks, a torch.save archive without its directory); reads no tensor data.
    A file in torch.save's older pickle-stream format passes: only loading it could tell."""
    path = Path(path)
    if _is_safetensors(path):
        _safetensors_shapes(path)
        return
    import zipfile

    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            return  # torch.save's older (pickle-stream) format: only loading it tells
    try:
        with zipfile.ZipFile(path):  # torch.save's archive: its central directory sits at the end of the file
            pass
    except (OSError, zipfile.BadZipFile) as exc:
        raise _corrupt(path, exc) from None


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    if path.suffix in TORCH_SUFFIXES:
        return False
    with open(path, "rb") as fh:
        return fh.read(4) != b"PK\x03\x04"  # torch.save writes a zip archive


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        # Opening parses and bounds-checks the header: a truncated file fails here.
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError and OSError alike
        raise _corrupt(path, exc) from None


def _check_sha(path: Path) -> None:
    # The sidecar's hash only: a sparse checkpoint's header meta may carry the hash of the dense file it came from.
    expected = read_meta(path).get(SHA_KEY) if sidecar_path(path).is_file() else None
    if expected and expected != _sha256(path):
        raise CollapsekitError(f"checkpoint {path} is corrupt or truncated: its sha256 differs from the one "
                               f"recorded in {sidecar_path(path).name}")


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text is a paragraph (with terminal escapes) about loading it unsafely: name the object instead.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"a pickled {found.group(1)}" if found else "pickled Python objects"
        raise CollapsekitError(f"checkpoint {path} holds {what}, not a state_dict of tensors, and collapsekit never "
                               "unpickles code: save model.state_dict() (torch.save) or a .safetensors file") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file...
        raise _corrupt(path, exc) from None
    for key in ("state_dict", "model_state_dict", "model"):  # common training-script wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CollapsekitError(f"checkpoint {path} is not a state_dict of tensors")
    for prefix in ("module.", "_orig_mod."):  # DataParallel, torch.compile
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _tied_groups(model: nn.Module) -> dict[str, list[str]]:
    """name -> every state_dict name sharing its storage (tied weights count once)."""
    groups: dict = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(storage_key(tensor) or name, []).append(name)
    return {name: members for members in groups.values() for name in members}


def _check_fits(model: nn.Module, shapes: dict, path: Path) -> None:
    expected = model.state_dict()
    tied = _tied_groups(model)
    missing = [k for k in expected if k not in shapes and not any(m in shapes for m in tied.get(k, [k]))]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} {list(shapes[k])} vs model {list(v.shape)}"  # in the model's order
             for k, v in expected.items() if k in shapes and tuple(shapes[k]) != tuple(v.shape)]
    problems = []
    for label, items in (("shape mismatch", wrong), ("missing", missing), ("unexpected", unexpected)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        cls = type(model).__name__
        raise CollapsekitError(f"checkpoint {path} does not fit the model ({cls}): {'; '.join(problems)}")


def _fill_tied(model: nn.Module, state: dict) -> None:
    # A state_dict saved without one name of a tied pair still loads strictly.
    for name, members in _tied_groups(model).items():
        if name not in state:
            source = next((m for m in members if m in state), None)
            if source is not None:
                state[name] = state[source]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["save", "save_state", "save_pruned", "read_meta", "load_into", "sidecar_path"]
