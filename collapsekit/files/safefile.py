"""collapsekit's safetensors files: a format tag and version in the header, no pickles, one-line errors, no shared memory."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from collapsekit.errors import CollapsekitError


def storage_key(tensor: torch.Tensor) -> int | None:
    """The address of the memory `tensor` views (None for an empty tensor or one without CPU storage)."""
    try:
        ptr = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return ptr or None


def separate_storages(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` with each one that shares memory with an earlier one, or is not contiguous, copied.

    safetensors refuses to save two entries over the same memory (views of one
    buffer, tied weights written under every name); the others stay as they are.
    """
    seen: set = set()
    out = {}
    for key, t in tensors.items():
        ptr = storage_key(t)
        out[key] = t.clone() if ((ptr is not None and ptr in seen) or not t.is_contiguous()) else t
        seen.add(ptr)
    return out


def format_version(meta: dict) -> int:
    """The header's `format_version` (files before it was introduced say `version`; none at all reads as 1)."""
    raw = meta.get("format_version", meta.get("version", "1"))
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise CollapsekitError(f"format_version {raw!r} is not an integer") from None


@contextlib.contextmanager
def open_tagged(path, what: str, newest: dict[str, int]) -> Iterator[tuple[object, dict]]:
    """Yields (safe_open handle, header metadata) of a safetensors file whose format is a key of `newest`.

    `newest` maps each accepted format tag to the newest format_version this
    collapsekit reads; a newer file is refused rather than misread. `what`
    names the file in errors ("mask file"). A missing, truncated, foreign or
    newer file, and any failure while the caller reads it inside the `with`,
    raise a one-line CollapsekitError naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CollapsekitError(f"{what} {path} not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            fmt = meta.get("format")
            if fmt not in newest:
                raise CollapsekitError(f"{path} is not a collapsekit {what} (format {fmt!r})")
            try:
                version = format_version(meta)
            except CollapsekitError as exc:
                raise CollapsekitError(f"{what} {path}: {exc}") from None
            if version > newest[fmt]:
                raise CollapsekitError(f"{what} {path} has format_version {version}, newer than the {newest[fmt]} "
                                       "this collapsekit reads: upgrade collapsekit")
            yield fh, meta
    except CollapsekitError as exc:
        if str(path) in str(exc):
            raise
        raise CollapsekitError(f"{what} {path} is corrupt: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - truncated file, bad header, missing key
        text = str(exc).strip().splitlines()
        raise CollapsekitError(f"{what} {path} is corrupt or truncated: {type(exc).__name__}: "
                               f"{text[0] if text else ''}") from None


def read_tagged(path, fmt: str, what: str, json_keys: tuple[str, ...] = (),
                newest: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header metadata with `json_keys` decoded, tensors) of a safetensors file whose header says format `fmt`.

    `newest` (default: any) is the newest format_version accepted. `what` names
    the file in errors; a missing, truncated, foreign or newer file raises
    CollapsekitError rather than a library traceback.
    """
    with open_tagged(path, what, {fmt: newest if newest is not None else 1 << 30}) as (fh, meta):
        for key in json_keys:
            meta[key] = json.loads(meta[key])
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    return meta, tensors


__all__ = ["open_tagged", "read_tagged", "format_version"]
