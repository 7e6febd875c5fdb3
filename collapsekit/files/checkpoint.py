"""Checkpoints: safetensors weights plus a JSON sidecar saying how they were made; loading runs no pickled code."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError

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
    from safetensors.torch import save_model

    from collapsekit.version import __version__

    path = Path(out_path)
    if path.suffix == ".json":
        raise CollapsekitError(f"checkpoint path {path} must not end in .json (that name is its sidecar)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp), metadata={"format": "pt", "collapsekit": __version__})
    os.replace(tmp, path)
    document = {**meta, SHA_KEY: _sha256(path)}
    text = json.dumps(document, indent=2, sort_keys=True, default=_json_default) + "\n"
    side = sidecar_path(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, side)
    return path


def read_meta(path) -> dict:
    """The sidecar metadata of a weights file, or {} when it has none."""
    side = sidecar_path(path)
    if not side.is_file():
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
    if _is_safetensors(path):
        shapes = _safetensors_shapes(path)
        _check_sha(path)
        _check_fits(model, shapes, path)
        from safetensors.torch import load_model

        try:
            load_model(model, str(path), strict=True)
        except Exception as exc:  # noqa: BLE001 - any failure here is the file's
            raise CollapsekitError(f"checkpoint {path} could not be loaded: {_first_line(exc)}") from None
    else:
        state = _torch_state(path)
        _check_fits(model, {k: tuple(v.shape) for k, v in state.items()}, path)
        _fill_tied(model, state)
        try:
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001
            raise CollapsekitError(f"checkpoint {path} could not be loaded: {_first_line(exc)}") from None
    return model


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    if path.suffix in TORCH_SUFFIXES:
        return False
    with open(path, "rb") as fh:
        return fh.read(4) != b"PK\x03\x04"  # torch.save writes a zip archive


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        # Opening parses and bounds-checks the header: a truncated file fails here.
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError and OSError alike
        raise CollapsekitError(f"checkpoint {path} is corrupt or truncated: {_first_line(exc)}") from None


def _check_sha(path: Path) -> None:
    expected = read_meta(path).get(SHA_KEY)
    if expected and expected != _sha256(path):
        raise CollapsekitError(f"checkpoint {path} is corrupt or truncated: its sha256 differs from the one "
                               f"recorded in {sidecar_path(path).name}")


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CollapsekitError(f"checkpoint {path} holds more than tensors; refusing to unpickle it "
                               f"({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file...
        raise CollapsekitError(f"checkpoint {path} is corrupt or truncated: {_first_line(exc)}") from None
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


def _storage_key(tensor: torch.Tensor):
    try:
        ptr = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return ptr or None


def _tied_groups(model: nn.Module) -> dict[str, list[str]]:
    """name -> every state_dict name sharing its storage (tied weights count once)."""
    groups: dict = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(_storage_key(tensor) or name, []).append(name)
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)  # Path, torch.device, dtype...


__all__ = ["save", "read_meta", "load_into", "sidecar_path"]
