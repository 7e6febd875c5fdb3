"""Trainability forecast: measurements at the pruned weights on a data batch, and the rule that reads them."""
import copy
import json

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis import forecast
from collapsekit.analysis.forecast import Forecaster, class_signal, decide, ncm_accuracy
from collapsekit.errors import CollapsekitError


def mlp(bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32, bias=bias), nn.ReLU(), nn.Linear(32, 32, bias=bias),
                         nn.ReLU(), nn.Linear(32, 10, bias=bias))


def full(model) -> dict:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.ndim > 1}


@pytest.fixture(scope="module")
def synthetic():
    return ck.data.load("synthetic")


def test_signal_is_the_logit_spread_relative_to_dense(synthetic):
    """Without biases a ReLU net is positively homogeneous: shrinking one layer by c shrinks the logits by c."""
    model = mlp()
    fc = Forecaster.from_bundle(model, synthetic)
    dense = fc.measure(full(model))
    assert dense["signal"] == pytest.approx(1.0) and dense["signal_eval"] == pytest.approx(1.0)
    assert dense["gradient_reach"] == 1.0 and dense["gradient_min"] > 0
    assert dense["gradient_relative_min"] == pytest.approx(1.0)  # every layer gets what the dense one gets
    faint = copy.deepcopy(model)
    with torch.no_grad():
        faint[3].weight.mul_(1e-4)
    # Measured against the original's spread, as a pruned level of the original is.
    ev = forecast.measure(faint, full(faint), fc.x, fc.y, fc.dense)
    assert ev["signal"] == pytest.approx(1e-4, rel=1e-3) and ev["batch_norm"] == 0.0
    trainable, reason = decide(ev, chance=0.1)
    assert not trainable and "signal" in reason


def test_masks_decide_and_the_model_is_untouched(synthetic):
    model = mlp(bias=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    fc = Forecaster.from_bundle(model, synthetic)
    masks = full(model)
    masks["3.weight"] = torch.zeros_like(masks["3.weight"])
    masks["3.weight"][0, 0] = True  # one kept weight in the middle layer
    ev = fc.measure(masks)
    assert ev["signal"] < fc.measure(full(model))["signal"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags


def test_batch_norm_is_measured_on_batch_statistics():
    """BN re-normalises a faint signal in train mode (what fine-tuning runs), not with the dense running stats."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    bundle = ck.data.load("synthetic")
    model.train()
    with torch.no_grad():
        for _ in range(5):  # running statistics of the dense net
            model(bundle.train.tensors[0][:256])
    model.eval()
    fc = Forecaster.from_bundle(model, bundle)
    dense = fc.measure(full(model))
    with torch.no_grad():
        model[1].weight.mul_(1e-2)  # the pruned net: the layer before BN keeps only faint weights
    ev = forecast.measure(model, full(model), fc.x, fc.y, fc.dense)
    assert ev["signal_eval"] < 0.05  # eval mode: the dense statistics see a vanished signal
    assert ev["signal"] > 0.3 and ev["batch_norm"] == 1.0  # batch statistics restore it
    assert ev["class_signal"] == pytest.approx(dense["class_signal"], rel=0.1)  # the class information is kept
    assert decide(ev, 0.1)[0]
    # And fine-tuning (train-mode BN) does train it, as the batch-statistics forecast says.
    masks = full(model)
    run = ck.finetune(model, masks, bundle, 2, 0.01, 64, device="cpu", progress=False)
    assert run.accuracy > 0.5


def test_class_signal_and_ncm_read_class_information_whatever_the_scale():
    torch.manual_seed(0)
    y = torch.arange(200) % 10
    separated = torch.eye(10)[y] * 1e-6
    assert class_signal(separated, y) == pytest.approx(1.0)
    assert ncm_accuracy(separated, y) == 1.0
    assert ncm_accuracy(torch.eye(10)[y] * 1e-3 + 10.0, y) == 1.0  # a faint signal on a large constant is read
    noise = torch.randn(200, 10)
    assert class_signal(noise, y) < 0.1
    assert class_signal(torch.ones(200, 10), y) == 0.0


PLAIN, BN = forecast.THRESHOLDS["plain"], forecast.THRESHOLDS["batch_norm"]


@pytest.mark.parametrize("evidence, trainable, why", [
    (dict(accuracy_pruned=0.5, signal=0.0, gradient_relative_min=0.0, gradient_reach=0.0), True, "accurate"),
    (dict(signal=PLAIN["signal"] / 2), False, "signal"),
    (dict(gradient_relative_min=PLAIN["gradient_relative_min"] / 2), False, "gradient_relative_min"),
    (dict(gradient_reach=0.5), False, "gradient reaches 50%"),
    (dict(signal=PLAIN["signal"], gradient_relative_min=PLAIN["gradient_relative_min"]), True, "plain"),
    # With batch norm the spread survives re-normalisation, so more of it is asked for; gradients are scale-free.
    (dict(batch_norm=1.0, signal=BN["signal"] / 2), False, "signal"),
    (dict(batch_norm=1.0, signal=BN["signal"], gradient_relative_min=BN["gradient_relative_min"]), True, "batch norm"),
])
def test_rule(evidence, trainable, why):
    ev = {"accuracy_pruned": 0.1, "signal": 1.0, "gradient_relative_min": 1.0, "gradient_reach": 1.0,
          "batch_norm": 0.0, **evidence}
    got, reason = decide(ev, chance=0.1)
    assert got is trainable and why in reason


def test_empty_data_is_a_one_line_error(synthetic):
    from torch.utils.data import TensorDataset

    empty = ck.data.DataBundle("empty", TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)),
                               synthetic.test, 10, 1, 8)
    with pytest.raises(CollapsekitError, match="no training examples"):
        Forecaster.from_bundle(mlp(), empty)


def test_a_model_without_one_logit_per_class_is_a_one_line_error(synthetic):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # 3 outputs, 10 classes
    with pytest.raises(CollapsekitError, match="one logit per class"):
        Forecaster.from_bundle(model, synthetic)


def test_analyze_with_data_carries_forecasts(dense, digits):
    x = digits.example_input()
    report = ck.analyze(dense, x, sparsities=[0.5, 0.999], data=digits)
    alive, dead = report.at(0.5), report.at(0.999)
    assert alive.forecast.trainable and alive.forecast.evidence["accuracy_pruned"] > 0.5
    assert dead.collapsed and not dead.forecast.trainable and dead.forecast.reason.startswith("collapsed")
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["levels"][0]["forecast"]["trainable"] is True
    assert set(doc["levels"][0]["forecast"]["evidence"]) >= {"signal", "gradient_min", "accuracy_pruned"}
    plain = ck.analyze(dense, x, sparsities=[0.5])
    assert plain.at(0.5).forecast is None and plain.to_dict()["levels"][0]["forecast"] is None
    from collapsekit.views.render import report_to_markdown as to_markdown, report_to_text as to_text

    text = to_text(report)
    assert "forecast" in text and "untrainable (collapsed: no kept path)" in text
    assert "| forecast |" in to_markdown(report) and "forecast" not in to_text(plain).split("layer ")[0]


def test_suggest_mt_with_data_keeps_the_floor(dense, digits):
    from collapsekit.analysis.suggest import NEAR_TOP

    x = digits.example_input()
    an = ck.Analysis(dense, x)
    s = 0.97
    structural = ck.suggest_mt(an, sparsity=s)
    aware = ck.suggest_mt(an, sparsity=s, data=digits)
    assert structural.forecast_trainable is None and structural.forecasts == ()
    assert aware.floor == structural.mt == structural.floor and aware.mt >= aware.floor
    assert aware.seconds > 0 and len(aware.forecasts) >= 5
    assert all(aware.floor <= f["mt"] <= aware.max_mt for f in aware.forecasts)
    trainable = [f for f in aware.forecasts if f["trainable"]]
    assert trainable and aware.forecast_trainable  # this LeNet trains at 0.97
    best = max(f["quality"] for f in trainable)
    assert aware.mt == min(f["mt"] for f in trainable if f["quality"] >= NEAR_TOP * best)
    assert an.with_mt(aware.mt).forecast(digits, an.count(s)).trainable  # the same forecast, asked directly
    doc = aware.to_dict()
    assert doc["floor"] == structural.mt and doc["mt"] == aware.mt and doc["forecast_trainable"] is True
