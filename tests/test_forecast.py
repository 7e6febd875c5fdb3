"""Trainability forecast: measurements at the pruned weights on a data batch, and the rule that reads them."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import collapsekit as ck
from collapsekit.validation import forecast
from collapsekit.validation.forecast import Forecaster, LogisticModel, class_signal, fit, target_entropy
from collapsekit.errors import CollapsekitError


def mlp(bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32, bias=bias), nn.ReLU(), nn.Linear(32, 32, bias=bias),
                         nn.ReLU(), nn.Linear(32, 10, bias=bias))


def trained_mlp(bundle) -> nn.Module:
    """mlp() fitted a few epochs on `bundle`: a dense net with a loss gain over the uninformed predictor."""
    from collapsekit.training.train import fit as train

    model = mlp()
    train(model, bundle, epochs=3, lr=0.05, batch_size=64, device="cpu", seed=0, progress=False)
    return model.eval()


def full(model) -> dict:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.ndim > 1}


@pytest.fixture(scope="module")
def synthetic():
    return ck.data.load("synthetic")


def test_measurements_are_relative_to_dense_and_per_layer(synthetic):
    """Without biases a ReLU net is positively homogeneous: shrinking one layer by c shrinks the outputs by c, and
    the depth-free measurement spreads that over the layers every path crosses."""
    model = trained_mlp(synthetic)
    fc = Forecaster.from_bundle(model, synthetic)
    dense = fc.measure(full(model))
    assert dense["signal"] == pytest.approx(1.0) and dense["signal_per_layer"] == pytest.approx(0.0, abs=1e-6)
    assert dense["loss_kept"] == pytest.approx(1.0) and dense["class_signal_kept"] == pytest.approx(1.0)
    assert dense["gradient_log_median"] == pytest.approx(0.0, abs=1e-5) and dense["gradient_reach"] == 1.0
    faint = copy.deepcopy(model)
    with torch.no_grad():
        faint[3].weight.mul_(1e-4)
    # Measured against the original's, as a pruned level of the original is.
    ev = forecast.measure(faint, full(faint), fc.x, fc.y, fc.dense)
    assert ev["signal"] == pytest.approx(1e-4, rel=1e-3) and ev["batch_norm"] == 0.0 and ev["depth"] == 3
    assert ev["signal_per_layer"] == pytest.approx(math.log(1e-4) / 3, rel=1e-3)
    assert ev["loss_kept"] < 0.01  # the outputs are ~0: the uninformed predictor's loss
    assert forecast.MODEL.probability(ev) < 0.5 < forecast.MODEL.probability(dense)


def test_per_layer_signal_does_not_shrink_with_depth(synthetic):
    """The same attenuation per layer reads the same at depth 2 and depth 6; the raw spread ratio does not."""
    def stack(depth):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32, bias=False), nn.ReLU(),
                             *[m for _ in range(depth - 2) for m in (nn.Linear(32, 32, bias=False), nn.ReLU())],
                             nn.Linear(32, 10, bias=False))

    read = {}
    for depth in (2, 6):
        model = stack(depth)
        fc = Forecaster.from_bundle(model, synthetic)
        faint = copy.deepcopy(model)
        with torch.no_grad():
            for m in faint.modules():
                if isinstance(m, nn.Linear):
                    m.weight.mul_(0.5)
        read[depth] = forecast.measure(faint, full(faint), fc.x, fc.y, fc.dense)
    assert read[2]["signal_per_layer"] == pytest.approx(math.log(0.5), rel=1e-3)
    assert read[6]["signal_per_layer"] == pytest.approx(math.log(0.5), rel=1e-3)
    assert read[6]["signal"] == pytest.approx(read[2]["signal"] ** 3, rel=1e-3)


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
    with torch.no_grad():
        model[1].weight.mul_(1e-2)  # the pruned net: the layer before BN keeps only faint weights
    ev = forecast.measure(model, full(model), fc.x, fc.y, fc.dense)
    assert ev["signal"] > 0.3 and ev["batch_norm"] == 1.0  # batch statistics restore the faint signal
    assert ev["class_signal_kept"] == pytest.approx(1.0, rel=0.1)  # the class information is kept
    assert forecast.MODEL.probability(ev) >= 0.5
    # And fine-tuning (train-mode BN) does train it, as the batch-statistics forecast says.
    masks = full(model)
    run = ck.finetune(model, masks, bundle, 2, 0.01, 64, device="cpu", progress=False)
    assert run.accuracy > 0.5


def test_class_signal_reads_class_information_whatever_the_scale():
    torch.manual_seed(0)
    y = torch.arange(200) % 10
    assert class_signal(torch.eye(10)[y] * 1e-6, y) == pytest.approx(1.0)
    assert class_signal(torch.randn(200, 10), y) < 0.1
    assert class_signal(torch.ones(200, 10), y) == 0.0


def test_losses_do_not_assume_a_classifier():
    """Per-token scores [N, T, V] against targets [N, T] (a language model) read as N*T examples."""
    torch.manual_seed(0)
    y = torch.randint(0, 7, (4, 5))
    out = torch.randn(4, 5, 7)
    assert float(forecast.loss_of(out, y)) == pytest.approx(float(F.cross_entropy(out.reshape(20, 7), y.reshape(20))))
    assert target_entropy(torch.tensor([0, 1, 2, 3])) == pytest.approx(math.log(4))
    assert target_entropy(torch.zeros(5, dtype=torch.long)) == 0.0
    assert class_signal(torch.eye(7)[y] * 3.0, y) == pytest.approx(1.0)


def test_fit_recovers_a_threshold_and_probability_decides():
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(400, generator=rng) * 2 - 1
    labels = [bool(v > 0.2) for v in x]
    model = fit([{"a": float(v), "b": 0.0} for v in x], labels, features=("a", "b"), l2=0.01)
    assert model.features == ("a", "b") and model.weights[0] > 0
    assert -model.bias / model.weights[0] == pytest.approx(0.2, abs=0.05)  # p = 0.5 at the threshold
    assert model.probability({"a": 0.9}) > 0.9 and model.probability({"a": -0.5}) < 0.1
    assert LogisticModel(("a",), (2.0,), -1.0).probability({"a": 0.5}) == pytest.approx(0.5)


def test_a_classifier_with_data_is_probed_and_the_probe_model_decides(synthetic, monkeypatch):
    """With training data the probe runs for every classifier forecast (PROBE_BAND is all of [0, 1]) and
    PROBE_MODEL, which reads the one pass and the probe, gives the probability; probe=False is the one pass alone."""
    model = trained_mlp(synthetic)
    fc = Forecaster.from_bundle(model, synthetic)
    probed = fc(full(model))
    assert probed.trainable and probed.evidence["probe_epochs"] > 0 and "probe_accuracy_kept" in probed.evidence
    assert probed.probability == pytest.approx(forecast.PROBE_MODEL.probability(probed.evidence))
    assert probed.reason.startswith(f"p={probed.probability:.2f} with the probe")
    assert probed.trainable == (probed.probability >= 0.5)
    one = fc(full(model), probe=False)
    assert "probe_steps" not in one.evidence
    assert one.probability == pytest.approx(forecast.MODEL.probability(one.evidence))
    monkeypatch.setattr(forecast, "PROBE_BAND", (0.2, 0.8))  # a sure one-pass forecast outside a narrower band
    assert "probe_steps" not in fc(full(model)).evidence
    assert forecast.models_for("causal_lm") == (forecast.LM_MODEL, None)  # an LM's one-pass model decides alone


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



def test_the_shipped_lm_model_reads_the_calibration_lm_runs_as_they_fine_tuned():
    """llama_tiny, one epoch on the embedded text (analyses/forecast_runs.json, exactly what `collapsekit validate
    --data text --epochs 1` fine-tunes): at 0.5 and at 0.99 (3 layers emptied) it fine-tunes within the `trained`
    bar and the shipped forecast says trainable; at 0.999 it stays near the unigram perplexity and it says not."""
    import json
    from pathlib import Path

    runs = json.loads((Path(__file__).resolve().parents[1] / "analyses" / "forecast_runs.json").read_text())
    unigram, dense = 25.9945, 6.3857  # the embedded text's test targets; the dense llama_tiny (one epoch)
    bar = math.sqrt(unigram * dense)  # half the log gap: tasks.CausalLM.trained
    for sparsity, trains in (("0.5", True), ("0.99", True), ("0.999", False)):
        entry = runs[f"llama_tiny|text|e1|{sparsity}|0"]
        assert (entry["perplexity"] <= bar) is trains
        assert (forecast.LM_MODEL.probability(entry["evidence"]) >= 0.5) is trains, sparsity


def held_out_agreement(architectures) -> tuple[int, int]:
    """(agreeing, counted) of the shipped classifier forecast (the probe's model: the probe ran for every prune) over
    the cached prunes of `architectures` in analyses/forecast_runs.json, below collapse, each distinct prune once."""
    import json
    from pathlib import Path

    runs = json.loads((Path(__file__).resolve().parents[1] / "analyses" / "forecast_runs.json").read_text())
    seen, agree = set(), 0
    for key, entry in runs.items():
        arch, data, epochs, sparsity, _ = key.split("|")
        if arch not in architectures or entry["collapsed"] or (arch, epochs, sparsity, entry["prune"]) in seen:
            continue
        seen.add((arch, epochs, sparsity, entry["prune"]))
        trains = entry["accuracy"] > 0.1 + 0.1  # digits: chance + validate's margin
        agree += (forecast.PROBE_MODEL.probability(entry["evidence"]) >= 0.5) is trains
    return agree, len(seen)


def test_the_shipped_forecast_on_nets_it_was_never_fitted_on():
    """analyses/README.md's held-out figures, from the cached runs (the adaptive probe's evidence): the three digits
    nets of benchmarks/bench_mt_search.py (2 and 10 dense epochs), five zoo nets, three fresh families (analyses/_nets.py
    FRESH) and three more (FRESH2: written and fine-tuned before the probe was extended, scored once after)."""
    assert held_out_agreement({"heldout_vgg_bn", "heldout_residual", "heldout_separable"}) == (120, 129)  # 93.0 %
    assert held_out_agreement({"lenet5", "lenet_300_100", "mobilenet_v1", "resnet20"}) == (104, 112)  # 92.9 %
    assert held_out_agreement({"fresh_ln_gelu_mlp", "fresh_conv_dropout", "fresh_wide_resnet"}) == (116, 126)  # 92.1 %
    assert held_out_agreement({"fresh2_groupnorm_cnn", "fresh2_inverted_residual", "fresh2_gated_mlp"}) == (105, 112)


@pytest.mark.slow
def test_the_language_model_forecast_on_a_tiny_lm_half_pruned():
    """llama_tiny, one epoch on a slice of the embedded text (not a calibration run): at 0.5 it fine-tunes back
    within the `trained` bar and the forecast, read per token, says so before any fine-tuning; `validate` agrees."""
    pytest.importorskip("transformers")
    from collapsekit.data.tasks import task_of
    from collapsekit.data.text import embedded_corpus, text_bundle
    from collapsekit.training.train import defaults_for, fit as train
    from collapsekit.validation.validate import validate

    bundle = text_bundle(embedded_corpus()[:60_000], "text", context=64)
    hp = defaults_for("llama_tiny", task_of(bundle))
    torch.manual_seed(0)
    model = ck.models.create("llama_tiny", num_classes=bundle.num_classes, input_size=64, **bundle.model_kwargs())
    tune = dict(lr=hp["lr"], batch_size=hp["batch_size"], optimizer=hp["optimizer"], weight_decay=hp["weight_decay"],
                lr_schedule=hp["lr_schedule"], device="cpu", seed=0)
    train(model, bundle, epochs=1, progress=False, **tune)
    report = validate(model.eval(), bundle, [0.5], epochs=1, **tune)
    (half,) = report.levels
    assert half.trained and not half.predicted_collapsed and half.perplexity < report.dense_perplexity * 1.2
    assert half.forecast["probability"] > 0.8 and half.forecast_trainable
    assert half.forecast["batch"] == forecast.BATCH // 64  # per token: BATCH predictions, in whole 64-token windows
    assert report.agreement == 1.0
