"""forked.py: answers shared with forked children equal the parent's own, in order, and a failing child costs
nothing but time."""
import os

import pytest
import torch

from collapsekit.analysis import forked
from collapsekit.analysis.forked import map_forked

pytestmark = pytest.mark.skipif(not forked.can_fork(), reason="no Linux fork here")


def interrupt_first_wait(monkeypatch):
    """The parent's first blocking os.waitpid raises KeyboardInterrupt (a ^C while it waits on a child)."""
    real_waitpid = os.waitpid

    def interrupted(pid, options):
        if options == 0 and not interrupted.done:
            interrupted.done = True
            raise KeyboardInterrupt
        return real_waitpid(pid, options)

    interrupted.done = False
    monkeypatch.setattr(os, "waitpid", interrupted)


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


@pytest.mark.parametrize("exact", ["auto", False])
def test_where_the_sparsest_level_is_alive_the_boundary_search_runs_beside_the_level_flows(monkeypatch, exact):
    import contextlib

    import torch

    import collapsekit as ck
    import collapsekit.analysis.analysis as analysis_mod

    torch.manual_seed(0)
    model = ck.models.create("resnet20", num_classes=5, in_channels=3, input_size=8)
    x = torch.randn(1, 3, 8, 8)
    levels = [0.5, 0.7, 0.8, 0.9]  # every one alive, the denser ones with unused channels of their own
    monkeypatch.setattr(analysis_mod, "can_fork", lambda: False)
    serial = analysis_mod.Analysis(model, x, exact=exact).report(levels)
    assert not any(lv.collapsed for lv in serial.levels) and serial.collapse_sparsity > 0.9
    queued, after = [], []
    real_map, real_search = analysis_mod.map_forked, analysis_mod.Analysis.collapse_sparsity
    real_reach = analysis_mod.Analysis._element_reach
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

    def reach(self, k):
        if not mapping:
            after.append(k)
        return real_reach(self, k)

    monkeypatch.setattr(analysis_mod, "can_fork", forked.can_fork)
    monkeypatch.setattr(analysis_mod, "map_forked", map_forked)
    monkeypatch.setattr(analysis_mod.Analysis, "collapse_sparsity", search)
    monkeypatch.setattr(analysis_mod.Analysis, "_element_reach", reach)
    monkeypatch.setattr(analysis_mod, "phase_threads", lambda: contextlib.nullcontext(2))
    monkeypatch.setattr(analysis_mod, "FORK_WORTH_SECONDS", 0.0)
    monkeypatch.setattr(analysis_mod, "level_flows", lambda *args: None)  # per level (plain CNNs: one pass)
    an = analysis_mod.Analysis(model, x, exact=exact)
    shared = an.report(levels)
    assert queued[0] == ("boundary", [(shared.levels[-1].pruned, False)])  # first in the queue: the dearest
    # per channel (exact=False), the sparsest level's reach per element is asked last, beside the flows too
    reach_asked = [("reach", shared.levels[-1].pruned)] if an.channel_level else []
    assert an.channel_level == (exact is False)
    assert queued[len(queued) - len(reach_asked):] == reach_asked
    flows = queued[1:len(queued) - len(reach_asked)]
    assert [kind for kind, _ in flows] == ["flow"] * len(flows) and len(flows) >= 2
    assert not after  # the answers came from the queue, not from a second search after the levels
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

    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *a, **k):  # the parent does not wait for the child's 30 s to read its pipe
        f = real_fdopen(fd, mode, *a, **k)
        if "r" in mode:
            f.read = lambda: b""
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    interrupt_first_wait(monkeypatch)
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


# -- Beside: one answer computed in a child while the parent works --------------------------------------------
def test_beside_answers_from_a_child_with_its_arrays_intact_and_writable():
    import numpy as np

    parent = os.getpid()

    def fn(busy):
        return {"pid": os.getpid(), "a": np.arange(10, dtype=np.int32) * 3, "b": np.ones((3, 4)), "s": "text"}

    out = forked.Beside(fn).result(lambda: None)
    assert out["pid"] != parent and out["s"] == "text"
    assert out["a"].dtype == np.int32 and out["a"].tolist() == [3 * i for i in range(10)]
    assert out["b"].shape == (3, 4) and out["b"].sum() == 12
    out["b"][0, 0] = 5  # the user may change what came back
    assert out["b"].sum() == 16


def test_beside_busy_holds_until_the_parent_is_done():
    import time

    def fn(busy):
        spins = 0
        while busy():
            spins += 1
            time.sleep(0.01)
        return spins

    child = forked.Beside(fn)
    time.sleep(0.3)
    spins = child.result(lambda: -1)
    assert spins >= 5  # it kept going while the parent slept, and stopped once told


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_a_beside_child_that_fails_is_answered_by_the_fallback(how):
    def fn(busy):
        if how == "raise":
            raise ValueError("in the child")
        os._exit(3)

    assert forked.Beside(fn).result(lambda: "here") == "here"


def test_cancel_kills_and_reaps_a_busy_child():
    import time

    child = forked.Beside(lambda busy: time.sleep(30))
    start = time.perf_counter()
    child.cancel()
    assert time.perf_counter() - start < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_an_interrupt_while_waiting_for_a_beside_child_kills_and_reaps_it(monkeypatch):
    import time

    child = forked.Beside(lambda busy: time.sleep(30))
    interrupt_first_wait(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        child.result(lambda: None)
    monkeypatch.undo()
    assert time.perf_counter() - start < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


class ShapeBranched(torch.nn.Module):
    """A branch on an input's shape: fx cannot trace it, torch.export can."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(12, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 5)

    def forward(self, x):
        if x.shape[-1] == 12:
            x = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(x)))


def test_an_index_built_in_a_child_beside_an_export_gives_the_report_built_here(monkeypatch):
    import contextlib

    import collapsekit.analysis.analysis as analysis_mod

    torch.manual_seed(0)
    model, x = ShapeBranched(), torch.randn(1, 12)
    monkeypatch.setattr(analysis_mod, "can_fork", lambda: False)
    here = analysis_mod.Analysis(model, x)
    assert here.traced.method == "export"
    monkeypatch.setattr(analysis_mod, "can_fork", forked.can_fork)
    monkeypatch.setattr(analysis_mod, "phase_threads", lambda: contextlib.nullcontext(2))  # two idle CPUs
    children = []
    monkeypatch.setattr(analysis_mod, "Beside", lambda fn: children.append(1) or forked.Beside(fn))
    there = analysis_mod.Analysis(model, x)
    assert children == [1]
    assert there.index._tensors is there.tensors  # the weights are this process's, not a copy
    assert np_equal(there.index._cum, here.index._cum) and there.index.total == here.index.total
    assert "index" in there.timings.seconds  # the child's stage times came back
    assert there.report().levels == here.report().levels

    # a child that fails costs time only: the index is built here
    monkeypatch.setattr(forked, "_send", lambda fd, answer: os._exit(1))
    again = analysis_mod.Analysis(model, x)
    assert children == [1, 1] and again.report().levels == here.report().levels


def test_beside_an_fx_trace_the_index_is_built_by_a_thread(monkeypatch):
    import contextlib

    import collapsekit as ck
    import collapsekit.analysis.analysis as analysis_mod

    monkeypatch.setattr(analysis_mod, "phase_threads", lambda: contextlib.nullcontext(2))
    monkeypatch.setattr(analysis_mod, "Beside", lambda fn: pytest.fail("forked beside an fx trace"))
    an = analysis_mod.Analysis(ck.models.create("lenet5", num_classes=10, in_channels=1, input_size=28),
                               torch.randn(1, 1, 28, 28))
    assert an.traced.method == "symbolic_trace" and an.index.total > 0


def np_equal(a, b) -> bool:
    import numpy as np

    return bool(np.array_equal(a, b))


@pytest.mark.parametrize("between, queued_beside", [(False, True), (True, False)])
def test_where_known_verdicts_bracket_the_boundary_it_is_searched_beside_the_level_flows(monkeypatch, between,
                                                                                       queued_beside):
    # Alive and collapsed neighbours known before any level flow (the cover, an emptied set): no level flow can
    # narrow the bracket, so the search joins the queue, and so does the alive side's reach per element. With an
    # unknown level between them, its flow may narrow it: the search waits for the levels.
    import contextlib

    import collapsekit as ck
    import collapsekit.analysis.analysis as analysis_mod
    from collapsekit.analysis.flow import FlowResult

    torch.manual_seed(0)
    an = analysis_mod.Analysis(ck.models.create("resnet20", num_classes=5, in_channels=3, input_size=8),
                               torch.randn(1, 3, 8, 8), exact=False)
    counts = [an.count(s) for s in (0.5, 0.8, 0.9, 0.95, 0.99)]
    alive, dead = FlowResult(False, {}, {}, None, 1.0), FlowResult(True, {}, {}, None, 0.0)
    known = {counts[1]: alive, counts[3]: dead} if between else {counts[2]: alive, counts[3]: dead}
    by_bytes = {an.level(k).alloc.pruned.tobytes(): v for k, v in known.items()}
    monkeypatch.setattr(an, "_shared_verdict", lambda pruned: by_bytes.get(pruned.tobytes()))
    queued = []

    def map_forked(fn, items, workers):
        queued.extend(items)
        return [0.93 if kind == "boundary" else 0.5 if kind == "reach" else alive for kind, _ in items]

    monkeypatch.setattr(analysis_mod, "can_fork", lambda: True)
    monkeypatch.setattr(analysis_mod, "map_forked", map_forked)
    monkeypatch.setattr(analysis_mod, "phase_threads", lambda: contextlib.nullcontext(2))
    monkeypatch.setattr(analysis_mod, "FORK_WORTH_SECONDS", 0.0)
    flows = an._own_flows(counts)
    unknown = [k for k in counts if k not in known]
    assert [arg for kind, arg in queued if kind == "flow"] == unknown and len(flows) == len(unknown)
    if queued_beside:
        assert queued[0] == ("boundary", [(counts[2], False), (counts[3], True)])
        assert queued[-1] == ("reach", counts[2])
        assert an._boundary_ahead[an.mt] == 0.93 and an._reach_ahead[(counts[2], an.mt)] == 0.5
    else:
        assert all(kind == "flow" for kind, _ in queued) and an.mt not in an._boundary_ahead
