"""forked.py: answers shared with forked children equal the parent's own, in order, and a failing child costs
nothing but time."""
import os

import pytest

from collapsekit.analysis import forked
from collapsekit.analysis.forked import map_forked

pytestmark = pytest.mark.skipif(not forked.can_fork(), reason="no Linux fork here")


def test_children_answer_their_share_and_the_results_keep_the_items_order():
    import time

    parent = os.getpid()

    def fn(x):
        time.sleep(0.3 if os.getpid() == parent else 0.01)  # children that start late still find items left
        return x * x, os.getpid()

    out = map_forked(fn, list(range(7)), workers=3)
    assert [v for v, _ in out] == [x * x for x in range(7)]
    assert {pid for _, pid in out} - {parent}  # children answered some (the parent may find none left)


def test_items_are_taken_as_each_process_finishes_one_not_dealt_out():
    import time

    def fn(x):
        if x == 0:
            time.sleep(1.0)  # the dearest item first: whoever takes it, the other answers the rest meanwhile
        return os.getpid()

    out = map_forked(fn, list(range(7)), workers=2)
    others = [i for i in range(1, 7) if out[i] != out[0]]
    assert len(others) >= 5  # dealt round-robin, item 0's process would answer 2, 4 and 6 too


def test_a_child_that_dies_has_what_it_took_answered_here():
    parent = os.getpid()

    def fn(x):
        if os.getpid() != parent:
            os._exit(3)  # killed mid-item: no answers, no exception
        return x * 10

    assert map_forked(fn, list(range(5)), workers=2) == [0, 10, 20, 30, 40]


def test_one_worker_or_one_item_runs_here_without_a_fork():
    parent = os.getpid()
    assert map_forked(lambda x: os.getpid() == parent, [1, 2, 3], workers=1) == [True] * 3
    assert map_forked(lambda x: os.getpid() == parent, [1], workers=4) == [True]


def test_a_child_that_fails_has_what_it_took_answered_here():
    parent = os.getpid()

    def fn(x):
        if os.getpid() != parent:
            raise RuntimeError("child only")
        return x + 1

    assert map_forked(fn, [1, 2, 3, 4], workers=2) == [2, 3, 4, 5]


def test_an_error_here_reaches_the_caller_and_leaves_no_child_behind():
    import time

    parent = os.getpid()

    def fn(x):
        if os.getpid() == parent:
            raise ValueError("parent's own item")
        time.sleep(2.0)  # the child holds its item: the parent takes the other one meanwhile
        return x

    with pytest.raises(ValueError, match="parent's own item"):
        map_forked(fn, [0, 1], workers=2)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # every child was reaped


def test_a_report_whose_level_flows_ran_in_a_forked_child_is_the_serial_report(monkeypatch):
    import contextlib

    import torch

    import collapsekit as ck
    import collapsekit.analysis.analysis as analysis_mod
    from invariants import scramble

    torch.manual_seed(0)
    model = scramble(ck.models.create("mobilenet_v1", num_classes=5, in_channels=3, input_size=8,
                                      width_mult=0.25), 4)
    x = torch.randn(1, 3, 8, 8)
    levels = [0.5, 0.7, 0.8, 0.9, 0.94, 0.96, 0.98, 0.99]
    monkeypatch.setattr(analysis_mod, "can_fork", lambda: False)
    serial = analysis_mod.Analysis(model, x).report(levels)
    forks = []
    real_fork = os.fork

    def counted_fork():
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(analysis_mod, "can_fork", forked.can_fork)
    monkeypatch.setattr(os, "fork", counted_fork)
    monkeypatch.setattr(analysis_mod, "phase_threads", lambda: contextlib.nullcontext(2))  # two idle CPUs
    monkeypatch.setattr(analysis_mod, "FORK_WORTH_SECONDS", 0.0)  # these tiny flows are shared out too
    shared = analysis_mod.Analysis(model, x).report(levels)
    assert forks, "several levels needed their own flow: one child must have run some"
    assert shared.levels == serial.levels and shared.collapse_sparsity == serial.collapse_sparsity


def test_where_the_sparsest_level_is_alive_the_boundary_search_runs_beside_the_level_flows(monkeypatch):
    import contextlib

    import torch

    import collapsekit as ck
    import collapsekit.analysis.analysis as analysis_mod

    torch.manual_seed(0)
    model = ck.models.create("resnet20", num_classes=5, in_channels=3, input_size=8)
    x = torch.randn(1, 3, 8, 8)
    levels = [0.5, 0.7, 0.8, 0.9]  # every one alive, the denser ones with unused channels of their own
    monkeypatch.setattr(analysis_mod, "can_fork", lambda: False)
    serial = analysis_mod.Analysis(model, x).report(levels)
    assert not any(lv.collapsed for lv in serial.levels) and serial.collapse_sparsity > 0.9
    queued, after = [], []
    real_map, real_search = analysis_mod.map_forked, analysis_mod.Analysis.collapse_sparsity
    mapping = []

    def map_forked(fn, items, workers):
        queued.extend(items)
        mapping.append(1)
        try:
            return real_map(fn, items, workers)
        finally:
            mapping.pop()

    def search(self, known=()):
        if not mapping:
            after.append(known)
        return real_search(self, known)

    monkeypatch.setattr(analysis_mod, "can_fork", forked.can_fork)
    monkeypatch.setattr(analysis_mod, "map_forked", map_forked)
    monkeypatch.setattr(analysis_mod.Analysis, "collapse_sparsity", search)
    monkeypatch.setattr(analysis_mod, "phase_threads", lambda: contextlib.nullcontext(2))
    monkeypatch.setattr(analysis_mod, "FORK_WORTH_SECONDS", 0.0)
    shared = analysis_mod.Analysis(model, x).report(levels)
    assert queued[0] == ("boundary", [(shared.levels[-1].pruned, False)])  # first in the queue: the dearest
    assert [kind for kind, _ in queued[1:]] == ["flow"] * (len(queued) - 1) and len(queued) >= 3
    assert not after  # its answer came from the queue, not from a second search after the levels
    assert shared.levels == serial.levels and shared.collapse_sparsity == serial.collapse_sparsity


def test_flows_too_short_to_pay_for_a_fork_run_here(monkeypatch):
    import contextlib

    import torch

    import collapsekit as ck
    import collapsekit.analysis.analysis as analysis_mod
    from invariants import scramble

    forks = []
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or pytest.fail("forked for a tiny model"))
    monkeypatch.setattr(analysis_mod, "phase_threads", lambda: contextlib.nullcontext(2))
    torch.manual_seed(0)
    model = scramble(ck.models.create("mobilenet_v1", num_classes=5, in_channels=3, input_size=8,
                                      width_mult=0.25), 4)
    analysis_mod.Analysis(model, torch.randn(1, 3, 8, 8)).report([0.5, 0.7, 0.8, 0.9, 0.94, 0.96, 0.98, 0.99])
    assert not forks


def test_an_interrupt_while_waiting_for_a_child_kills_and_reaps_it(monkeypatch):
    import time

    parent = os.getpid()

    def fn(x):
        if os.getpid() != parent:
            time.sleep(30)  # a child still busy when the parent is interrupted
        return x

    real_waitpid = os.waitpid

    def interrupted(pid, options):
        if options == 0 and not interrupted.done:
            interrupted.done = True
            raise KeyboardInterrupt
        return real_waitpid(pid, options)

    interrupted.done = False
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *a, **k):  # the parent does not wait for the child's 30 s to read its pipe
        f = real_fdopen(fd, mode, *a, **k)
        if "r" in mode:
            f.read = lambda: b""
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(os, "waitpid", interrupted)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        map_forked(fn, [0, 1], workers=2)
    monkeypatch.undo()
    assert time.perf_counter() - start < 10  # killed, not waited for
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_a_process_that_started_cuda_does_not_fork(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert not forked.can_fork()
    parent = os.getpid()
    assert map_forked(lambda x: os.getpid() == parent, [1, 2, 3], workers=3) == [True] * 3
