"""analyze / CollapseReport: the public contract, exact collapse sparsity, errors, no side effects."""
import json

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.validation import probe
from collapsekit.analysis.magnitudes import sparsity_to_count
from collapsekit.views.render import report_to_markdown, report_to_text
from collapsekit.analysis.analysis import Analysis
from invariants import scramble


def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[2].weight.mul_(0.05)  # the middle layer holds the smallest weights: it empties first
    return model


def positive_alive(model, an, k):
    keep, _, _ = an.keep_masks(k)
    pos = probe.positive_copy(model, an.weights, {w.name: m for w, m in zip(an.weights, keep)})
    x = an.traced.example_inputs[0].double()
    return bool(probe.varying(pos(x.abs() + 0.5), pos(x.abs() + 1.5), rtol=1e-9, atol=0).any())


def test_public_contract_on_an_mlp_whose_middle_layer_empties():
    model = mlp()
    report = ck.analyze(model, torch.randn(4, 6), sparsities=[0.5, 0.9, 0.99])
    assert report.total == 6 * 12 + 12 * 8 + 8 * 3
    assert [lay.name for lay in report.layers] == ["0.weight", "2.weight", "4.weight"]
    assert not any(lay.bypassable for lay in report.layers)
    middle = report.layers[1]
    assert report.first_bottleneck.name == "2.weight"
    assert report.collapse_sparsity <= middle.critical_sparsity
    level = report.at(0.9)
    assert level.collapsed and "2.weight" in level.emptied_layers
    assert level.dead_channels["2.weight"] == list(range(8))
    assert level.effective_sparsity == 1.0
    half = report.at(0.5)
    assert not half.collapsed
    # Nominal 0.5, but the middle layer is 96 % pruned: units it no longer feeds or
    # reads take their kept weights out of every path (Vysogorets & Kempe).
    assert half.layer_sparsity["2.weight"] > 0.95
    kept_effective = (1 - half.effective_sparsity) * report.total
    assert 0.5 < half.effective_sparsity < 1.0 and kept_effective == round(kept_effective)
    document = json.loads(json.dumps(report.to_dict()))
    assert document["collapse_sparsity"] == report.collapse_sparsity
    assert document["levels"][1]["emptied_layers"] == list(level.emptied_layers)
    assert set(document["layers"][0]) >= {"name", "numel", "bypassable", "critical_sparsity"}
    with pytest.raises(KeyError):
        report.at(0.7)


@pytest.mark.parametrize("name,kwargs", [("resnet20", {}), ("mobilenet_v1", {"width_mult": 0.25}),
                                         ("lenet5", {})])
def test_collapse_sparsity_is_exact_to_the_weight(name, kwargs):
    torch.manual_seed(0)
    model = scramble(ck.models.create(name, num_classes=5, in_channels=1, input_size=8, **kwargs), 7)
    x = torch.randn(1, 1, 8, 8)
    report = ck.analyze(model, x, sparsities=[0.5, 0.99])
    an = Analysis(model, x)
    k = round(report.collapse_sparsity * report.total)
    assert report.collapse_sparsity < 1.0
    assert not positive_alive(model, an, k)  # collapsed at k ...
    assert positive_alive(model, an, k - 1)  # ... and not one weight earlier


def test_wrn_collapses_later_than_mobilenet_with_the_same_initialisation():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    wrn = ck.analyze(ck.models.create("wrn_16_2", in_channels=3, input_size=8), x, sparsities=[0.9])
    mob = ck.analyze(ck.models.create("mobilenet_v1", in_channels=3, input_size=8), x, sparsities=[0.9])
    assert sum(lay.bypassable for lay in wrn.layers) >= len(wrn.layers) - 3
    assert not any(lay.bypassable for lay in mob.layers)
    assert mob.collapse_sparsity < wrn.collapse_sparsity - 0.2


def test_mt_raises_the_collapse_sparsity_and_keeps_layers_non_empty():
    model = mlp()
    x = torch.randn(1, 6)
    plain = ck.analyze(model, x, sparsities=[0.9])
    with_mt = ck.analyze(model, x, sparsities=[0.9], mt=4)
    assert with_mt.mt == 4
    assert all(lay.critical_sparsity == 1.0 and lay.mt_protected == 4 for lay in with_mt.layers)
    assert not with_mt.at(0.9).emptied_layers
    assert with_mt.collapse_sparsity > plain.collapse_sparsity


def test_analysis_never_changes_the_model():
    model = mlp().train()
    model[0].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ck.analyze(model, torch.randn(2, 6))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not model[0].training


def test_text_and_markdown_lead_with_the_verdict():
    report = ck.analyze(mlp(), torch.randn(1, 6), sparsities=[0.5, 0.9])
    text = report_to_text(report)
    assert text.splitlines()[1].startswith("verdict: Global MP collapses the network at sparsity")
    assert "first bottleneck to empty: 2.weight" in text
    assert "| 0.9 | COLLAPSED |" in report_to_markdown(report)


@pytest.mark.parametrize("bad", [1.0, -0.2, 1.5])
def test_sparsity_outside_range_is_a_clear_error(bad):
    with pytest.raises(ck.CollapsekitError, match=r"sparsity must lie in \[0, 1\)"):
        ck.analyze(mlp(), torch.randn(1, 6), sparsities=[0.5, bad])


def test_input_that_does_not_fit_is_a_clear_error():
    with pytest.raises(ck.CollapsekitError, match=r"does not accept an input of shape \(1, 5\)"):
        ck.analyze(mlp(), torch.randn(1, 5))


def test_model_without_prunable_weights_is_a_clear_error():
    with pytest.raises(ck.CollapsekitError, match="no prunable weights"):
        ck.analyze(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), torch.randn(2, 3))


def test_include_exclude_select_the_ranked_weights():
    report = ck.analyze(mlp(), torch.randn(1, 6), sparsities=[0.5], exclude=["4.*"])
    assert [lay.name for lay in report.layers] == ["0.weight", "2.weight"]
    assert report.total == 6 * 12 + 12 * 8
    assert sparsity_to_count(0.5, report.total) == report.at(0.5).pruned


def chain(big: list[tuple[int, int, int]]):
    """3 -> 3 -> 3 -> 2 bias-free linear chain whose weights are tiny except the (layer, row, col) in `big`:
    Global MP keeping exactly len(big) weights keeps those."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 3, bias=False), nn.ReLU(),
                          nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        for layer in (0, 2, 4):
            model[layer].weight.uniform_(0.01, 0.02)
        for layer, row, col in big:
            model[layer].weight[row, col] = 10.0
    return model


@pytest.mark.parametrize("exact", [True, False])
def test_collapse_by_dead_channels_has_no_depth_and_reaches_no_output(exact):
    # Layer 0 keeps only unit 0, layer 2 reads only unit 1: no layer is empty, yet no path is left.
    model = chain([(0, 0, 0), (2, 0, 1), (4, 0, 0), (4, 1, 0)])
    level = ck.analyze(model, torch.randn(1, 3), sparsities=[20 / 24], exact=exact).at(20 / 24)
    assert level.collapsed and level.emptied_layers == ()
    assert level.effective_depth == 0 and level.outputs_reached == 0.0


def test_outputs_cut_is_its_own_verdict_and_suggest_mt_agrees_with_it():
    # One path reaches logit 0; logit 1's row is pruned: half the outputs are constants.
    model = chain([(0, 0, 0), (2, 0, 0), (4, 0, 0)])
    s = 21 / 24
    report = ck.analyze(model, torch.randn(1, 3), sparsities=[0.5, s])
    level = report.at(s)
    assert not level.collapsed and level.outputs_reached == 0.5 and level.outputs_cut
    assert level.effective_depth == 3 and report.at(0.5).outputs_reached == 1.0
    assert "outputs cut" in report_to_text(report) and "outputs cut" in report_to_markdown(report)
    assert json.loads(json.dumps(report.to_dict()))["levels"][1]["outputs_reached"] == 0.5
    assert ck.suggest_mt(model, torch.randn(1, 3), sparsity=s, require="every_output").collapses_without_mt
    assert not ck.suggest_mt(model, torch.randn(1, 3), sparsity=s, require="any_output").collapses_without_mt


@pytest.mark.parametrize("name, kwargs, exact", [("resnet20", {"input_size": 8, "in_channels": 1}, True),
                                                 ("resnet20", {"input_size": 8, "in_channels": 1}, False),
                                                 ("lenet_300_100", {"input_size": 8, "in_channels": 1}, True)])
def test_report_and_suggest_mt_never_contradict_each_other(name, kwargs, exact):
    """With MT 0, suggest_mt's `collapses_without_mt` is the report's verdict for the same notion. The head's
    rows are scaled down one after another so that logits are cut before the network collapses (the issue's
    README ResNet-20: "ok" in the report while suggest_mt said it collapses). Per channel too (exact=False),
    where the report checks per element whether every output is reached."""
    torch.manual_seed(0)
    model = ck.models.create(name, num_classes=10, **kwargs)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.mul_(torch.logspace(-0.3, 0, 10)[:, None])
    an = Analysis(model, torch.randn(1, kwargs["in_channels"], 8, 8), exact=exact)
    sparsities = [0.5, 0.7, 0.8, 0.9, 0.99]
    report = an.report(sparsities)
    verdicts = set()
    for s in sparsities:
        level = report.at(s)
        every = ck.suggest_mt(an, sparsity=s, require="every_output")
        some = ck.suggest_mt(an, sparsity=s, require="any_output")
        assert every.collapses_without_mt == (level.outputs_reached < 1.0), s
        assert some.collapses_without_mt == level.collapsed, s
        verdicts.add("collapsed" if level.collapsed else "cut" if level.outputs_cut else "ok")
    assert verdicts == {"ok", "cut", "collapsed"}  # every verdict occurs: the check is not vacuous


def test_collapsed_distilbert_rows_have_zero_depth():
    """A tiny DistilBERT classifier collapses without emptying a layer on every path (issue: `0.999 COLLAPSED
    ... 10`); the depth is 0 wherever collapsed, per element and per channel."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                           max_position_embeddings=16, num_labels=3)
    torch.manual_seed(1)
    model = transformers.DistilBertForSequenceClassification(config).eval()
    inputs = {"input_ids": torch.randint(0, 64, (1, 8))}
    sparsities = [0.95, 0.99, 0.9945, 0.999]
    for exact in (True, False):
        report = ck.analyze(model, inputs, sparsities=sparsities, exact=exact)
        assert [lv.collapsed for lv in report.levels] == [False, False, True, True]
        for level in report.levels:
            assert (level.effective_depth == 0) == level.collapsed
            assert (level.outputs_reached == 0.0) == level.collapsed


def test_a_level_cannot_be_collapsed_with_depth_or_reached_outputs():
    from collapsekit.analysis.report import LevelReport

    base = dict(sparsity=0.9, pruned=9, threshold=0.1, emptied_layers=(), emptied_bottlenecks=(), dead_channels={},
                unused_channels={}, effective_sparsity=1.0, layer_sparsity={})
    with pytest.raises(ValueError):
        LevelReport(collapsed=True, effective_depth=3, outputs_reached=0.0, **base)
    with pytest.raises(ValueError):
        LevelReport(collapsed=True, effective_depth=0, outputs_reached=0.5, **base)
    assert not LevelReport(collapsed=True, effective_depth=0, outputs_reached=0.0, **base).outputs_cut
