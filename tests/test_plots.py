"""plots and `collapsekit plot`: every figure draws the report's own numbers; files are valid PNG and SVG."""
import json
import xml.etree.ElementTree as ET

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.views import plots
from collapsekit.cli import main
from test_analysis import counted  # noqa: F401 - the fixture counting traces and sorts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPARSITIES = [0.3, 0.6, 0.9, 0.97]
SHAPE = ["--in-channels", "1", "--input-size", "4", "--num-classes", "3"]  # bottleneck_mlp on [1, 1, 4, 4]


def bottleneck_mlp(num_classes: int = 3, in_channels: int = 1, input_size: int = 4) -> nn.Module:
    """Flattened image -> 12 -> 8 -> classes, the middle layer scaled down so Global MP empties it first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, 12), nn.ReLU(),
                          nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, num_classes))
    with torch.no_grad():
        model[3].weight.mul_(0.05)
    return model


class TwoBlockResidual(nn.Module):
    """in -> stem -> (x + f(x)) twice -> head; the block layers are bypassable, stem and head are bottlenecks."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Linear(6, width)
        self.a1, self.a2 = nn.Linear(width, width), nn.Linear(width, width)
        self.head = nn.Linear(width, 3)
        with torch.no_grad():
            self.a1.weight.mul_(0.01)  # the residual branches empty first; the identity carries the signal
            self.a2.weight.mul_(0.01)

    def forward(self, x):
        h = self.stem(x)
        h = h + torch.relu(self.a1(h))
        h = h + torch.relu(self.a2(h))
        return self.head(h)


@pytest.fixture(scope="module")
def mlp_report():
    return ck.analyze(bottleneck_mlp(), torch.randn(2, 1, 4, 4), sparsities=SPARSITIES, name="mlp")


@pytest.fixture(scope="module")
def residual_report():
    torch.manual_seed(1)
    # up to 0.9: past both branches' critical sparsity (~0.64), before the head's (0.96)
    return ck.analyze(TwoBlockResidual(), torch.randn(2, 6), sparsities=[0.3, 0.6, 0.7, 0.9], name="residual")


def by_gid(fig, gid):
    return [a for ax in fig.axes for a in ax.findobj() if a.get_gid() == gid]


def test_heatmap_draws_the_pruned_fractions_and_marks_exactly_the_emptied_cells(mlp_report):
    names, sparsities, fraction, emptied = plots.heatmap_matrix(mlp_report)
    assert sparsities == SPARSITIES and names == [lay.name for lay in mlp_report.layers]
    for j, level in enumerate(mlp_report.levels):
        assert fraction[:, j].tolist() == [level.layer_sparsity[n] for n in names]
    fig = plots.sparsity_heatmap(mlp_report)
    mesh = next(c for ax in fig.axes for c in ax.collections if c.__class__.__name__ == "QuadMesh")
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(fraction.shape), fraction)
    marks = by_gid(fig, "emptied")
    n_emptied = sum(len(lv.emptied_layers) for lv in mlp_report.levels)
    assert n_emptied > 0 and len(marks) == n_emptied == int(emptied.sum())
    # each mark sits in the cell (column = level, row = layer) of an emptied layer
    cells = {(int(t.get_position()[1]), int(t.get_position()[0])) for t in marks}
    assert cells == {(names.index(n), j) for j, lv in enumerate(mlp_report.levels) for n in lv.emptied_layers}
    assert all(t.get_text() == plots.EMPTIED_MARK for t in marks)


def test_heatmap_tells_bottleneck_from_bypassable_layers_and_marks_collapsed_levels(residual_report, mlp_report):
    fig = plots.sparsity_heatmap(residual_report)
    strip = fig.axes[0]
    colours = [mcolors.to_hex(t.get_color()) for t in strip.get_yticklabels()]
    expected = [plots.BYPASSABLE if lay.bypassable else plots.BOTTLENECK for lay in residual_report.layers]
    assert colours == expected
    assert {lay.name for lay in residual_report.layers if lay.bypassable} == {"a1.weight", "a2.weight"}
    # the residual branches empty but the net lives: emptied cells marked, no column in red
    assert any(lv.emptied_layers for lv in residual_report.levels)
    assert not by_gid(fig, "collapse_boundary")
    fig = plots.sparsity_heatmap(mlp_report)
    heat = next(ax for ax in fig.axes if ax.get_xlabel().startswith("target"))
    red = [mcolors.to_hex(t.get_color()) == plots.COLLAPSED for t in heat.get_xticklabels()]
    assert red == [lv.collapsed for lv in mlp_report.levels] and any(red) and not all(red)
    assert len(by_gid(fig, "collapse_boundary")) == 1


def test_critical_sparsity_plot_places_each_layer_and_the_collapse_line(mlp_report, residual_report):
    fig = plots.critical_sparsity_plot(mlp_report)
    (line,) = by_gid(fig, "collapse_sparsity")
    assert line.get_xdata()[0] == pytest.approx(mlp_report.collapse_sparsity)
    points = by_gid(fig, "bottleneck")[0].get_offsets()
    drawn = sorted(points[:, 0].tolist())
    assert drawn == pytest.approx(sorted(lay.critical_sparsity for lay in mlp_report.layers
                                         if lay.critical_sparsity < 1.0))
    assert "collapses at" in fig.axes[0].get_title()
    fig = plots.critical_sparsity_plot(residual_report)
    assert residual_report.collapse_sparsity == 1.0 or by_gid(fig, "collapse_sparsity")
    bypass = by_gid(fig, "bypassable")[0].get_offsets()
    names = [lay.name for lay in residual_report.layers]
    assert sorted(names[int(i)] for i in bypass[:, 1]) == ["a1.weight", "a2.weight"]


def test_effective_vs_nominal_plots_the_levels(mlp_report):
    fig = plots.effective_vs_nominal(mlp_report)
    (line,) = by_gid(fig, "effective")
    assert line.get_xdata().tolist() == [lv.sparsity for lv in mlp_report.levels]
    assert line.get_ydata().tolist() == [lv.effective_sparsity for lv in mlp_report.levels]
    collapsed = [lv for lv in mlp_report.levels if lv.collapsed]
    assert len(by_gid(fig, "collapsed")[0].get_offsets()) == len(collapsed)
    assert len(by_gid(fig, "nothing_left")[0].get_offsets()) == sum(lv.effective_sparsity == 1.0
                                                                     for lv in mlp_report.levels)


def test_mt_effect_draws_kept_weights_without_and_with_mt():
    model = bottleneck_mlp()
    x = torch.randn(2, 1, 4, 4)
    base = ck.analyze(model, x, sparsities=[0.9], name="mlp")
    with_mt = ck.analyze(model, x, sparsities=[0.9], mt=4, name="mlp")
    assert base.at(0.9).emptied_layers and not with_mt.at(0.9).emptied_layers
    fig = plots.mt_effect(base, with_mt, 0.9)
    sizes = {lay.name: lay.numel for lay in base.layers}
    for report, gid in ((base, "without_mt"), (with_mt, "with_mt")):
        kept = plots.kept_weights(report, 0.9)
        bars = by_gid(fig, gid)  # one Rectangle per layer, in layer order
        widths = [max(v, 0.5) for v in kept.values()]
        assert [b.get_width() for b in bars] == pytest.approx(widths)
        assert sum(sizes[n] - k for n, k in kept.items()) == report.at(0.9).pruned
    assert len(by_gid(fig, "emptied_without_mt")[0].get_offsets()) == len(base.at(0.9).emptied_layers)
    assert not by_gid(fig, "emptied_with_mt")
    assert by_gid(fig, "mt")[0].get_xdata()[0] == 4
    with pytest.raises(ValueError):
        plots.mt_effect(base, ck.analyze(TwoBlockResidual(), torch.randn(2, 6), sparsities=[0.9]), 0.9)


def test_mt_search_curve_and_compare_reports(mlp_report, residual_report):
    doc = {"sparsity": 0.99, "epochs": 2, "suggestion": {"mt": 3},
           "points": [{"mt": 0, "predicted_collapsed": True, "accuracy": 0.1, "accuracy_pruned": 0.1},
                      {"mt": 3, "predicted_collapsed": False, "accuracy": 0.8, "accuracy_pruned": 0.3},
                      {"mt": 30, "predicted_collapsed": False, "accuracy": 0.6, "accuracy_pruned": 0.2}]}
    fig = plots.mt_search_curve(doc)
    assert by_gid(fig, "best")[0].get_offsets().tolist() == [[3.0, 0.8]]
    assert by_gid(fig, "collapsed")[0].get_offsets().tolist() == [[0.0, 0.1]]
    fig = plots.compare_reports({"mlp": mlp_report, "residual": residual_report})
    bypass = [b.get_width() for b in by_gid(fig, "bypassable")]
    assert bypass == [0, 2]


def test_save_writes_valid_png_and_svg(tmp_path, mlp_report):
    written = plots.save(plots.sparsity_heatmap(mlp_report), tmp_path / "sub" / "heat.png")
    assert [p.name for p in written] == ["heat.png", "heat.svg"]
    assert plots.save(plots.sparsity_heatmap(mlp_report), tmp_path / "s0.995", ["png"])[0].name == "s0.995.png"
    assert written[0].read_bytes()[:8] == PNG_MAGIC
    assert ET.parse(written[1]).getroot().tag.endswith("svg")


def test_plot_cli_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", "--model", "test_plots:bottleneck_mlp", *SHAPE,
                 "--sparsity", "0.5", "0.9", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert f"collapses at sparsity {report['collapse_sparsity']:.6f}" in printed
    first_collapsed = next(lv["sparsity"] for lv in report["levels"] if lv["collapsed"])
    assert f"mt_effect at sparsity {first_collapsed:g}: MT" in printed  # the default --mt-sparsity
    for stem in ("sparsity_heatmap", "critical_sparsity", "effective_vs_nominal", "mt_effect"):
        assert (out / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC
        assert ET.parse(out / f"{stem}.svg").getroot().tag.endswith("svg")
    assert main(["plot", "--model", "test_plots:bottleneck_mlp", *SHAPE, "--sparsity",
                 "0.5", "0.9", "--mt", "4", "--format", "png", "--out", str(tmp_path / "mt")]) == 0
    assert "Global MP + MT 4" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "mt").iterdir()) == [
        "critical_sparsity.png", "effective_vs_nominal.png", "mt_effect.png", "report.json",
        "sparsity_heatmap.png"]


def test_audit_compares_suggest_mts_mt_at_the_first_collapsed_level():
    from collapsekit.views.audit import audit

    model, x = bottleneck_mlp(), torch.randn(2, 1, 4, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = audit(model, x, sparsities=[0.3, 0.9, 0.97], name="mlp")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.without_mt is result.report and result.report.mt == 0
    first = next(lv.sparsity for lv in result.report.levels if lv.collapsed)
    suggestion = ck.suggest_mt(model, x, first)
    assert result.mt_sparsity == first and result.with_mt.mt == suggestion.mt > 0
    assert not result.with_mt.at(first).collapsed and suggestion.reason in result.mt_note
    assert list(result.figures()) == ["sparsity_heatmap", "critical_sparsity", "effective_vs_nominal", "mt_effect"]
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["mt"] == suggestion.mt and doc["mt_sparsity"] == first and doc["report"]["mt"] == 0


def test_audit_with_mt_reuses_its_report_and_adds_the_mt_sparsity_to_the_mt_free_twin():
    from collapsekit.views.audit import audit

    result = audit(bottleneck_mlp(), torch.randn(2, 1, 4, 4), sparsities=[0.3, 0.9], mt=4, mt_sparsity=0.95)
    assert result.report.mt == 4 and result.without_mt.mt == 0
    assert [lv.sparsity for lv in result.without_mt.levels] == [0.3, 0.9, 0.95]
    assert result.with_mt.mt == 4 and [lv.sparsity for lv in result.with_mt.levels] == [0.95]
    same = audit(bottleneck_mlp(), torch.randn(2, 1, 4, 4), sparsities=[0.3, 0.9], mt="4", mt_sparsity=0.9)
    assert same.with_mt is same.report


def test_audit_without_collapse_falls_back_to_the_reference_mt():
    from collapsekit.analysis.suggest import reference_mt
    from collapsekit.views.audit import audit

    torch.manual_seed(1)
    result = audit(TwoBlockResidual(), torch.randn(2, 6), sparsities=[0.3])
    assert not result.report.levels[0].collapsed and result.mt_sparsity == 0.3
    assert result.with_mt.mt == reference_mt(result.report.total) == 1  # 0.05 % of 200 weights, at least one
    assert "showing the default MT of 0.05 %" in result.mt_note and "mt_effect" in result.figures()


def test_audit_says_why_there_is_no_mt_figure_when_no_mt_helps():
    from collapsekit.views.audit import audit

    # 312 weights at 0.99 keep 3: MT 1 per layer is the most there is room for, too little for 3 outputs
    result = audit(bottleneck_mlp(), torch.randn(2, 1, 4, 4), sparsities=[0.5], mt_sparsity=0.99)
    assert result.mt_sparsity == 0.99 and result.with_mt is None
    assert "no MT helps" in result.mt_note and "mt_effect" not in result.figures()


def test_plot_cli_traces_and_sorts_the_model_once(tmp_path, capsys, counted):  # noqa: F811 - the fixture
    assert main(["plot", "--model", "test_plots:bottleneck_mlp", *SHAPE, "--sparsity", "0.5", "0.9",
                 "--mt-sparsity", "0.7", "--format", "png", "--out", str(tmp_path)]) == 0
    # suggest_mt, the report under its MT and the MT-free report at 0.7 asked the same Analysis
    assert "mt_effect at sparsity 0.7: MT" in capsys.readouterr().out
    assert counted == {"traces": 1, "sorts": 1}
