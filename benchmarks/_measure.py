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

import json
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


def measure(fn) -> dict:
    """Runs `fn()` here; returns seconds and peak extra resident MiB over the RSS before it."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")  # this process's own high-water mark since the reset
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; may be the parent's (see above)
    return {"seconds": seconds, "peak_extra_mib": (peak - before) / 1024,
            "ru_maxrss_extra_mib": (maxrss - before) / 1024}


# glibc keeps freed mid-sized blocks on its heap; these settings hand them back at
# once, so the high-water mark counts live memory only (never the default here).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def in_subprocess(job: str, pinned: bool = False, **kwargs) -> dict:
    """Runs `benchmarks/jobs.py JOB` with JSON kwargs in a fresh interpreter and returns its JSON."""
    import os

    script = Path(__file__).with_name("jobs.py")
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    out = subprocess.run([sys.executable, str(script), job, json.dumps(kwargs)], check=True,
                         capture_output=True, text=True, env={**env, **(ALLOCATOR_ENV if pinned else {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def verdict(value: float, goal: float) -> str:
    return f"{value:.2f} (goal <= {goal:g}: {'met' if value <= goal else 'MISSED'})"
