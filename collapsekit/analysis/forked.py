"""Independent questions of one analysis answered in forked processes, one per idle CPU.

A report's per-level flows are independent of each other and each is mostly
Python (an interpreter over a few hundred graph nodes), so threads would wait on
one another's GIL; a forked child shares the parent's analysis (trace, weights,
magnitude index) copy-on-write and needs nothing sent to it. The items are dealt
out round-robin: the parent answers its share while each child answers its own
and sends the results back pickled through a pipe (they are small: a FlowResult
is dicts of channel indices and one count per layer). Where `fork` is unavailable
(Windows, macOS's default) or the process has started CUDA, one CPU is idle, or a
child fails, the parent answers everything itself: the results are the same either way. A child never returns
into the caller's code: it leaves by `os._exit`.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def can_fork() -> bool:
    """Linux's fork: copy-on-write and safe for numpy/torch CPU work (macOS's is not, Windows has none), in
    a process that has not started CUDA (a forked child cannot use it: torch refuses to re-initialise it)."""
    import torch

    return sys.platform.startswith("linux") and hasattr(os, "fork") and not torch.cuda.is_initialized()


def map_forked(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """[fn(x) for x in items], shared among this process and up to `workers` - 1 forked children."""
    workers = min(workers, len(items))
    if workers < 2 or not can_fork():
        return [fn(x) for x in items]
    children = []  # (pid, read end, the item positions it answers)
    for w in range(1, workers):
        share = list(range(w, len(items), workers))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: answer its share, send it, leave without running the caller's code
            os.close(read)
            code = 0
            try:
                payload = pickle.dumps([fn(items[i]) for i in share], protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(write, "wb") as out:
                    out.write(payload)
            except BaseException:  # noqa: BLE001 - the parent answers this share itself
                code = 1
            finally:
                os._exit(code)
        os.close(write)
        children.append((pid, read, share))
    results: list = [None] * len(items)
    received: dict[int, list | None] = {}  # child pid -> its answers (None: it failed), once reaped
    try:
        for i in range(0, len(items), workers):
            results[i] = fn(items[i])
        for pid, read, _ in children:
            with os.fdopen(read, "rb") as inp:
                data = inp.read()
            _, status = os.waitpid(pid, 0)
            received[pid] = pickle.loads(data) if status == 0 and data else None  # our own child's bytes
    except BaseException:  # an error or an interrupt here reaches the caller; no child is left behind
        for pid, read, _ in children:
            if pid not in received:
                with contextlib.suppress(OSError):  # it may have left already
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):  # closed already where its answers were read
                    os.close(read)
                with contextlib.suppress(ChildProcessError):  # reaped already
                    os.waitpid(pid, 0)
        raise
    for pid, _, share in children:
        answers = received[pid]
        for j, i in enumerate(share):
            results[i] = answers[j] if answers is not None else fn(items[i])
    return results

__all__ = ["can_fork", "map_forked"]
