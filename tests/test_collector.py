"""collector.py: an analysis hides the process's older objects from the cyclic collector, and gives them back."""
import gc
import threading

import torch
import torch.nn as nn

import collapsekit.analysis.flow as flow_mod
from collapsekit.analysis.analysis import Analysis, analyze
from collapsekit.analysis.collector import old_objects_frozen


def _net():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_a_report_runs_its_flows_with_older_objects_frozen_and_unfreezes_them(monkeypatch):
    seen = []
    real = flow_mod.run_flow

    def watched(*args, **kwargs):
        seen.append(gc.get_freeze_count())
        return real(*args, **kwargs)

    monkeypatch.setattr("collapsekit.analysis.analysis.run_flow", watched)
    monkeypatch.setattr("collapsekit.analysis.emptied.run_flow", watched)
    assert gc.get_freeze_count() == 0
    report = analyze(_net(), torch.randn(1, 6), sparsities=[0.5, 0.9, 0.99])
    assert seen and all(n > 1000 for n in seen)  # torch's own objects alone are far more than that
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    assert report.levels[0].sparsity == 0.5


def test_cycles_made_during_an_analysis_are_still_collected():
    class Cycle:
        pass

    with old_objects_frozen():
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        gone = []
        import weakref
        weakref.finalize(a, gone.append, True)
        del a, b
        gc.collect()
        assert gone == [True]


def test_a_process_that_froze_objects_itself_keeps_them_frozen(monkeypatch):
    gc.freeze()
    try:
        calls = []
        # The count itself may drop during the report (a frozen object freed by refcount): what must not
        # happen is the analysis freezing again or unfreezing the process's own.
        monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
        monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
        Analysis(_net(), torch.randn(1, 6)).report([0.5])
        assert calls == [] and gc.get_freeze_count() > 0
    finally:
        monkeypatch.undo()
        gc.unfreeze()


def test_a_disabled_collector_stays_disabled_and_nothing_is_frozen():
    gc.disable()
    try:
        with old_objects_frozen():
            assert gc.get_freeze_count() == 0
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_analyses_in_two_threads_unfreeze_once_the_last_one_ends():
    inside, release = threading.Event(), threading.Event()

    def long_analysis():
        with old_objects_frozen():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=long_analysis)
    t.start()
    inside.wait(10)
    with old_objects_frozen():
        pass  # this one ends first: the other still runs, so the heap stays frozen
    assert gc.get_freeze_count() > 0
    release.set()
    t.join()
    assert gc.get_freeze_count() == 0
