"""Reading collapsekit's own safetensors files: a format tag in the header, no pickles, one-line errors."""
from __future__ import annotations

from pathlib import Path

import torch

from collapsekit.errors import CollapsekitError


def read_tagged(path, fmt: str, what: str, json_keys: tuple[str, ...] = ()) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header metadata with `json_keys` decoded, tensors) of a safetensors file whose header says format `fmt`.

    `what` names the file in errors ("mask file"); a missing, truncated or foreign
    file raises CollapsekitError rather than a library traceback.
    """
    import json

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CollapsekitError(f"{what} {path} not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            if meta.get("format") != fmt:
                raise CollapsekitError(f"{path} is not a collapsekit {what} (format {meta.get('format')!r})")
            for key in json_keys:
                meta[key] = json.loads(meta[key])
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except CollapsekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated file, bad header, missing key
        raise CollapsekitError(f"{what} {path} is corrupt: {type(exc).__name__}: {exc}") from None
    return meta, tensors
