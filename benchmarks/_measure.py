"""Shared benchmark plumbing: run a job in a fresh process and measure its time and peak extra RSS.

Peak memory is what the user's process sees: its resident high-water mark
(`VmHWM`, reset via clear_refs just before the call) minus the RSS before it,
under the default allocator. It sees torch's allocations, which tracemalloc does
not. Not `ru_maxrss`: clear_refs does not reset it, and a process started by
fork/vfork + exec inherits its parent's high-water mark through exec. A job run
right after its parent wrote a 2 GB checkpoint read 1181 MiB "extra" by
ru_maxrss, exactly the parent's 1568 MiB peak, where its own was 799 MiB; the
JSON keeps ru_maxrss beside it for comparison. `pinned=True` reruns a job with
the glibc settings below, which return freed mid-sized blocks at once; users do
not run with them, so that figure is printed only beside the default one.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's threads and of its children that it has waited for (the
    report's forked workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(fn) -> dict:
    """Runs `fn()` here; returns seconds, CPU seconds (cpu_seconds) and peak extra resident MiB over the RSS
    before it."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    before = _status_kib("VmRSS")
    cpu = cpu_seconds()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    peak = _status_kib("VmHWM")  # this process's own high-water mark since the reset
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; may be the parent's (see above)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_extra_mib": (peak - before) / 1024,
            "ru_maxrss_extra_mib": (maxrss - before) / 1024}


_CHILDREN: list[float] = []  # MiB each forked worker held of its own (forked_children_measured)


@contextlib.contextmanager
def forked_children_measured():
    """Measures the report's forked flow workers (collapsekit/analysis/forked.py) while the body runs: each
    child's resident growth over its RSS at the fork (new pages, at their peak) plus its private dirty pages
    when it leaves (the pages it copied on write, and again the new ones it still holds): an upper bound of
    the memory it added to the machine. Yields the list the figures are appended to (MiB, one per child)."""
    import collapsekit.analysis.forked as forked

    real_fork, real_exit = os.fork, os._exit
    read_end, write_end = os.pipe()

    def fork():
        pid = real_fork()
        if pid == 0:
            Path("/proc/self/clear_refs").write_text("5")
            start = _status_kib("VmRSS")

            def leave(code):
                dirty = sum(int(line.split()[1]) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()
                            if line.startswith("Private_Dirty:"))
                os.write(write_end, f"{(_status_kib('VmHWM') - start + dirty) / 1024}\n".encode())
                real_exit(code)

            forked.os._exit = leave  # the child's own copy of the module: the parent's is untouched
        return pid

    _CHILDREN.clear()
    forked.os.fork = fork
    try:
        yield _CHILDREN
    finally:
        forked.os.fork, forked.os._exit = real_fork, real_exit
        os.close(write_end)
        with os.fdopen(read_end) as inp:
            _CHILDREN.extend(float(line) for line in inp.read().split())


# glibc keeps freed mid-sized blocks on its heap; these settings hand them back at
# once, so the high-water mark counts live memory only (never the default here).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def in_subprocess(job: str, pinned: bool = False, threads: int | None = None, **kwargs) -> dict:
    """Runs `benchmarks/jobs.py JOB` with JSON kwargs in a fresh interpreter and returns its JSON.
    `threads` sets torch's intra-op threads there (BENCH_THREADS); default: torch's own count."""
    script = Path(__file__).with_name("jobs.py")
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV and k != "BENCH_THREADS"}
    env.update(ALLOCATOR_ENV if pinned else {}, **({"BENCH_THREADS": str(threads)} if threads else {}))
    out = subprocess.run([sys.executable, str(script), job, json.dumps(kwargs)], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_seconds(module: str, after: str = "torch") -> float:
    """Seconds a fresh interpreter spends importing `module` once `after` is imported: what every CLI
    call pays before its first line of work (the `after` modules are paid by the other side too)."""
    code = (f"import time, {after}\nstart = time.perf_counter()\nimport {module}\n"
            "print(time.perf_counter() - start)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def command_seconds(argv: list[str], env: dict | None = None) -> float:
    """Wall seconds of a whole command in a fresh process (interpreter start and imports included)."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


@contextlib.contextmanager
def busy(n: int = 2):
    """`n` processes that each keep one CPU busy (a Python spin loop) for the duration: a loaded machine."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let them start spinning
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """Median with the range of repeated measurements: '0.71 [0.69-0.80]'."""
    ordered = sorted(values)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else sum(ordered[len(ordered) // 2 - 1:][:2]) / 2
    if len(ordered) == 1:
        return fmt.format(median)
    return f"{fmt.format(median)} [{fmt.format(ordered[0])}-{fmt.format(ordered[-1])}]"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def verdict(value: float, goal: float) -> str:
    return f"{value:.2f} (goal <= {goal:g}: {'met' if value <= goal else 'MISSED'})"
