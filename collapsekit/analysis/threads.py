"""Intra-op threads for the analysis: as many as there are idle CPUs, never more than the user set.

torch starts one intra-op thread per core. The analysis is mostly numpy and
small single-tensor work; where other processes keep cores busy, torch's
threads wait on each other at every op (OpenMP barriers spin, then sleep), and
the README's ResNet-20 report ran 2.76x slower beside two busy processes than
alone, where a fair share of the CPU is 2x. `analysis_threads()` counts the
CPUs this process may use (its affinity) that no other runnable thread holds,
and runs its body with at most that many threads (at least one), then gives
the user back exactly the count they had: their settings are theirs.

That count is read once, at the start; load that arrives later (another
process starting mid-report) would make every op's threads wait on each other
again, and a GPT-2 report that takes 4 s ran 67 s so. The flows, the bulk of a
report's time, are thousands of small ops that one thread runs as fast as two
(GPT-2, ViT, MobileNet-V2: within noise), so they run on one (`one_thread`)
whatever the machine's state; the passes over every weight keep the chosen count.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

import torch

_depth = 0  # nested scopes keep the count chosen by the outermost one
_user_threads = 0  # the caller's count when the outermost scope began: no phase goes above it


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_elsewhere(samples: int = 5, interval: float = 0.002) -> int:
    """Threads of other processes running or waiting for a CPU now (Linux; 0 elsewhere).

    /proc/loadavg's fourth field counts runnable threads machine-wide; this
    process's own (its main thread, torch workers still spinning after an op)
    are taken off. The least of a few reads a few ms apart: a busy process is
    runnable in all of them, a passing one in few.
    """
    try:
        found = []
        for i in range(samples):
            if i:
                time.sleep(interval)
            runnable = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            found.append(runnable - _own_runnable())
        return max(0, min(found))
    except (OSError, ValueError, IndexError):
        return 0


def _own_runnable() -> int:
    own = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        own += stat[stat.rindex(")") + 2] == "R"  # the state follows the parenthesised name
    return own


def chosen_threads(limit: int | None = None, samples: int = 5) -> int:
    """The analysis's intra-op threads: idle usable CPUs, at least 1, at most `limit`
    (default torch.get_num_threads())."""
    idle = min(usable_cpus(), (os.cpu_count() or 1) - busy_elsewhere(samples))
    return max(1, min(torch.get_num_threads() if limit is None else limit, idle))


@contextlib.contextmanager
def _threads(n: int):
    """Runs the body with `n` intra-op threads; restores the count it found afterwards."""
    before = torch.get_num_threads()
    try:
        if n != before:
            torch.set_num_threads(n)
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def analysis_threads():
    """Runs the body with chosen_threads() intra-op threads; restores the caller's count afterwards."""
    global _depth, _user_threads
    before = torch.get_num_threads()
    if _depth == 0:
        _user_threads = before
    _depth += 1
    try:
        with _threads(chosen_threads() if _depth == 1 else before) as chosen:
            yield chosen
    finally:
        _depth -= 1


def phase_threads():
    """Inside an analysis scope, runs a pass over the weights (trace, index, cover) with the CPUs idle
    now, never more than the caller's count: load that arrived since the scope began is seen. Outside
    one, the body runs as it is."""
    return _threads(chosen_threads(_user_threads, samples=2) if _depth else torch.get_num_threads())


def one_thread():
    """Runs the body with one intra-op thread; restores the count it found afterwards."""
    return _threads(1)


SWITCH_INTERVAL = 0.001  # seconds; Python's default is 0.005


@contextlib.contextmanager
def quick_gil_handoff(interval: float = SWITCH_INTERVAL):
    """Python's GIL switch interval at most `interval` for the body, then the caller's again.

    Where two Python threads share the work (the trace beside the magnitude index,
    Analysis._trace_beside_index), each numpy or torch call that releases the GIL
    must win it back before it returns, and a thread asking for it waits until the
    holder's interval runs out. A torch.export trace holds the GIL almost throughout,
    so at the default 5 ms the index's reads of ViT-base's weights took 1.5-2.0 s
    beside it against 0.5 s alone; at 1 ms they take 0.3-0.4 s, and the trace is
    no slower (same-pass A/B, docs/performance.md).
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, interval))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def in_threads(fn, items, workers: int, cost=None) -> list:
    """[fn(item) for item in items], shared among `workers` threads (the caller one of them) where fn is
    work that releases the GIL (numpy's passes over a layer's weights); in the caller alone for one worker
    or one item. `cost(item)` orders the items, dearest first, so that no thread is left with the largest
    one at the end."""
    items = list(items)
    if workers < 2 or len(items) < 2:
        return [fn(item) for item in items]
    order = sorted(range(len(items)), key=lambda j: -cost(items[j])) if cost else list(range(len(items)))
    results: list = [None] * len(items)
    lock, queue, failures = threading.Lock(), iter(order), []

    def work():
        while not failures:
            with lock:
                j = next(queue, None)
            if j is None:
                return
            try:
                results[j] = fn(items[j])
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller below
                failures.append(exc)

    helpers = [threading.Thread(target=work, name="collapsekit-reader", daemon=True)
               for _ in range(min(workers, len(items)) - 1)]
    for t in helpers:
        t.start()
    work()
    for t in helpers:
        t.join()
    if failures:
        raise failures[0]
    return results
