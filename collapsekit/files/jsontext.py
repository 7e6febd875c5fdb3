"""JSON for the metadata collapsekit writes beside or inside its files: numpy/torch scalars, sets and paths as plain JSON."""
from __future__ import annotations


def json_default(obj):
    """The plain-JSON form of `obj` for `json.dumps(default=...)`: a number, a list, or its text."""
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)  # Path, torch.device, dtype...


__all__ = ["json_default"]
