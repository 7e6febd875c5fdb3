"""Predicted vs observed collapse: validate on a tiny MLP (fast) and the MobileNet / WRN experiment on digits (slow)."""
import json
import math

import pytest
import torch

import collapsekit as ck
from collapsekit.files import checkpoint
from collapsekit import models
from collapsekit.validation.mtsearch import search_mt
from collapsekit.training.train import fit, seed_everything
from collapsekit.validation.validate import validate
from collapsekit.views.render import mt_search_to_text, validation_to_text


def trained(name, digits, epochs, lr, **kw):
    seed_everything(0)
    model = models.create(name, num_classes=10, in_channels=1, input_size=8, **kw)
    fit(model, digits, epochs=epochs, lr=lr, batch_size=64, device="cpu", seed=0, progress=False)
    return model


@pytest.fixture(scope="module")
def lenet(digits):
    return trained("lenet_300_100", digits, epochs=2, lr=0.05)


def test_validate_mlp_agrees_at_alive_and_collapsed_levels(lenet, digits):
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    report = validate(lenet, digits, [0.9, 0.999], epochs=2, lr=0.05, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in lenet.state_dict().items())  # copies were pruned
    alive, dead = report.at(0.9), report.at(0.999)
    assert not alive.predicted_collapsed and not alive.observed_collapsed and alive.trained
    assert alive.accuracy > 0.8
    # At 0.999 Global MP empties fc1 and fc2 (LeNet-300-100 has no bypass): a constant function.
    assert dead.predicted_collapsed and set(dead.emptied_layers) == {"fc1.weight", "fc2.weight"}
    assert dead.constant_after_prune and dead.observed_collapsed and not dead.trained
    assert dead.accuracy <= report.chance + report.margin and dead.effective_sparsity == 1.0
    assert report.agreement_rate == 1.0
    text = validation_to_text(report)
    assert "agreement 2/2 (100%)" in text and "collapsed" in text
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["agreement_rate"] == 1.0 and [lv["agree"] for lv in doc["levels"]] == [True, True]
    assert doc["levels"][1]["emptied_layers"] == ["fc1.weight", "fc2.weight"]


def test_cli_validate_and_mt_search_json(lenet, tmp_path, capsys):
    from collapsekit.cli import main

    path = tmp_path / "model.safetensors"
    checkpoint.save(lenet, path, {"model": "lenet_300_100", "num_classes": 10, "in_channels": 1, "input_size": 8,
                                  "data": "digits"})
    assert main(["validate", "--checkpoint", str(path), "--sparsity", "0.9", "0.999", "--epochs", "1", "--lr",
                 "0.05", "--device", "cpu", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [lv["sparsity"] for lv in doc["levels"]] == [0.9, 0.999] and doc["agreement_rate"] == 1.0
    assert main(["mt-search", "--checkpoint", str(path), "--sparsity", "0.999", "--mt", "0", "16",
                 "--epochs", "1", "--lr", "0.05", "--device", "cpu", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    points = {p["mt"]: p for p in doc["points"]}
    # MT 16, the most 0.999 leaves room for, keeps a path (the floor depends on the trained weights: 7-13).
    assert points[0]["predicted_collapsed"] and not points[16]["predicted_collapsed"]
    # Successive halving: the collapsed MT 0 is a constant function, measured without training; MT 16 is left.
    # With one candidate to train, a third of the sweep's 2 epochs is all it gets.
    assert doc["search"] == "halving" and points[0]["budget"] == 0 and 0.5 < points[16]["budget"] <= 2 / 3
    assert doc["best_mt"] == doc["suggestion"]["mt"] == 16 and doc["best_accuracy"] == points[16]["accuracy"]
    assert points[0]["accuracy"] <= 0.2  # collapsed: a constant function
    assert main(["mt-search", "--checkpoint", str(path), "--sparsity", "0.999", "--mt", "50", "--epochs", "1",
                 "--device", "cpu"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["mt-search", "--checkpoint", str(path), "--sparsity", "0.999", "--epochs", "1", "--lr", "0.05",
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "suggested MT" in text and "<- best" in text


# -- the collapse experiment (docs/design.md Background): MobileNet collapses, MT prevents it, WRN bypasses --------



@pytest.fixture(scope="module")
def mobilenet(digits):
    """MobileNet-V1 width 0.25 on 8x8 digits, 8 epochs (about 0.75 test accuracy)."""
    return trained("mobilenet_v1", digits, epochs=8, lr=0.05, width_mult=0.25)


@pytest.fixture(scope="module")
def sparsity(mobilenet, digits):
    """A level where the report predicts MobileNet's collapse: just past its collapse sparsity
    (about 0.9 on digits; trained weights move it a little with the thread count)."""
    report = ck.analyze(mobilenet, digits.example_input(), sparsities=[0.5])
    assert report.collapse_sparsity < 0.97
    return math.ceil(report.collapse_sparsity * 1000) / 1000 + 0.005


@pytest.fixture(scope="module")
def wrn(digits):
    """WRN-16-2 on 8x8 digits, 3 epochs (about 0.97 test accuracy)."""
    return trained("wrn_16_2", digits, epochs=3, lr=0.1)


@pytest.mark.slow
def test_mobilenet_collapses_at_predicted_sparsity_and_validate_agrees(mobilenet, digits, sparsity):

    report = validate(mobilenet, digits, [0.5, sparsity], epochs=3, lr=0.02, device="cpu", name="mobilenet_v1")
    print(validation_to_text(report))
    assert report.collapse_sparsity < sparsity
    collapsed = report.at(sparsity)
    assert collapsed.predicted_collapsed and collapsed.observed_collapsed
    assert collapsed.accuracy <= report.chance + report.margin  # no better than chance
    assert not report.at(0.5).predicted_collapsed and report.at(0.5).trained
    assert report.agreement_rate == 1.0


@pytest.mark.slow
def test_mobilenet_with_suggested_mt_trains_above_chance(mobilenet, digits, sparsity):
    an = ck.Analysis(mobilenet, digits.example_input())  # one analysis: the search reuses the suggestion's forecasts
    suggestion = ck.suggest_mt(an, sparsity=sparsity, data=digits)
    assert suggestion.collapses_without_mt and suggestion.mt >= suggestion.floor > 0
    # The floor (a kept path to every class logit) is only a lower bound: paths that thin
    # do not train in 4 epochs. With data, suggest_mt returns the MT the forecast calls trainable.
    assert suggestion.forecast_trainable
    mt = suggestion.mt
    # Just past collapse the outcome of a short fine-tune is noisy: 8 epochs settle it (0.45 at MT 656, 1 thread).
    result = search_mt(an, digits, sparsity, mts=[0, mt], epochs=8, lr=0.02, device="cpu", full=True)
    print(mt_search_to_text(result))
    by_mt = {p.mt: p for p in result.points}
    assert by_mt[0].predicted_collapsed and by_mt[0].accuracy <= 0.2
    assert not by_mt[mt].predicted_collapsed
    assert result.best.mt == mt and by_mt[mt].accuracy > 0.1 + 0.2  # well above chance


@pytest.mark.slow
def test_wrn_does_not_collapse_at_that_sparsity(wrn, digits, sparsity):

    report = validate(wrn, digits, [sparsity], epochs=2, lr=0.05, device="cpu", name="wrn_16_2")
    print(validation_to_text(report))
    level = report.at(sparsity)
    assert report.collapse_sparsity > 0.99
    assert not level.predicted_collapsed and not level.observed_collapsed
    assert level.trained and level.accuracy > 0.8
    assert report.agreement_rate == 1.0


# ---- causal LMs end to end, by perplexity --------------------------------------------------------------------

def _cli_json(capsys, *argv) -> dict:
    from collapsekit.cli import main

    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def user_lm_module(monkeypatch):
    pytest.importorskip("transformers")
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # heldout_lm.py, as a user's own module


@pytest.mark.slow
def test_held_out_lm_learns_in_one_epoch_and_stays_trained_at_half_sparsity(tmp_path, user_lm_module, capsys):
    """A GPT-2 (not in the zoo) through `train --data text --epochs 1` -> `report` -> `validate` at 0.5."""
    out = tmp_path / "gpt2"
    trained_doc = _cli_json(capsys, "train", "--model", "heldout_lm:gpt2_tiny", "--data", "text", "--epochs", "1",
                            "--out", str(out), "--no-progress", "--format", "json")
    ckpt = str(out / "model.safetensors")
    report = _cli_json(capsys, "report", "--checkpoint", ckpt, "--format", "json", "--sparsity", "0.5")
    assert not report["levels"][0]["collapsed"]
    doc = _cli_json(capsys, "validate", "--checkpoint", ckpt, "--data", "text", "--sparsity", "0.5", "--epochs", "1",
                    "--no-progress", "--format", "json")
    unigram = doc["unigram_perplexity"]
    assert doc["metric"] == "perplexity" and 20 < unigram < 35  # byte-level English prose and code: ~26
    assert doc["dense_perplexity"] == pytest.approx(trained_doc["perplexity"], rel=1e-6)
    assert doc["dense_perplexity"] <= 0.8 * unigram  # one epoch is enough to learn
    (half,) = doc["levels"]
    assert {"perplexity", "perplexity_pruned", "trained", "predicted_collapsed", "forecast_trainable"} <= set(half)
    assert not half["predicted_collapsed"] and half["trained"] and half["perplexity"] <= 0.8 * unigram
    assert half["forecast_trainable"] and half["agree"] and doc["agreement"] == 1.0


@pytest.mark.slow
def test_held_out_lm_past_its_predicted_collapse_cannot_beat_the_unigram(tmp_path, user_lm_module, capsys):
    """An OPT whose narrow embedding projections are bottlenecks, on the user's own text: every level predicted
    collapsed is a constant function, so its perplexity stays at or above the unigram perplexity."""
    from collapsekit.data.text import embedded_corpus

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(embedded_corpus()[:60_000])
    out = tmp_path / "opt"
    _cli_json(capsys, "train", "--model", "heldout_lm:opt_tiny", "--data", f"text:{corpus}", "--epochs", "1",
              "--input-size", "64", "--out", str(out), "--no-progress", "--format", "json")
    ckpt = str(out / "model.safetensors")
    collapse = _cli_json(capsys, "report", "--checkpoint", ckpt, "--format", "json",
                         "--sparsity", "0.5")["collapse_sparsity"]
    assert 0.99 < collapse < 1.0  # project_in / project_out lie on every path
    past = collapse + (1.0 - collapse) / 2
    doc = _cli_json(capsys, "validate", "--checkpoint", ckpt, "--data", f"text:{corpus}", "--sparsity", f"{past:.12f}",
                    "--epochs", "1", "--no-progress", "--format", "json")
    unigram = doc["unigram_perplexity"]
    (gone,) = doc["levels"]
    assert gone["predicted_collapsed"] and gone["observed_collapsed"] and gone["constant_after_prune"]
    assert gone["perplexity"] >= 0.98 * unigram and gone["perplexity_pruned"] >= 0.98 * unigram
    assert not gone["trained"] and gone["forecast_trainable"] is False and gone["agree"]
