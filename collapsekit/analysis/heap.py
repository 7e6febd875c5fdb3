"""Memory bounds of a long analysis: work in blocks of rows, and freed heap handed back to the OS.

Large weights are read a block of rows at a time (`row_blocks`), so no
temporary the size of a whole weight exists.

glibc keeps freed blocks below its (self-raising, up to 32 MiB) mmap threshold on
the heap, so a report that frees one layer's masks and allocates the next one's
grows the process's resident memory with blocks it no longer uses. `malloc_trim`
returns those pages; elsewhere (macOS, musl, Windows) this is a no-op.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed() -> None:
    """Returns the heap's free pages to the OS (glibc `malloc_trim(0)`); no-op without glibc."""
    trim = _trim()
    if trim is not None:
        trim(0)


# Work on about this many weights frees temporaries (keep-masks, float blocks) that glibc keeps on its
# heap; trimming once per such stretch keeps the high-water mark near live memory at about one call per
# 256 M weights of work (more often costs speed: each trim walks the heap and freed pages fault back in).
STRETCH = 1 << 28
# Weights streamed from a file: memory is what streaming is for. A 1.1 B bf16 report's peak fell from 0.47x to
# 0.34x of its file with a trim four times as often, its time rose from 28 to 31 s (one run each).
STREAMED_STRETCH = 1 << 26
_pending = [0]
_stretch = [STRETCH]


@contextlib.contextmanager
def trimmed_every(numel: int):
    """Within the body, `release_after` hands freed heap back after `numel` weights of work (restored after)."""
    before, _stretch[0] = _stretch[0], numel
    try:
        yield
    finally:
        _stretch[0] = before


def release_after(numel: int) -> None:
    """Counts work on `numel` weights; `release_freed()` once a stretch of them (STRETCH, or the
    `trimmed_every` in force) has been done since the last."""
    _pending[0] += numel
    if _pending[0] >= _stretch[0]:
        _pending[0] = 0
        release_freed()


def rows_per_block(row_size: int, budget: int) -> int:
    """Rows of `row_size` elements that fit in a block of `budget` elements (at least one)."""
    return max(1, budget // max(1, row_size))


def row_blocks(rows: int, row_size: int, budget: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive blocks of `rows` rows, each of at most `budget` elements (or one row)."""
    step = rows_per_block(row_size, budget)
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]
