"""threads: the analysis runs with the idle CPUs' worth of intra-op threads and gives the user's count back."""
import pytest
import torch

import collapsekit as ck
import collapsekit.analysis.analysis as analysis_module
from collapsekit.analysis import threads


@pytest.fixture
def user_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_chosen_threads_are_the_idle_cpus_within_the_users_count(monkeypatch, user_threads):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    for busy, expected in [(0, 2), (2, 2), (3, 1), (4, 1), (9, 1)]:
        monkeypatch.setattr(threads, "busy_elsewhere", lambda *a, b=busy: b)
        assert threads.chosen_threads() == expected, busy


def test_scope_restores_the_users_count_even_on_error_and_nested_scopes_keep_the_outer_choice(monkeypatch,
                                                                                                user_threads):
    monkeypatch.setattr(threads, "busy_elsewhere", lambda *a: 99)
    with pytest.raises(RuntimeError):
        with threads.analysis_threads() as n:
            assert n == 1 and torch.get_num_threads() == 1
            monkeypatch.setattr(threads, "busy_elsewhere", lambda *a: 0)
            with threads.analysis_threads() as inner:
                assert inner == 1 and torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == user_threads


def _threads_seen(monkeypatch, module, name: str, busy: int) -> list[int]:
    """The intra-op thread counts `module.name` ran with during a small report, `busy` threads busy elsewhere."""
    monkeypatch.setattr(threads, "busy_elsewhere", lambda *a: busy)
    seen = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: seen.append(torch.get_num_threads()) or original(*a, **k))
    model = ck.models.create("lenet5", num_classes=10, in_channels=1, input_size=8)
    report = ck.analyze(model, torch.randn(1, 1, 8, 8), sparsities=[0.5, 0.9])
    assert len(report.levels) == 2
    return seen


def test_analyze_runs_with_the_chosen_threads_and_leaves_the_users(monkeypatch, user_threads):
    assert _threads_seen(monkeypatch, analysis_module, "trace", busy=99) == [1]
    assert torch.get_num_threads() == user_threads


def test_own_running_thread_is_not_counted_as_busy_elsewhere():
    assert threads._own_runnable() >= 1  # this test's thread is running while it reads
    assert threads.busy_elsewhere(samples=2, interval=0.0) >= 0


def test_a_phase_sees_load_that_arrived_after_the_scope_began_and_never_exceeds_the_users_count(monkeypatch,
                                                                                                 user_threads):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda *a: 0)
    with threads.analysis_threads() as n:
        assert n == 2
        monkeypatch.setattr(threads, "busy_elsewhere", lambda *a: 3)  # a process started mid-report
        with threads.phase_threads() as phase:
            assert phase == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "busy_elsewhere", lambda *a: 0)
        torch.set_num_threads(1)  # an inner scope lowered it: a phase may go back up to the user's 2
        with threads.phase_threads() as phase:
            assert phase == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == user_threads
    with threads.phase_threads() as outside:  # outside an analysis: left as it is
        assert outside == user_threads


def test_flows_run_on_one_thread_whatever_the_machine(monkeypatch, user_threads):
    from collapsekit.analysis import flow

    seen = _threads_seen(monkeypatch, flow, "_run_flow", busy=0)
    assert seen and set(seen) == {1} and torch.get_num_threads() == user_threads


def test_the_trace_beside_the_index_hands_the_gil_over_quickly_and_the_users_interval_comes_back(monkeypatch):
    import contextlib
    import sys

    seen = []
    real_trace = analysis_module.trace

    def trace(*args, beside, **kwargs):
        @contextlib.contextmanager
        def spied(method):  # the interval while the trace runs beside the index's thread
            with beside(method):
                seen.append(sys.getswitchinterval())
                yield

        return real_trace(*args, beside=spied, **kwargs)

    monkeypatch.setattr(analysis_module, "trace", trace)
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.004)
        ck.analyze(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)),
                   torch.randn(1, 4), sparsities=[0.5])
        assert seen == [pytest.approx(threads.SWITCH_INTERVAL, abs=2e-6)]
        assert sys.getswitchinterval() == pytest.approx(0.004, abs=2e-6)  # the user's own, not Python's default
        sys.setswitchinterval(0.0001)  # a user's shorter interval is kept
        ck.analyze(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)),
                   torch.randn(1, 4), sparsities=[0.5])
        assert seen[-1] == pytest.approx(0.0001, abs=2e-6) and sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)
    finally:
        sys.setswitchinterval(before)


def test_in_threads_keeps_the_items_order_shares_them_among_threads_and_raises_a_workers_error():
    import threading
    import time

    seen = set()

    def work(x):
        seen.add(threading.current_thread().name)
        time.sleep(0.01)  # releases the GIL, as numpy's passes do
        return x * x

    assert threads.in_threads(work, range(8), 2, cost=lambda x: x % 3) == [x * x for x in range(8)]
    assert len(seen) == 2 and threading.current_thread().name in seen  # the caller is one of the workers
    seen.clear()
    assert threads.in_threads(work, range(4), 1) == [0, 1, 4, 9] and seen == {threading.current_thread().name}

    def fail(x):
        if x == 3:
            raise ValueError("layer 3")
        return x

    with pytest.raises(ValueError, match="layer 3"):
        threads.in_threads(fail, range(6), 2)
    assert not [t for t in threading.enumerate() if t.name == "collapsekit-reader"]  # every helper joined


def test_in_threads_gives_the_dearest_items_out_first():
    import threading

    order = []
    lock = threading.Lock()

    def work(x):
        with lock:
            order.append(x)
        return x

    threads.in_threads(work, [1, 5, 2, 9], 2, cost=lambda x: x)
    assert order[:2] and set(order[:2]) <= {9, 5} and sorted(order) == [1, 2, 5, 9]
