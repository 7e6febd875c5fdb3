"""search_mt: the accuracy-vs-MT sweep at one sparsity, on a 3-layer MLP whose middle layer empties (seconds)."""
import copy

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.data import load
from collapsekit.errors import CollapsekitError
from collapsekit.training.train import evaluate, fit
from collapsekit.validation.mtsearch import search_mt

SPARSITY = 0.95


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic")  # 1x8x8 Gaussian clusters, 10 classes, 512 train / 256 test


@pytest.fixture(scope="module")
def mlp(synthetic):
    """64 -> 32 -> 16 -> 10 (about 0.9 accuracy after 4 epochs); the middle layer scaled by 0.1 and the last by 10,
    the same function (ReLU is positively homogeneous), so Global MP empties the middle layer first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    fit(model, synthetic, epochs=4, lr=0.1, batch_size=64, device="cpu", seed=0, progress=False)
    with torch.no_grad():
        model[3].weight.mul_(0.1)
        model[3].bias.mul_(0.1)
        model[5].weight.mul_(10.0)
    assert evaluate(model, synthetic.test, "cpu") > 0.8
    return model


@pytest.fixture(scope="module")
def result(mlp, synthetic):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    out = search_mt(mlp, synthetic, SPARSITY, epochs=1, lr=0.05, device="cpu", seed=0)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())  # copies were pruned
    return out


def test_points_carry_mt_accuracy_and_the_prediction(result, mlp, synthetic):
    suggestion = ck.suggest_mt(mlp, synthetic.example_input(), SPARSITY)
    assert suggestion.collapses_without_mt and suggestion.mt > 0
    aware = result.suggestion  # suggest_mt(..., data=bundle): trainability-aware mt, structural floor
    assert aware["floor"] == suggestion.mt and aware["mt"] >= aware["floor"]
    # The default sweep, ascending: 0, the structural search range, and the data-aware suggestion.
    assert [p.mt for p in result.points] == sorted({0, *suggestion.search_range, aware["mt"]})
    doc = result.to_dict()
    for p, d in zip(result.points, doc["points"]):
        assert {"mt", "accuracy", "predicted_collapsed", "forecast_trainable", "trained"} <= set(d)
        assert d["trained"] == (d["accuracy"] > 0.2) and isinstance(d["forecast_trainable"], bool)
        assert d["mt"] == p.mt and 0.0 <= d["accuracy"] <= 1.0
        assert p.percent == pytest.approx(100.0 * p.mt / suggestion.total)
    by_mt = {p.mt: p for p in result.points}
    assert by_mt[0].predicted_collapsed and by_mt[0].emptied_layers >= 1
    assert by_mt[0].accuracy <= 0.2  # a constant function: at most the largest class share (0.1 here)
    assert not any(p.predicted_collapsed for p in result.points if p.mt >= suggestion.mt)


def test_the_suggestion_is_one_of_the_points_and_the_best_is_the_most_accurate(result):
    assert result.suggestion["mt"] in [p.mt for p in result.points]
    best = max(result.points, key=lambda p: (p.accuracy, -p.mt))
    assert result.best is best and result.to_dict()["best_mt"] == best.mt
    assert best.mt > 0 and best.accuracy > 0.3  # MT brings the collapsed net back above chance (0.1)


def test_each_points_masks_keep_min_mt_size_per_layer_and_prune_exactly(result, mlp, synthetic):
    for p in result.points:
        pruned = copy.deepcopy(mlp)
        masks = ck.prune(pruned, SPARSITY, mt=p.mt).masks
        assert evaluate(pruned, synthetic.test, "cpu") == pytest.approx(p.accuracy_pruned)  # the point's masks
        kept = {name: int(m.sum()) for name, m in masks.items()}
        assert all(kept[name] >= min(p.mt, m.numel()) for name, m in masks.items())
        total = sum(m.numel() for m in masks.values())
        assert total - sum(kept.values()) == round(SPARSITY * total)
        assert sum(k == 0 for k in kept.values()) == p.emptied_layers


def test_given_mts_are_swept_as_counts_and_out_of_range_is_a_clear_error(mlp, synthetic):
    result = search_mt(mlp, synthetic, SPARSITY, mts=[5, 0, 5], epochs=1, lr=0.05, device="cpu")
    assert [p.mt for p in result.points] == [0, 5]
    with pytest.raises(CollapsekitError, match="out of range"):
        search_mt(mlp, synthetic, SPARSITY, mts=[10_000], epochs=1, device="cpu")


def test_given_mts_read_as_mt_everywhere(mlp, synthetic):
    from collapsekit.analysis.magnitudes import resolve_mt

    total = sum(m.weight.numel() for m in mlp.modules() if isinstance(m, torch.nn.Linear))
    result = search_mt(mlp, synthetic, SPARSITY, mts=["0.5%", 2, "3"], epochs=1, lr=0.05, device="cpu")
    assert [p.mt for p in result.points] == sorted({resolve_mt("0.5%", total), 2, 3})
    assert resolve_mt("0.5%", total) == round(0.005 * total)
