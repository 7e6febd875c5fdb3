"""benchmarks/_measure.py: what the speed figures are made of counts what it says it counts."""
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _measure import measure  # noqa: E402


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_measure_counts_the_cpu_of_a_forked_child_that_wall_time_hides():
    def work():
        pid = os.fork()
        if pid == 0:
            _spin(0.3)
            os._exit(0)
        _spin(0.3)  # the parent works as long, beside it
        os.waitpid(pid, 0)

    stats = measure(work)
    assert stats["cpu_seconds"] >= 0.55  # both processes' 0.3 s
    assert stats["seconds"] >= 0.3


def test_measure_counts_no_cpu_for_a_sleep():
    stats = measure(lambda: time.sleep(0.2))
    assert stats["seconds"] >= 0.2 and stats["cpu_seconds"] < 0.1
