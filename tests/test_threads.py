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
        monkeypatch.setattr(threads, "busy_elsewhere", lambda b=busy: b)
        assert threads.chosen_threads() == expected, busy


def test_scope_restores_the_users_count_even_on_error_and_nested_scopes_keep_the_outer_choice(monkeypatch,
                                                                                                user_threads):
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 99)
    with pytest.raises(RuntimeError):
        with threads.analysis_threads() as n:
            assert n == 1 and torch.get_num_threads() == 1
            monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0)
            with threads.analysis_threads() as inner:
                assert inner == 1 and torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == user_threads


def test_analyze_runs_with_the_chosen_threads_and_leaves_the_users(monkeypatch, user_threads):
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 99)
    seen = []
    original = analysis_module.trace
    monkeypatch.setattr(analysis_module, "trace", lambda *a: seen.append(torch.get_num_threads()) or original(*a))
    model = ck.models.create("lenet5", num_classes=10, in_channels=1, input_size=8)
    report = ck.analyze(model, torch.randn(1, 1, 8, 8), sparsities=[0.5, 0.9])
    assert seen == [1] and torch.get_num_threads() == user_threads
    assert len(report.levels) == 2


def test_own_running_thread_is_not_counted_as_busy_elsewhere():
    assert threads._own_runnable() >= 1  # this test's thread is running while it reads
    assert threads.busy_elsewhere(samples=2, interval=0.0) >= 0
