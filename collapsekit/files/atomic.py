"""One way to write a file: to a temporary sibling, fsync, then rename over the target.

A crash or a full disk mid-write leaves either the old file or the new one, never a
truncated mix (the rename is atomic on POSIX and Windows within one directory).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Returns `path` after `write(tmp)` filled a temporary sibling that is then fsynced and renamed onto it.

    `write` receives the temporary path and writes it by any means (safetensors,
    json, text); on any exception the temporary file is removed and the target
    is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Returns `path` after writing `text` (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


__all__ = ["atomic_write", "atomic_write_text"]
