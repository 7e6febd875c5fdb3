"""Shared benchmark plumbing: run a job in a fresh process and measure its time and peak extra RSS.

Peak memory comes from the kernel (VmHWM after resetting it via clear_refs), so
it sees torch's allocations, which tracemalloc does not.
"""
from __future__ import annotations

import json
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
    return {"seconds": seconds, "peak_extra_mib": (_status_kib("VmHWM") - before) / 1024}


# glibc keeps freed mid-sized blocks on its heap, so without this the high-water mark
# counts allocator retention, not live memory; both sides of a comparison get it.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def in_subprocess(job: str, **kwargs) -> dict:
    """Runs `benchmarks/jobs.py JOB` with JSON kwargs in a fresh interpreter and returns its JSON."""
    import os

    script = Path(__file__).with_name("jobs.py")
    out = subprocess.run([sys.executable, str(script), job, json.dumps(kwargs)], check=True,
                         capture_output=True, text=True, env={**os.environ, **ALLOCATOR_ENV})
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
