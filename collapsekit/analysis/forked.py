"""Independent questions of one analysis answered in forked processes, one per idle CPU.

A report's per-level flows are independent of each other and each is mostly
Python (an interpreter over a few hundred graph nodes), so threads would wait on
one another's GIL; a forked child shares the parent's analysis (trace, weights,
magnitude index) copy-on-write and needs nothing sent to it. The items wait in a
queue (a pipe holding their positions): the parent and each child take the next
one as they finish one, and each child sends its answers back pickled through a
pipe (they are small: a FlowResult is dicts of channel indices and one count per
layer). Where `fork` is unavailable
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


_ITEM = 4  # bytes of one item position in the queue pipe
_QUEUE_ITEMS = 4096 // _ITEM  # what any Linux pipe holds (one page, where a user's pipes are over their limit):
# the whole queue is written before any fork


def map_forked(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """[fn(x) for x in items], shared among this process and up to `workers` - 1 forked children.

    The items are a queue that every process takes its next item from as it finishes one (their costs differ:
    put the dearest first), so none waits on another's share. A child that fails loses nothing: the parent
    answers every item no process sent back."""
    workers = min(workers, len(items))
    if workers < 2 or not can_fork() or len(items) > _QUEUE_ITEMS:
        return [fn(x) for x in items]
    queue, fill = os.pipe()
    with os.fdopen(fill, "wb") as out:  # all of it before any fork: each read takes one whole position
        out.write(b"".join(i.to_bytes(_ITEM, "little") for i in range(len(items))))
    children = []  # (pid, read end)
    received: set[int] = set()  # child pids reaped
    try:
        for _ in range(1, workers):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: answer what it takes, send it, leave without running the caller's code
                os.close(read)
                code = 0
                try:
                    payload = pickle.dumps(_take(fn, items, queue), protocol=pickle.HIGHEST_PROTOCOL)
                    with os.fdopen(write, "wb") as out:
                        out.write(payload)
                except BaseException:  # noqa: BLE001 - the parent answers what this child took
                    code = 1
                finally:
                    os._exit(code)
            os.close(write)
            children.append((pid, read))
        answered = dict(_take(fn, items, queue))
        for pid, read in children:
            with os.fdopen(read, "rb") as inp:
                data = inp.read()
            _, status = os.waitpid(pid, 0)
            received.add(pid)
            if status == 0 and data:
                answered.update(pickle.loads(data))  # our own child's bytes
    except BaseException:  # an error or an interrupt here reaches the caller; no child is left behind
        for pid, read in children:
            if pid not in received:
                with contextlib.suppress(OSError):  # it may have left already
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):  # closed already where its answers were read
                    os.close(read)
                with contextlib.suppress(ChildProcessError):  # reaped already
                    os.waitpid(pid, 0)
        raise
    finally:
        os.close(queue)
    return [answered[i] if i in answered else fn(x) for i, x in enumerate(items)]


def _take(fn: Callable[[T], R], items: Sequence[T], queue: int) -> list[tuple[int, R]]:
    """(position, answer) of every item this process takes from the queue pipe until it is empty."""
    done = []
    while len(position := os.read(queue, _ITEM)) == _ITEM:
        i = int.from_bytes(position, "little")
        done.append((i, fn(items[i])))
    return done


__all__ = ["can_fork", "map_forked"]
