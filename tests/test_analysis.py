"""collapsekit.analysis.analysis: one Analysis per model serves every question (one trace, one sort)."""
import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import collapsekit as ck
from collapsekit import data
from collapsekit.analysis.analysis import Analysis
from collapsekit.analysis.magnitudes import MagnitudeIndex
from collapsekit.errors import CollapsekitError
from collapsekit.pruning.prune import prune
from collapsekit.validation.mtsearch import search_mt
from invariants import assert_unchanged, snapshot
from test_flow import SharedLinear
from test_report import mlp


@pytest.fixture
def counted(monkeypatch):
    """Counts fx traces and magnitude indexes built anywhere while the test runs."""
    counts = {"traces": 0, "sorts": 0}
    trace, init = fx.Tracer.trace, MagnitudeIndex.__init__

    def counting_trace(self, *a, **k):
        counts["traces"] += 1
        return trace(self, *a, **k)

    def counting_init(self, *a, **k):
        counts["sorts"] += 1
        return init(self, *a, **k)

    monkeypatch.setattr(fx.Tracer, "trace", counting_trace)
    monkeypatch.setattr(MagnitudeIndex, "__init__", counting_init)
    return counts


def tiny_bundle():
    return data.load("synthetic", input_size=8, channels=1)


def tiny_convnet():
    return ck.models.create("lenet5", num_classes=10, in_channels=1, input_size=8)


def test_masks_are_exactly_ck_prune_masks():
    model = tiny_convnet()
    an = Analysis(model, torch.randn(1, 1, 8, 8), mt=3)
    want = prune(copy.deepcopy(model), 0.9, mt=3).masks
    got = an.masks(0.9)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[n], got[n]) for n in want)
    assert sum(int((~m).sum()) for m in got.values()) == round(0.9 * an.total)


def test_with_mt_changes_only_the_allocation(counted):
    model = mlp()
    an = Analysis(model, torch.randn(1, 6))
    assert counted == {"traces": 1, "sorts": 1}
    assert an.report([0.9]).at(0.9).emptied_layers
    protected = an.with_mt(4)
    assert protected.mt == 4 and an.mt == 0
    assert not protected.report([0.9]).at(0.9).emptied_layers
    assert counted == {"traces": 1, "sorts": 1}


def test_analyze_accepts_an_analysis_and_refuses_new_filters():
    model = mlp()
    an = Analysis(model, torch.randn(1, 6))
    direct = ck.analyze(model, torch.randn(1, 6), sparsities=[0.9])
    again = ck.analyze(an, sparsities=[0.9])
    assert direct.to_dict() == again.to_dict()
    with pytest.raises(CollapsekitError, match="fixed when the Analysis is built"):
        ck.suggest_mt(an, sparsity=0.9, include=["*"])
    with pytest.raises(CollapsekitError, match="example_inputs"):
        ck.analyze(model)


def test_suggest_mt_on_an_analysis_builds_nothing_new(counted):
    model = mlp()
    an = Analysis(model, torch.randn(1, 6))
    from_module = ck.suggest_mt(copy.deepcopy(model), torch.randn(1, 6), sparsity=0.8)
    assert counted == {"traces": 2, "sorts": 2}
    from_analysis = ck.suggest_mt(an, sparsity=0.8)
    assert counted == {"traces": 2, "sorts": 2}
    assert from_analysis == from_module and from_analysis.mt == 10


@pytest.mark.slow
def test_validate_over_three_levels_traces_and_sorts_once(counted):
    model, bundle = tiny_convnet(), tiny_bundle()
    report = ck.validate(model, bundle, [0.5, 0.8, 0.9], epochs=1)
    assert len(report.levels) == 3
    assert counted == {"traces": 1, "sorts": 1}


@pytest.mark.slow
def test_search_mt_over_four_values_traces_and_sorts_once(counted):
    model, bundle = tiny_convnet(), tiny_bundle()
    result = search_mt(model, bundle, 0.9, mts=[0, 1, 2, 4], epochs=1)
    assert [p.mt for p in result.points] == [0, 1, 2, 4]
    assert counted == {"traces": 1, "sorts": 1}


def test_boundary_search_is_exact_whatever_the_candidate_counts():
    model = tiny_convnet()
    an = Analysis(model, torch.randn(1, 1, 8, 8), exact=True)
    top = an.index.max_count()
    plain = an._bisect(-1, top, channel_level=False)
    assert an.collapsed_at(plain) and not an.collapsed_at(plain - 1)
    crit = [int(c) for c in an.index.critical_counts()]
    for candidates in (crit, [plain - 7, plain + 5, plain + 90], [plain], [3, top - 1]):
        assert an._bisect(-1, top, channel_level=False, candidates=candidates) == plain, candidates


def test_timings_name_every_stage_of_a_report():
    an = Analysis(mlp(), torch.randn(1, 6))
    an.report([0.5, 0.9])
    stages = an.timings.to_dict()
    assert {"trace", "index", "graph", "connectivity", "index reads", "flow per level",
            "boundary search", "critical sparsities"} <= stages.keys()
    assert stages["flow per level"]["calls"] == 2 and all(t["seconds"] >= 0 for t in stages.values())
    assert "flow per level" in str(an.timings)


def test_compact_from_an_analysis_reuses_its_trace_and_matches(counted):
    from collapsekit.pruning.compact import compact
    from collapsekit.pruning.prune import apply_masks

    model = ck.models.create("resnet20", num_classes=10, in_channels=1, input_size=8)
    x = torch.randn(4, 1, 8, 8)
    an = Analysis(model, x[:1], mt=2)
    masks = an.masks(0.95)
    snap = snapshot(model)
    small = compact(an, masks)
    assert counted == {"traces": 1, "sorts": 1}
    assert_unchanged(model, snap)
    reference = apply_masks(copy.deepcopy(model).eval(), masks)
    from_module = compact(model, masks, x[:1])
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in from_module.parameters())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(small(x), reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", ["zoo", "shared"])
def test_analyze_and_suggest_mt_leave_the_model_as_it_was(build):
    if build == "zoo":
        model, x = ck.models.create("mobilenet_v2", num_classes=10, in_channels=1, input_size=8), torch.randn(1, 1, 8, 8)
    else:
        model, x = SharedLinear(), torch.randn(1, 6)
    model.train()
    snap = snapshot(model)
    ck.analyze(model, x, sparsities=[0.5, 0.9, 0.99])
    ck.suggest_mt(model, x, sparsity=0.99)
    assert_unchanged(model, snap)


@pytest.mark.slow
def test_validate_leaves_the_model_as_it_was():
    model, bundle = tiny_convnet(), tiny_bundle()
    model.train()
    snap = snapshot(model)
    ck.validate(model, bundle, [0.9], epochs=1)
    assert_unchanged(model, snap)


def test_collapsekit_plot_traces_and_sorts_once(counted, tmp_path, capsys):
    from collapsekit.cli import main

    rc = main(["plot", "--model", "lenet5", "--in-channels", "1", "--input-size", "8", "--sparsity", "0.5", "0.9", "0.99",
               "--out", str(tmp_path), "--format", "png"])
    assert rc == 0
    assert (tmp_path / "report.json").exists() and list(tmp_path.glob("*.png"))
    assert counted == {"traces": 1, "sorts": 1}


def test_flow_results_live_on_the_analysis_graph_not_on_the_model():
    from collapsekit.analysis.flow import FLOW_META

    model = mlp()
    snap = snapshot(model)
    an = Analysis(model, torch.randn(1, 6))
    head = next(n for n in an.traced.gm.graph.nodes if n.op == "call_module" and n.target == "4")
    an.flow(0)
    assert head.meta[FLOW_META].live == head.meta[FLOW_META].size == 3
    collapse = round(an.collapse_sparsity() * an.total)
    an.flow(collapse)
    assert head.meta[FLOW_META].live == 0  # no kept path reaches any logit
    an.flow(collapse - 1)
    assert head.meta[FLOW_META].live > 0
    assert_unchanged(model, snap)


@pytest.mark.parametrize("name,exact,mt,skips", [
    ("resnet20", True, None, 2), ("mobilenet_v2", False, None, 2), ("wrn_16_2", False, None, 2),
    ("wrn_16_2", False, 4, 0),  # MT keeps paths to the end: usedness never settles
    ("lenet5", True, None, 0),  # the last layer keeps weights after its reader emptied: never settles
])
def test_a_report_skips_backward_only_where_a_denser_level_settled_usedness(name, exact, mt, skips, monkeypatch):
    """Usedness only shrinks with nested masks: once a collapsed level's unused channels are the sparsest
    masks' ones, sparser levels take them without a backward pass, and every level equals the level
    computed on its own."""
    import collapsekit.analysis.analysis as analysis_mod
    from collapsekit.analysis.flow import run_flow
    from invariants import scramble

    skipped = []

    def counted(*args, unused=None, **kwargs):
        skipped.append(unused is not None)
        return run_flow(*args, unused=unused, **kwargs)

    monkeypatch.setattr(analysis_mod, "run_flow", counted)
    monkeypatch.setattr(analysis_mod, "level_flows", lambda *args: None)  # each level its own flow (plain CNNs)
    torch.manual_seed(0)
    model = scramble(ck.models.create(name, num_classes=5, in_channels=1 if name == "lenet5" else 3,
                                      input_size=8), 3)
    x = torch.randn(1, 1 if name == "lenet5" else 3, 8, 8)
    levels = (0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
    an = Analysis(model, x, exact=exact, mt=mt)
    report = an.report(levels)
    assert sum(skipped) >= skips  # the sparsest levels are taken from a denser one
    alone = Analysis(model, x, exact=exact, mt=mt)
    for got in report.levels:
        want = alone.level_report(got.sparsity)
        assert (got.collapsed, got.dead_channels, got.unused_channels, got.effective_sparsity) == (
            want.collapsed, want.dead_channels, want.unused_channels, want.effective_sparsity), got.sparsity
    unused = [set((n, c) for n, cs in lv.unused_channels.items() for c in cs) for lv in report.levels]
    assert all(a <= b for a, b in zip(unused, unused[1:]))  # nested masks: usedness only shrinks


def test_unused_channels_given_for_masks_that_do_not_collapse_are_not_trusted():
    """run_flow(..., unused=...) is a promise that the masks collapse; where they do not, the flow runs its
    backward pass as usual instead of reporting the given channels."""
    from collapsekit.analysis.flow import run_flow

    torch.manual_seed(0)
    model = ck.models.create("resnet20", num_classes=5, in_channels=3, input_size=8)
    an = Analysis(model, torch.randn(1, 3, 8, 8))
    level = an.level(an.count(0.5))
    want = run_flow(an.traced, an.weights, level)
    got = run_flow(an.traced, an.weights, level, unused={w.name: [0] for w in an.weights})
    assert not got.collapsed and got.unused_channels == want.unused_channels
    assert got.effective.tolist() == want.effective.tolist() and got.effective.sum() > 0


def test_the_index_is_built_beside_a_slow_trace_and_reads_the_default_levels_meanwhile(monkeypatch):
    import threading
    import time

    from collapsekit.analysis import analysis as analysis_module

    threads_seen, fetches = set(), []
    real_trace, real_init, real_fetch = analysis_module.trace, MagnitudeIndex.__init__, MagnitudeIndex._fetch

    def slow_trace(model, x, beside):
        with beside("symbolic_trace"):
            time.sleep(0.5)  # a long trace: the index is done before it
        return real_trace(model, x)

    def init(self, *a, **k):
        threads_seen.add(threading.current_thread().name)
        return real_init(self, *a, **k)

    monkeypatch.setattr(analysis_module, "trace", slow_trace)
    monkeypatch.setattr(MagnitudeIndex, "__init__", init)
    def fetch(self, bins):  # a pass over the weights: some bin not read yet
        bins = list(bins)
        if any(b not in self._fine for b in bins):
            fetches.append(threading.current_thread().name.startswith("collapsekit-index"))
        return real_fetch(self, bins)

    monkeypatch.setattr(MagnitudeIndex, "_fetch", fetch)
    model = tiny_convnet()
    an = Analysis(model, torch.randn(1, 1, 8, 8))
    assert [name.startswith("collapsekit-index") for name in threads_seen] == [True]
    assert fetches[0] and fetches.count(True) == 1  # the default levels' bins, read while the trace ran
    assert an.timings.calls["index reads"] == 1
    from collapsekit.analysis.analysis import sparsity_levels

    before = len(fetches)
    an.index.prefetch([an.count(s) for s in sparsity_levels()], an.mt)  # what report() asks first
    assert len(fetches) == before  # already read: no further pass over the weights
    report = an.report()
    assert report.to_dict() == ck.analyze(model, torch.randn(1, 1, 8, 8)).to_dict()


@pytest.mark.parametrize("method", ["symbolic_trace", "export"])
def test_a_failing_trace_still_ends_the_index_builder_and_raises_its_own_error(monkeypatch, method):
    import contextlib
    import os
    import threading

    from collapsekit.analysis import analysis as analysis_module

    def broken(model, x, beside):
        with beside(method):  # a thread beside fx, a forked child beside export (where there is fork)
            raise CollapsekitError("cannot trace Broken")

    monkeypatch.setattr(analysis_module, "trace", broken)
    monkeypatch.setattr(analysis_module, "phase_threads", lambda: contextlib.nullcontext(2))  # two idle CPUs
    with pytest.raises(CollapsekitError, match="cannot trace Broken"):
        Analysis(tiny_convnet(), torch.randn(1, 1, 8, 8))
    assert not [t for t in threading.enumerate() if t.name.startswith("collapsekit-index")]
    with pytest.raises(ChildProcessError):  # no child left behind, running or unreaped
        os.waitpid(-1, os.WNOHANG)


def test_a_slow_trace_leaves_time_to_read_the_linear_layers_line_maxima_for_the_cover(monkeypatch):
    import time

    from collapsekit.analysis import analysis as analysis_module
    from collapsekit.analysis.magnitudes import line_maxima

    real_trace = analysis_module.trace
    def slow_trace(model, x, beside):
        with beside("symbolic_trace"):
            time.sleep(0.5)
        return real_trace(model, x)

    monkeypatch.setattr(analysis_module, "trace", slow_trace)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(1, 6)
    an = Analysis(model, x)
    read = dict(an._line_maxima)
    assert sorted(read) == [0, 1, 2]  # every linear layer's, read beside the trace
    for i, maxima in read.items():
        want = line_maxima(an.tensors[i], an.weights[i].shape[0])
        assert all(torch.equal(a, b) for a, b in zip(maxima, want))
    assert an.report().to_dict() == Analysis(model, x).report().to_dict()  # a fast trace: read by the cover
    assert not an._line_maxima  # each handed out once, to the cover


def test_the_graph_and_the_convs_tap_maxima_are_built_while_the_index_is_still_read(monkeypatch):
    import threading

    from collapsekit.analysis import analysis as analysis_module

    structure_built, seen = threading.Event(), []
    real_init, real_connectivity = MagnitudeIndex.__init__, analysis_module.Connectivity

    def init(self, *a, **k):  # the index waits until the trace's other products exist (at most 10 s)
        seen.append(structure_built.wait(10))
        return real_init(self, *a, **k)

    def connectivity(*a, **k):
        conn = real_connectivity(*a, **k)
        assert conn.index is None and conn.kmax  # the convs' tap maxima, read before the index is in
        structure_built.set()
        return conn

    monkeypatch.setattr(MagnitudeIndex, "__init__", init)
    monkeypatch.setattr(analysis_module, "Connectivity", connectivity)
    model = tiny_convnet()
    an = Analysis(model, torch.randn(1, 1, 8, 8))
    assert seen == [True]  # built after the graph and connectivity, not before them
    assert an.connectivity.index is an.index and an.graph is not None
    monkeypatch.undo()
    assert an.report().to_dict() == ck.analyze(model, torch.randn(1, 1, 8, 8)).to_dict()
