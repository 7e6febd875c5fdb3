"""collapsekit.training.train and `collapsekit train`: the fit loop, its callbacks, resume, the command's files."""
from __future__ import annotations

import argparse
import copy
import json
import math

import pytest
import torch
import torch.nn as nn
from conftest import tiny_mlp, zoo_names

from collapsekit.files import checkpoint
from collapsekit import data
from collapsekit.cli import main
from collapsekit.cli.common import load_data, model_shapes
from collapsekit.errors import CollapsekitError
from collapsekit.training.train import (Callback, EpochEnd, augment_flip_crop, default_input_size, defaults_for,
                                        dense_train, evaluate, fit)


@pytest.fixture(scope="module")
def synthetic():
    return data.load("synthetic", seed=0)


class _Constant(nn.Module):
    """Always predicts class `k`."""

    def __init__(self, k: int, classes: int = 10):
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(k), classes).float())

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_evaluate_counts_exactly_and_restores_mode(synthetic):
    labels = synthetic.test.tensors[1]
    model = _Constant(3).train()
    assert evaluate(model, synthetic.test, "cpu", batch_size=7) == (labels == 3).sum().item() / len(labels)
    assert model.training
    with pytest.raises(CollapsekitError, match="empty data set"):
        evaluate(model, torch.utils.data.TensorDataset(torch.zeros(0, 1), torch.zeros(0)), "cpu")


class Recorder(Callback):
    """Records every call fit makes, with the optimizer it was handed."""

    def __init__(self):
        self.calls = []

    def on_epoch_begin(self, epoch, optimizer):
        self.calls.append(("begin", epoch, optimizer))

    def on_before_step(self, optimizer, step):
        self.calls.append(("before", step, optimizer))

    def on_step_end(self, optimizer, step):
        self.calls.append(("end", step, optimizer))

    def on_epoch_end(self, epoch, metrics, optimizer):
        self.calls.append(("epoch", epoch, optimizer))


def test_fit_learns_and_calls_back_with_its_one_optimizer_at_every_step(synthetic):
    torch.manual_seed(0)
    model = tiny_mlp()
    rec, epochs_seen = Recorder(), []
    result = fit(model, synthetic, epochs=3, lr=0.05, batch_size=64, device="cpu", seed=0,
                 callbacks=[rec, EpochEnd(lambda e, m: epochs_seen.append((e, m)))], progress=False)
    per_epoch = math.ceil(512 / 64)
    # One optimizer, built once, over the whole run: the same object at every call, holding the model's weights.
    optimizers = {id(opt) for _, _, opt in rec.calls}
    opt = rec.calls[0][2]
    assert len(optimizers) == 1 and isinstance(opt, torch.optim.SGD)
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    # Every step number once, before and after its step, in order; epochs bracket their steps.
    assert [s for kind, s, _ in rec.calls if kind == "before"] == list(range(3 * per_epoch))
    assert [s for kind, s, _ in rec.calls if kind == "end"] == list(range(3 * per_epoch))
    expected = []
    for epoch in (1, 2, 3):
        expected.append(("begin", epoch))
        for s in range((epoch - 1) * per_epoch, epoch * per_epoch):
            expected += [("before", s), ("end", s)]
        expected.append(("epoch", epoch))
    assert [(kind, n) for kind, n, _ in rec.calls] == expected
    assert [e for e, _ in epochs_seen] == [1, 2, 3]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert set(result.history[0]) == {"epoch", "loss", "train_acc", "test_acc", "seconds", "lr"}
    assert result.accuracy == result.history[-1]["test_acc"] == evaluate(model, synthetic.test, "cpu")
    assert result.accuracy > 0.9  # chance is 0.1
    assert result.history[0]["loss"] > result.history[-1]["loss"]
    # cosine: epoch e starts at lr * (1 + cos(pi (e - 1) / 3)) / 2
    for h in result.history:
        assert h["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * (h["epoch"] - 1) / 3)))
    assert result.to_dict()["accuracy"] == result.accuracy


def test_linear_schedule_and_bad_arguments(synthetic):
    result = fit(tiny_mlp(), synthetic, epochs=4, lr=0.1, batch_size=128, device="cpu", seed=0,
                 lr_schedule="linear", optimizer="adam", progress=False)
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.075, 0.05, 0.025])
    with pytest.raises(CollapsekitError, match="unknown optimizer 'lion'"):
        fit(tiny_mlp(), synthetic, 1, 0.1, 64, "cpu", 0, optimizer="lion", progress=False)
    with pytest.raises(CollapsekitError, match="unknown learning-rate schedule 'step'"):
        fit(tiny_mlp(), synthetic, 1, 0.1, 64, "cpu", 0, lr_schedule="step", progress=False)
    with pytest.raises(CollapsekitError, match="start epoch 5 outside 0..4"):
        fit(tiny_mlp(), synthetic, 4, 0.1, 64, "cpu", 0, start_epoch=5, progress=False)
    with pytest.raises(CollapsekitError, match=r"training diverged \(loss (nan|inf)"):
        fit(tiny_mlp(), synthetic, 2, 1e12, 64, "cpu", 0, progress=False)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_mask_callback_keeps_weights_and_optimizer_state_zero(synthetic, optimizer):
    # Masked fine-tuning's callback: after every step the pruned weights are +0.0 and so are the
    # optimizer's per-weight states there (momentum, Adam's moments), so nothing comes back.
    from collapsekit.training.masking import MaskCallback

    torch.manual_seed(0)
    model = tiny_mlp()
    masks = {name: torch.rand_like(p) > 0.7 for name, p in model.named_parameters() if name.endswith("weight")}
    params = dict(model.named_parameters())
    checked = []

    class Probe(Callback):
        def on_step_end(self, opt, step):
            for name, keep in masks.items():
                p = params[name]
                assert not p.detach()[~keep].any() and not torch.signbit(p.detach()[~keep]).any()
                states = [v for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.shape == p.shape]
                assert states and all(not v[~keep].any() for v in states)
            checked.append(step)

    fit(model, synthetic, 2, 0.05 if optimizer == "sgd" else 3e-3, 64, "cpu", 0, optimizer=optimizer,
        momentum=0.9, weight_decay=5e-3, callbacks=[MaskCallback(model, masks), Probe()], progress=False)
    assert checked == list(range(2 * 8))
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0
        assert torch.count_nonzero(params[name][mask]) == mask.sum()


def test_fit_resumed_from_epoch_and_optimizer_state_matches_uninterrupted_run(synthetic):
    """Run 4 epochs; separately run 2, keep the optimizer state, resume at epoch 2 in a new fit: same bits."""
    class KeepState(Callback):
        def on_epoch_end(self, epoch, metrics, optimizer):
            if epoch == 2:
                self.state = copy.deepcopy(optimizer.state_dict())

    torch.manual_seed(0)
    start = tiny_mlp()
    clean = copy.deepcopy(start)
    full = fit(clean, synthetic, 4, 0.05, 64, "cpu", 3, momentum=0.9, progress=False)

    part = copy.deepcopy(start)
    keep = KeepState()
    with pytest.raises(_Stop):
        fit(part, synthetic, 4, 0.05, 64, "cpu", 3, momentum=0.9, callbacks=[keep, _StopAfter(2)], progress=False)
    torch.manual_seed(99)  # the global RNG in between must not matter: each epoch is seeded
    rest = fit(part, synthetic, 4, 0.05, 64, "cpu", 3, momentum=0.9, start_epoch=2, optimizer_state=keep.state,
               progress=False)
    assert [h["epoch"] for h in rest.history] == [3, 4]
    for (name, a), b in zip(clean.state_dict().items(), part.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in rest.history] == [h["loss"] for h in full.history[2:]]
    assert [h["lr"] for h in rest.history] == [h["lr"] for h in full.history[2:]]
    # Without the optimizer state (momentum lost) the resumed weights differ.
    other = copy.deepcopy(start)
    with pytest.raises(_Stop):
        fit(other, synthetic, 4, 0.05, 64, "cpu", 3, momentum=0.9, callbacks=[_StopAfter(2)], progress=False)
    fit(other, synthetic, 4, 0.05, 64, "cpu", 3, momentum=0.9, start_epoch=2, progress=False)
    assert not torch.equal(next(other.parameters()), next(clean.parameters()))


class _Stop(Exception):
    pass


class _StopAfter(Callback):
    """Ends a run after `epoch` epochs, as a kill would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics, optimizer):
        if epoch == self.epoch:
            raise _Stop


def test_epoch_data_gives_each_epoch_its_training_set(synthetic):
    halves = {}

    def half(epoch):
        x, y = synthetic.train.tensors
        start = 0 if epoch % 2 else 256
        halves[epoch] = start
        return torch.utils.data.TensorDataset(x[start:start + 256], y[start:start + 256])

    rec = Recorder()
    fit(tiny_mlp(), synthetic, 2, 0.05, 64, "cpu", 0, epoch_data=half, callbacks=[rec], progress=False)
    assert halves == {1: 0, 2: 256}
    assert [s for kind, s, _ in rec.calls if kind == "end"] == list(range(2 * 4))  # 256 / 64 steps per epoch


def test_lr_restarts_start_the_decay_over():
    result = fit(tiny_mlp(), data.load("synthetic", seed=0), epochs=4, lr=0.1, batch_size=128, device="cpu",
                 seed=0, lr_schedule="linear", lr_restarts=(1, 3), progress=False)
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.05, 0.1, 0.05])


def test_fit_is_deterministic_per_seed(synthetic):
    def run(seed):
        torch.manual_seed(123)
        model = tiny_mlp()
        result = fit(model, synthetic, 1, 0.05, 32, "cpu", seed, progress=False)
        return result.history[0]["loss"], torch.cat([p.flatten() for p in model.parameters()])

    (l0, w0), (l1, w1), (_, w2) = run(0), run(0), run(1)
    assert l0 == l1 and torch.equal(w0, w1)
    assert not torch.equal(w0, w2)


def test_augment_flip_crop_only_flips_and_shifts():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    g = torch.Generator().manual_seed(0)
    flipped = torch.stack([augment_flip_crop(x, g, pad=0) for _ in range(20)])
    for out in flipped:
        for i in range(2):
            assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    assert any(torch.equal(out[0], x[0].flip(2)) for out in flipped)
    shifted = augment_flip_crop(x, g, pad=2)
    assert shifted.shape == x.shape
    assert set(shifted.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_defaults_per_family():
    assert defaults_for("lenet_300_100")["batch_size"] == 64
    assert defaults_for("resnet20") == defaults_for("wrn_16_2") == dict(epochs=8, lr=0.05, batch_size=32,
                                                                        optimizer="sgd", weight_decay=5e-4)
    assert defaults_for("fastgrnn")["optimizer"] == "adam"
    assert defaults_for("mypkg.nets:mlp_small")["lr"] == defaults_for("lenet_300_100")["lr"]


def test_dense_train_writes_checkpoint_and_sidecar(tmp_path, synthetic):
    result = dense_train("conftest:tiny_mlp", synthetic, 2, tmp_path / "run", batch_size=128, progress=False)
    meta = checkpoint.read_meta(tmp_path / "run" / "model.safetensors")
    assert meta["accuracy"] == result.accuracy and meta["model"] == "conftest:tiny_mlp"
    assert (meta["num_classes"], meta["in_channels"], meta["input_size"], meta["data"]) == (10, 1, 8, "synthetic")
    assert meta["args"]["batch_size"] == 128 and meta["args"]["epochs"] == 2 and len(meta["history"]) == 2
    with pytest.raises(CollapsekitError, match=r"model 'conftest:tiny_mlp' cannot take synthetic inputs of shape "
                                               r"\[3, 8, 8\]"):
        dense_train("conftest:tiny_mlp", data.load("synthetic", channels=3), 1, tmp_path / "x",
                    model=tiny_mlp(in_channels=1), progress=False)


def test_default_input_size_raises_digits_only_for_mobilenet():
    assert default_input_size("mobilenet_v1", "digits") == 32
    assert default_input_size("resnet20", "digits") is None
    assert default_input_size("mobilenet_v1", "cifar10") is None  # already 32
    assert default_input_size("mobilenet_v1", "har") is None  # sequences keep their steps


# ---------------------------------------------------------------- command line

def _args(**kw) -> argparse.Namespace:
    base = dict(model=None, checkpoint=None, num_classes=None, in_channels=None, input_size=None, data=None,
                data_path=None, seed=0)
    return argparse.Namespace(**{**base, **kw})


def test_model_shapes_precedence():
    # explicit argument > checkpoint sidecar > --data's native shape > the zoo's 10/3/32
    assert model_shapes(_args(model="m"), {}) == ("m", 10, 3, 32)
    assert model_shapes(_args(model="m", data="har"), {}) == ("m", 6, 9, 128)
    assert model_shapes(_args(model="mobilenet_v1", data="digits"), {}) == ("mobilenet_v1", 10, 1, 32)
    sidecar = {"model": "resnet20", "num_classes": 10, "in_channels": 3, "input_size": 32, "data": "digits"}
    assert model_shapes(_args(), sidecar) == ("resnet20", 10, 3, 32)
    assert model_shapes(_args(input_size=16, model="wrn_16_2"), sidecar) == ("wrn_16_2", 10, 3, 16)


def test_load_data_follows_the_model_shape(tmp_path):
    bundle = load_data(_args(), {"data": "digits", "in_channels": 3, "input_size": 16, "num_classes": 10})
    assert bundle.train.tensors[0].shape == (1437, 3, 16, 16)
    with pytest.raises(CollapsekitError, match=r"the model has 6 outputs but digits has 10 classes "
                                               r"\(pass --num-classes 10\)"):
        load_data(_args(data="digits"), {"num_classes": 6})


def test_cli_train_then_retrain_from_sidecar(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "conftest:tiny_mlp", "--data", "synthetic", "--epochs", "2", "--out", str(out),
               "--batch-size", "128", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert (out / "model.safetensors").is_file() and (out / "model.json").is_file()
    meta = json.loads((out / "model.json").read_text())
    assert printed.startswith(f"test accuracy {meta['accuracy']:.4f} (conftest:tiny_mlp on synthetic, 2 epochs)")
    assert 0.5 < meta["accuracy"] <= 1.0 and meta["seed"] == 0
    # --checkpoint alone rebuilds model and data from the sidecar; 0 epochs just evaluates the loaded weights.
    rc = main(["train", "--checkpoint", str(out / "model.safetensors"), "--epochs", "0", "--out", str(tmp_path / "b"),
               "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["accuracy"] == meta["accuracy"] and doc["history"] == []


@pytest.mark.parametrize("argv, expected", [
    (["--model", "no_such_net", "--data", "synthetic"], "unknown model 'no_such_net'"),
    (["--model", "conftest:tiny_mlp", "--data", "cifar10", "--data-path", "/nonexistent/c10"],
     "cifar10: expected data_batch_1 in /nonexistent/c10 or /nonexistent/c10/cifar-10-batches-py"),
    (["--data", "synthetic"], "no model given: pass --model"),
    (["--model", "conftest:tiny_mlp"], "no data given: pass --data"),
    (["--checkpoint", "CORRUPT"], "is corrupt or truncated: "),
    (["--checkpoint", "/nonexistent/model.safetensors"], "checkpoint /nonexistent/model.safetensors not found"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, expected):
    if "CORRUPT" in argv:
        path = tmp_path / "model.safetensors"
        checkpoint.save(tiny_mlp(), path, {"model": "conftest:tiny_mlp", "data": "synthetic"})
        path.write_bytes(path.read_bytes()[:-64])
        argv = [str(path) if a == "CORRUPT" else a for a in argv]
    rc = main(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("collapsekit train: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, floor", [("lenet_300_100", 0.95), ("resnet20", 0.97)])
def test_zoo_on_digits_reaches_accuracy(tmp_path, digits, name, floor):
    if name not in zoo_names():
        pytest.skip(f"zoo model {name} not available yet")
    result = dense_train(name, digits, None, tmp_path, progress=False)  # the family defaults
    assert result.accuracy >= floor, result.history
