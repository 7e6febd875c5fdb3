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
import select
import signal
import struct
import sys
from typing import Callable, NoReturn, Sequence, TypeVar

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

                def answer_and_send(write=write):
                    payload = pickle.dumps(_take(fn, items, queue), protocol=pickle.HIGHEST_PROTOCOL)
                    with os.fdopen(write, "wb") as out:
                        out.write(payload)

                _leave_after(answer_and_send)  # on failure the parent answers what this child took
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


def _leave_after(work: Callable[[], None]) -> NoReturn:
    """In a forked child: runs `work`, then leaves by `os._exit` (status 1 where it failed), never returning into
    the caller's code nor running its exit handlers."""
    code = 0
    try:
        work()
    except BaseException:  # noqa: BLE001 - the parent answers instead
        code = 1
    finally:
        os._exit(code)


def _take(fn: Callable[[T], R], items: Sequence[T], queue: int) -> list[tuple[int, R]]:
    """(position, answer) of every item this process takes from the queue pipe until it is empty."""
    done = []
    while len(position := os.read(queue, _ITEM)) == _ITEM:
        i = int.from_bytes(position, "little")
        done.append((i, fn(items[i])))
    return done


class Beside:
    """`fn(busy)` answered in a forked child while this process goes on with other work.

    Two threads of one process overlap only where both release the GIL: beside a
    torch.export trace (Python that holds it almost throughout) the magnitude
    index's passes over ViT-base's weights took 1.4 s against 0.3 s alone, each of
    their numpy calls waiting to win the GIL back. A child has its own interpreter,
    and shares the weights copy-on-write. In the child, `busy()` is True until this
    process calls `done()` (work worth doing only while this process is busy stops
    then). `result(fallback)` is the child's answer, or `fallback()` run here where
    the child failed; the child leaves by `os._exit` and never returns into the
    caller's code. The answer comes back through an anonymous in-memory file
    (`_send`, `_receive`), not a pipe.
    """

    def __init__(self, fn: Callable[[Callable[[], bool]], R]):
        busy_read, self._busy_write = os.pipe()
        self._file = _memory_file()
        self.pid = os.fork()
        if self.pid == 0:  # the child; on failure the parent runs the fallback
            os.close(self._busy_write)
            _leave_after(lambda: _send(self._file, fn(lambda: not select.select([busy_read], [], [], 0)[0])))
        os.close(busy_read)
        self._reaped = False

    def done(self) -> None:
        """This process's own work is over: the child's `busy()` turns False."""
        if self._busy_write >= 0:
            os.close(self._busy_write)
            self._busy_write = -1

    def result(self, fallback: Callable[[], R]) -> R:
        """The child's answer (after `done()`), or `fallback()` where it failed."""
        self.done()
        try:
            _, status = os.waitpid(self.pid, 0)
            self._reaped = True
            answer = _receive(self._file) if status == 0 else None
        except BaseException:  # an interrupt while waiting: no child is left behind
            self.cancel()
            raise
        finally:
            self._close_file()
        return answer[0] if answer is not None else fallback()

    def cancel(self) -> None:
        """Ends the child where its answer is no longer wanted (an error or an interrupt here)."""
        self.done()
        if not self._reaped:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self._reaped = True
        self._close_file()

    def _close_file(self) -> None:
        if self._file >= 0:
            os.close(self._file)
            self._file = -1


def _memory_file() -> int:
    """A file descriptor of an anonymous file in memory (Linux's memfd; a temporary file elsewhere)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("collapsekit-beside", os.MFD_CLOEXEC)
    import tempfile

    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())


_HEAD = struct.Struct("<QQ")  # pickle bytes, out-of-band buffers
_ALIGN = 64  # each buffer starts on a cache line, as numpy's own allocations do


def _send(fd: int, answer) -> None:
    """Writes `answer` to the file fd: pickle protocol 5, numpy's arrays as out-of-band buffers written
    from their own memory. `_receive` maps them back without a copy (a ViT-base index is 57 MB: pickled
    in-band through a pipe it cost 0.3 s; this way, one copy)."""
    buffers = []
    data = pickle.dumps((answer,), protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    offsets, at = [], _aligned(_HEAD.size + 16 * len(raws) + len(data))
    for r in raws:
        offsets.append(at)
        at = _aligned(at + r.nbytes)
    table = b"".join(struct.pack("<QQ", o, r.nbytes) for o, r in zip(offsets, raws))
    os.ftruncate(fd, at)
    os.pwrite(fd, _HEAD.pack(len(data), len(raws)) + table + data, 0)
    for offset, raw in zip(offsets, raws):
        view = memoryview(raw).cast("B")
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written


def _receive(fd: int):
    """What `_send` wrote to file fd, as the 1-tuple (answer,), its arrays on a private map of the file."""
    import mmap

    size = os.fstat(fd).st_size
    if size < _HEAD.size:
        return None
    memory = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    view = memoryview(memory)
    length, count = _HEAD.unpack_from(view, 0)
    table = [struct.unpack_from("<QQ", view, _HEAD.size + 16 * j) for j in range(count)]
    start = _HEAD.size + 16 * count
    return pickle.loads(view[start:start + length], buffers=[view[o:o + n] for o, n in table])  # our child's


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


__all__ = ["Beside", "can_fork", "map_forked"]
