"""Python's cyclic garbage collector during an analysis: the objects that existed before it are frozen.

A flow makes tens of thousands of small objects (autograd nodes, abstract values),
so the collector runs hundreds of times per report, and every run of its oldest
generation walks every tracked object of the process: with torch and
transformers imported, about 430 000 of them. On GPT-2 124M that was 0.3 s of a
4.7 s report. `gc.freeze` (meant for this: objects that live for the process)
moves the objects alive when the analysis starts out of the collector's view, so
its runs only see what the analysis made; `gc.unfreeze` gives them back at the
end. The collector still runs, so cycles the analysis makes are still freed. A
process that froze objects itself, or that disabled the collector, is left as it is.
"""
from __future__ import annotations

import contextlib
import gc
import threading

_lock = threading.Lock()
_depth = 0  # analyses running now, in any thread
_froze = False  # the outermost one froze the heap (and unfreezes it when the last one ends)


@contextlib.contextmanager
def old_objects_frozen():
    """Runs the body with the objects alive on entry frozen (gc.freeze); nests and spans threads."""
    global _depth, _froze
    with _lock:
        if _depth == 0:
            _froze = gc.isenabled() and gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _froze:
                gc.unfreeze()
                _froze = False


__all__ = ["old_objects_frozen"]
