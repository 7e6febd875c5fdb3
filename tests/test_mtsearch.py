"""search_mt: successive halving and the exhaustive sweep over MT at one sparsity, on MLPs whose middle layer empties."""
import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

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


def fragile_mlp(bundle, hidden: int, middle: int, epochs: int) -> nn.Module:
    """64 -> hidden -> middle -> 10 trained on `bundle`; the middle layer scaled by 0.1 and the last by 10, the
    same function (ReLU is positively homogeneous), so Global MP empties the middle layer first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, middle), nn.ReLU(),
                          nn.Linear(middle, 10))
    fit(model, bundle, epochs=epochs, lr=0.1, batch_size=64, device="cpu", seed=0, progress=False)
    with torch.no_grad():
        model[3].weight.mul_(0.1)
        model[3].bias.mul_(0.1)
        model[5].weight.mul_(10.0)
    return model


@pytest.fixture(scope="module")
def mlp(synthetic):
    """64 -> 32 -> 16 -> 10 (about 0.9 accuracy after 4 epochs), fragile at its middle layer."""
    model = fragile_mlp(synthetic, 32, 16, epochs=4)
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


def test_the_suggestion_is_the_point_halving_left_and_it_finished_its_run(result):
    assert result.search == "halving" and result.suggestion["mt"] in [p.mt for p in result.points]
    best = result.best
    assert best.mt == result.suggestion["mt"] == result.to_dict()["best_mt"] and best.budget == result.epochs
    assert result.suggestion["forecast_mt"] >= result.suggestion["floor"]  # the forecast's own pick is kept
    # Every other candidate stopped earlier; the collapsed one (a constant function) was never trained.
    assert all(p.budget < result.epochs for p in result.points if p is not best)
    assert [p.budget for p in result.points if p.predicted_collapsed] == [0.0]
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


# -- halving against the exhaustive sweep, on digits ---------------------------------------------------------------
DIGITS_SPARSITY = 0.97


@pytest.fixture(scope="module")
def digits_mlp():
    """64 -> 64 -> 32 -> 10 trained on digits (0.97), fragile at its middle layer: Global MP at 0.97 collapses it."""
    bundle = load("digits")
    return fragile_mlp(bundle, 64, 32, epochs=5), bundle


def test_halving_spends_a_third_of_the_sweep_and_picks_within_5_percent_of_its_best(digits_mlp):
    model, bundle = digits_mlp
    kwargs = dict(epochs=3, lr=0.05, device="cpu", seed=0)
    halved = search_mt(model, bundle, DIGITS_SPARSITY, **kwargs)
    full = search_mt(model, bundle, DIGITS_SPARSITY, full=True, **kwargs)
    assert [p.mt for p in halved.points] == [p.mt for p in full.points]  # the same candidates
    assert full.search == "full" and full.fine_tune_epochs == 3 * len(full.points)
    assert all(p.budget == 3 for p in full.points)
    assert halved.points[0].predicted_collapsed  # MT 0: the sparsity collapses the net
    assert 0 < halved.fine_tune_epochs <= full.fine_tune_epochs / 3
    by_mt = {p.mt: p for p in full.points}
    assert by_mt[halved.best.mt].accuracy >= 0.95 * full.best.accuracy
    # The candidate left at the end ran exactly the sweep's fine-tune: the same accuracy, to the bit.
    assert halved.best.accuracy == by_mt[halved.best.mt].accuracy
    assert full.best.mt == full.suggestion["mt"] and full.best.accuracy == max(p.accuracy for p in full.points)


# -- a search shared through an Optuna storage ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_finished_study_answers_without_training_and_refuses_another_search(mlp, synthetic, tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    kwargs = dict(epochs=2, lr=0.05, device="cpu", storage=storage, study_name="s")
    first = search_mt(mlp, synthetic, SPARSITY, **kwargs)
    again = search_mt(mlp, synthetic, SPARSITY, **kwargs)
    assert first.fine_tune_epochs > 0 and again.fine_tune_epochs == 0 and again.study == "s"
    assert again.points == first.points and again.suggestion["mt"] == first.suggestion["mt"]
    alone = search_mt(mlp, synthetic, SPARSITY, epochs=2, lr=0.05, device="cpu")  # in memory, one process
    assert alone.points == first.points
    with pytest.raises(CollapsekitError, match="another search.*epochs"):
        search_mt(mlp, synthetic, SPARSITY, **{**kwargs, "epochs": 3})
    with pytest.raises(CollapsekitError, match="not an Optuna database URL"):
        search_mt(mlp, synthetic, SPARSITY, **{**kwargs, "storage": str(tmp_path / "search.db")})


@pytest.mark.slow
def test_a_dead_workers_candidate_is_run_again(mlp, synthetic, tmp_path, monkeypatch):
    import optuna

    from collapsekit.validation import study as shared

    real, dead = shared.open_study, []

    def open_with_a_dead_worker(*args, **kwargs):
        study = real(*args, **kwargs)
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize"
            warnings.simplefilter("ignore")
            trial = study.ask()  # a worker takes the first candidate, beats once, and is killed
        study._storage.record_heartbeat(trial._trial_id)
        dead.append(trial.number)
        return study

    monkeypatch.setattr(shared, "open_study", open_with_a_dead_worker)
    kwargs = dict(epochs=2, lr=0.05, device="cpu")
    result = search_mt(mlp, synthetic, SPARSITY, storage=f"sqlite:///{tmp_path / 'search.db'}", study_name="s",
                       heartbeat=1, **kwargs)
    monkeypatch.undo()
    assert result.points == search_mt(mlp, synthetic, SPARSITY, **kwargs).points  # as if nobody had died
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'search.db'}").trials
    stale = trials[dead[0]]
    assert stale.state == optuna.trial.TrialState.FAIL  # its heartbeat stopped: failed, then enqueued again
    redone = [t for t in trials if t.number > stale.number and t.params.get("mt") == stale.system_attrs[
        "fixed_params"]["mt"]]
    assert redone and redone[0].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.mark.slow
def test_two_processes_share_one_search_and_a_third_reports_it(tmp_path):
    from collapsekit.files import checkpoint

    bundle = load("digits")
    model = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    fit(model, bundle, epochs=2, lr=0.05, batch_size=64, device="cpu", seed=0, progress=False)
    path = tmp_path / "model.safetensors"
    checkpoint.save(model, path, {"model": "lenet_300_100", "num_classes": 10, "in_channels": 1, "input_size": 8,
                                  "data": "digits"})
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "collapsekit", "mt-search", "--checkpoint", str(path), "--sparsity", "0.99",
               "--epochs", "2", "--lr", "0.05", "--device", "cpu", "--format", "json",
               "--storage", f"sqlite:///{tmp_path / 'search.db'}", "--study-name", "lenet",
               "--heartbeat", "60"]  # a busy CI machine must not make a live worker look dead
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outs]
    docs = [json.loads(out) for out, _ in outs]
    third = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert third.returncode == 0, third.stderr
    docs.append(json.loads(third.stdout))
    assert len({d["suggestion"]["mt"] for d in docs}) == 1 and docs[2]["fine_tune_epochs"] == 0
    assert docs[0]["points"] == docs[1]["points"] == docs[2]["points"]
    # No candidate was taken twice: one trial each (the collapsed ones, measured without training, have none).
    import optuna

    trials = optuna.load_study(study_name="lenet", storage=f"sqlite:///{tmp_path / 'search.db'}").trials
    taken = sorted(t.params["mt"] for t in trials if t.state != optuna.trial.TrialState.FAIL)
    assert taken == [p["mt"] for p in docs[2]["points"] if p["budget"] > 0]
    # Between them the two workers trained what one process trains (each JSON rounds to 4 decimals): two
    # processes never take the same trial (SQLite transactions lock at BEGIN, `study._lock_sqlite_transactions`).
    alone = search_mt(model, bundle, 0.99, epochs=2, lr=0.05, device="cpu")
    shared = docs[0]["fine_tune_epochs"] + docs[1]["fine_tune_epochs"]
    assert shared == pytest.approx(alone.fine_tune_epochs, abs=1e-3)
    assert alone.suggestion["mt"] == docs[2]["suggestion"]["mt"]


def test_a_candidate_whose_fine_tune_diverges_ranks_last_and_the_search_goes_on(mlp, synthetic, monkeypatch):
    import collapsekit.validation.pausable as pausable
    from collapsekit.errors import TrainingDiverged

    real, started = pausable.finetune, []

    def first_run_diverges(model, *args, **kwargs):
        started.append(model)
        if len(started) == 1:
            raise TrainingDiverged("training diverged (loss nan in epoch 1); lower the lr (now 0.05)")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(pausable, "finetune", first_run_diverges)
    result = search_mt(mlp, synthetic, SPARSITY, epochs=1, lr=0.05, device="cpu", seed=0)
    diverged = [p for p in result.points if p.diverged]
    assert len(diverged) == 1 and diverged[0].trained is False
    assert result.suggestion["mt"] != diverged[0].mt and not result.best.diverged
    document = json.loads(json.dumps(result.to_dict()))  # plain JSON: no NaN
    row = next(p for p in document["points"] if p["mt"] == diverged[0].mt)
    assert row["accuracy"] is None and row["diverged"] is True


def test_a_search_whose_every_fine_tune_diverges_says_so_in_one_line(mlp, synthetic, monkeypatch):
    import collapsekit.validation.pausable as pausable
    from collapsekit.errors import TrainingDiverged

    def diverges(*args, **kwargs):
        raise TrainingDiverged("training diverged (loss nan in epoch 1); lower the lr (now 0.05)")

    monkeypatch.setattr(pausable, "finetune", diverges)
    with pytest.raises(CollapsekitError, match="every candidate's fine-tune diverged.*lower the lr"):
        search_mt(mlp, synthetic, SPARSITY, epochs=1, lr=0.05, device="cpu", seed=0)
