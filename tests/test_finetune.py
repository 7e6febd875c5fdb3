"""Masked fine-tuning: masks exact through SGD momentum / weight decay / Adam, resume after a kill, files, CLI."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import collapsekit as ck
from collapsekit.files import checkpoint
from collapsekit import models
from collapsekit.pruning import masks as mask_io
from collapsekit.errors import CollapsekitError
from collapsekit.files.runstate import STATE_FILE, read_metrics, read_state
from collapsekit.training.finetune import check_pruned_zero, finetune
from collapsekit.training.train import LR_SCHEDULES, Callback


class AfterStep(Callback):
    """Calls `fn(model)` after every optimizer step, as a test's probe."""

    def __init__(self, model, fn):
        self.model, self.fn = model, fn

    def on_step_end(self, optimizer, step):
        self.fn(self.model)

SPARSITY = 0.9


def pruned_copy(dense, sparsity=SPARSITY, mt=None):
    model = models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    model.load_state_dict(dense.state_dict())
    return model, ck.prune(model, sparsity, mt=mt).masks


def assert_pruned_plus_zero(model, masks):
    for name, keep in masks.items():
        w = model.get_parameter(name).detach()
        assert torch.equal(w[~keep], torch.zeros(int((~keep).sum()))), name
        assert not torch.signbit(w[~keep]).any(), f"{name}: pruned weights must be +0.0"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_pruned_weights_exactly_zero_after_every_step(dense, digits, optimizer):
    model, masks = pruned_copy(dense)
    seen = []

    def every_step(m):
        assert_pruned_plus_zero(m, masks)
        seen.append(1)

    result = finetune(model, masks, digits, epochs=2, lr=0.05 if optimizer == "sgd" else 3e-3,
                      optimizer=optimizer, weight_decay=5e-4, device="cpu", progress=False,
                      callbacks=[AfterStep(model, every_step)])
    assert len(seen) == 2 * 23  # 1437 samples, batch 64
    assert_pruned_plus_zero(model, masks)
    total = sum(m.numel() for m in masks.values())
    assert result.sparsity == pytest.approx(round(SPARSITY * total) / total, abs=1e-12)
    for name, keep in result.masks.items():
        assert torch.equal(keep, masks[name])
    assert result.accuracy > 0.7


def test_gradients_and_momentum_zero_at_pruned_positions(dense, digits):
    """Invariant 3 at its source: right after each step (before masks are re-applied) the gradients, the
    momentum buffers and the weights are still zero at pruned positions, weight decay included."""
    model, masks = pruned_copy(dense)
    checked = []

    def post(opt, args, kwargs):
        for p in opt.param_groups[0]["params"]:
            for name, keep in masks.items():
                if p is model.get_parameter(name):
                    assert not p.grad[~keep].any()
                    buf = opt.state.get(p, {}).get("momentum_buffer")
                    assert buf is not None and not buf[~keep].any()
                    assert not p.detach()[~keep].any()
                    checked.append(name)

    class WatchSteps(Callback):
        """Hooks this run's own optimizer (a per-optimizer hook, not a process-wide one) once."""

        def on_epoch_begin(self, epoch, optimizer):
            if epoch == 1:
                optimizer.register_step_post_hook(post)

    finetune(model, masks, digits, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-3, device="cpu",
             progress=False, callbacks=[WatchSteps()])
    assert len(checked) == 2 * 23 * len(masks)


def test_no_process_wide_optimizer_hook_during_or_after_a_finetune(dense, digits):
    """Masking reaches the optimizer through fit's callbacks: torch's global step hooks stay empty."""
    from torch.optim import optimizer as torch_optimizer

    model, masks = pruned_copy(dense)
    seen = []

    class Watch(Callback):
        def on_before_step(self, optimizer, step):
            seen.append((len(torch_optimizer._global_optimizer_pre_hooks),
                         len(torch_optimizer._global_optimizer_post_hooks)))

    assert not torch_optimizer._global_optimizer_pre_hooks
    finetune(model, masks, digits, epochs=1, lr=0.05, device="cpu", progress=False, callbacks=[Watch()])
    assert seen == [(0, 0)] * 23
    assert not torch_optimizer._global_optimizer_pre_hooks and not torch_optimizer._global_optimizer_post_hooks
    assert_pruned_plus_zero(model, masks)


def test_learning_rate_follows_cosine_per_epoch(dense, digits):
    model, masks = pruned_copy(dense)
    result = finetune(model, masks, digits, epochs=4, lr=0.1, device="cpu", progress=False)
    expected = [0.1 * LR_SCHEDULES["cosine"](e / 4) for e in range(4)]
    assert [m["lr"] for m in result.history] == pytest.approx(expected)
    assert [m["epoch"] for m in result.history] == [1, 2, 3, 4]


def test_writes_metrics_checkpoint_model_and_masks(dense, digits, tmp_path):
    model, masks = pruned_copy(dense)
    result = finetune(model, masks, digits, epochs=2, lr=0.05, device="cpu", out=tmp_path, progress=False,
                      meta={"model": "lenet_300_100"})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint.safetensors", "finetune.json", "metrics.jsonl", "model.json",
                     "model.safetensors"]  # the masks travel inside model.safetensors
    assert [m["epoch"] for m in read_metrics(tmp_path)] == [1, 2]
    saved = mask_io.load(tmp_path / "model.safetensors")
    assert all(torch.equal(saved[n], masks[n]) for n in masks)
    # The sidecar rebuilds the model, and the weights load with their exact zeros.
    meta = checkpoint.read_meta(tmp_path / "model.safetensors")
    assert meta["model"] == "lenet_300_100" and meta["finetune"]["accuracy"] == result.accuracy
    again = checkpoint.load_into(models.create(meta["model"], 10, 1, 8), tmp_path / "model.safetensors")
    assert_pruned_plus_zero(again, masks)
    # Safetensors, no pickle: the header is JSON behind an 8-byte length.
    raw = (tmp_path / STATE_FILE).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"]["format"] == "collapsekit-finetune"
    assert read_state(tmp_path / STATE_FILE).epoch == 2


class Killed(Exception):
    pass


def test_killed_mid_epoch_and_resumed_matches_uninterrupted_run(dense, digits, tmp_path):
    """Kill in epoch 3 of 4; resume: same masks, each epoch logged once, weights bit-identical to a clean run."""
    clean_model, masks = pruned_copy(dense)
    clean = finetune(clean_model, masks, digits, epochs=4, lr=0.05, device="cpu", out=tmp_path / "clean",
                     progress=False)

    model, masks2 = pruned_copy(dense)
    steps = []

    def die_in_epoch_3(m):
        steps.append(1)
        if len(steps) == 2 * 23 + 7:
            raise Killed

    with pytest.raises(Killed):
        finetune(model, masks2, digits, epochs=4, lr=0.05, device="cpu", out=tmp_path / "run", progress=False,
                 callbacks=[AfterStep(model, die_in_epoch_3)])
    assert [m["epoch"] for m in read_metrics(tmp_path / "run")] == [1, 2]
    assert read_state(tmp_path / "run" / STATE_FILE).epoch == 2

    model, masks3 = pruned_copy(dense)  # what a restarted process rebuilds
    resumed = finetune(model, masks3, digits, epochs=4, lr=0.05, device="cpu", out=tmp_path / "run",
                       resume=True, progress=False)
    assert resumed.resumed_from == 2
    assert [m["epoch"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3, 4]
    assert all(torch.equal(resumed.masks[n], clean.masks[n]) for n in masks)
    assert_pruned_plus_zero(model, masks)
    for (name, a), b in zip(clean_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.accuracy == clean.accuracy

    def timeless(history):
        return [{k: v for k, v in m.items() if k != "seconds"} for m in history]

    assert timeless(resumed.history) == timeless(clean.history)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_run_resumed_after_an_epoch_matches_uninterrupted_run(dense, digits, tmp_path, optimizer):
    """Adam's moments and step counts go through the checkpoint: the resumed run is bit-identical."""
    clean_model, masks = pruned_copy(dense)
    kw = dict(lr=3e-3, optimizer=optimizer, device="cpu", progress=False)
    finetune(clean_model, masks, digits, epochs=3, **kw)

    model, masks2 = pruned_copy(dense)

    class DieInEpoch2(Callback):
        def on_step_end(self, opt, step):
            if step == 23 + 3:
                raise Killed

    with pytest.raises(Killed):
        finetune(model, masks2, digits, epochs=3, out=tmp_path, callbacks=[DieInEpoch2()], **kw)
    saved = read_state(tmp_path / STATE_FILE).optimizer_state()
    assert saved is not None and {"exp_avg", "exp_avg_sq", "step"} <= set(saved["state"][0])
    model, masks3 = pruned_copy(dense)
    resumed = finetune(model, masks3, digits, epochs=3, out=tmp_path, resume=True, **kw)
    assert resumed.resumed_from == 1
    for (name, a), b in zip(clean_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert_pruned_plus_zero(model, masks)


def test_resume_checks_it_is_the_same_run(dense, digits, tmp_path):
    model, masks = pruned_copy(dense)
    finetune(model, masks, digits, epochs=1, lr=0.05, device="cpu", out=tmp_path, progress=False)
    model, masks = pruned_copy(dense)
    with pytest.raises(CollapsekitError, match="already holds"):
        finetune(model, masks, digits, epochs=1, lr=0.05, device="cpu", out=tmp_path, progress=False)
    other, other_masks = pruned_copy(dense, sparsity=0.8)
    with pytest.raises(CollapsekitError, match="different masks"):
        finetune(other, other_masks, digits, epochs=1, lr=0.05, device="cpu", out=tmp_path, resume=True,
                 progress=False)
    with pytest.raises(CollapsekitError, match="lr"):
        finetune(model, masks, digits, epochs=1, lr=0.01, device="cpu", out=tmp_path, resume=True, progress=False)
    # A finished run resumes as a no-op that reports the same result.
    done = finetune(model, masks, digits, epochs=1, lr=0.05, device="cpu", out=tmp_path, resume=True,
                    progress=False)
    assert done.resumed_from == 1 and [m["epoch"] for m in read_metrics(tmp_path)] == [1]


def test_check_pruned_zero_catches_a_revived_weight(dense):
    model, masks = pruned_copy(dense)
    check_pruned_zero(model, masks)
    name = next(iter(masks))
    with torch.no_grad():
        model.get_parameter(name)[~masks[name]] = 1.0
    with pytest.raises(CollapsekitError, match="non-zero"):
        check_pruned_zero(model, masks)


def test_cli_finetune_then_resume_complete(dense, tmp_path, capsys):
    from collapsekit.cli import main

    checkpoint.save(dense, tmp_path / "dense" / "model.safetensors",
                    {"model": "lenet_300_100", "num_classes": 10, "in_channels": 1, "input_size": 8, "data": "digits"})
    args = ["finetune", "--checkpoint", str(tmp_path / "dense" / "model.safetensors"), "--sparsity", "0.95",
            "--epochs", "2", "--lr", "0.05", "--out", str(tmp_path / "ft"), "--device", "cpu", "--no-progress",
            "--format", "json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["epochs"] == 2 and doc["accuracy"] > 0.5 and doc["pruning_schedule"] == "oneshot"
    masks = mask_io.load(tmp_path / "ft" / "model.safetensors")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.95 * total)
    assert main(args) == 2  # the directory holds a run: refuse without --resume
    assert "already holds" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 2


@pytest.mark.slow
def test_cli_killed_process_resumes(dense, tmp_path):
    """SIGKILL a real `collapsekit finetune` after its first checkpoint; --resume completes every epoch once."""
    checkpoint.save(dense, tmp_path / "dense" / "model.safetensors",
                    {"model": "lenet_300_100", "num_classes": 10, "in_channels": 1, "input_size": 8, "data": "digits"})
    out = tmp_path / "ft"
    dense_path = tmp_path / "dense" / "model.safetensors"
    cmd = [sys.executable, "-m", "collapsekit", "finetune", "--checkpoint", str(dense_path),
           "--sparsity", "0.9", "--epochs", "20", "--lr", "0.05", "--batch-size", "16", "--out", str(out),
           "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(read_metrics(out)) < 2:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = len(read_metrics(out))
    assert 2 <= done < 20
    killed_masks = read_state(out / STATE_FILE).tensors
    resumed = subprocess.run(cmd + ["--resume", "--format", "json"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["resumed_from"] >= done
    assert [m["epoch"] for m in read_metrics(out)] == list(range(1, 21))
    final = mask_io.load(out / "model.safetensors")
    for name, keep in final.items():
        assert torch.equal(keep, killed_masks[f"mask/{name}"])


def test_bf16_autocast_wrapper_trains_with_exact_masks(dense, digits, monkeypatch):
    """The engine as CUDA runs it (model under bf16 autocast), exercised with CPU autocast: masks stay exact."""
    import importlib

    engine = importlib.import_module("collapsekit.training.finetune")  # the module; ck.finetune is the function

    model, masks = pruned_copy(dense)
    wrapped = engine.BF16Autocast(model, device_type="cpu")
    out = wrapped(digits.example_input())
    assert out.dtype == torch.float32 and out.shape == (1, 10)
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in model.parameters()]
    monkeypatch.setattr(engine._MaskedRun, "_wrap", lambda self: engine.BF16Autocast(self.model, "cpu"))
    result = finetune(model, masks, digits, epochs=2, lr=0.05, device="cpu", progress=False,
                      callbacks=[AfterStep(model, lambda m: assert_pruned_plus_zero(m, masks))])
    assert_pruned_plus_zero(model, masks)
    assert result.accuracy > 0.7


# ---- causal language models ----------------------------------------------------------------------------------

class TinyLM(torch.nn.Module):
    """Token embedding -> MLP -> next-token logits [batch, steps, vocab]: the smallest LM with prunable layers."""

    def __init__(self, vocab_size=256):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, 16)
        self.hidden = torch.nn.Linear(16, 64)
        self.head = torch.nn.Linear(64, vocab_size)

    def forward(self, ids):
        return self.head(torch.relu(self.hidden(self.embed(ids))))


@pytest.fixture(scope="module")
def small_text():
    from collapsekit.data.text import embedded_corpus, text_bundle

    return text_bundle(embedded_corpus()[:30_000], "small_text", context=16)


def test_lm_masked_finetune_resumes_bit_identical_and_learns(small_text, tmp_path):
    """A causal LM fine-tuned with masks: next-token loss, perplexity before/after, exact masks, resume."""
    from collapsekit.data.tasks import task_of
    from collapsekit.training.train import score

    torch.manual_seed(0)
    dense_lm = TinyLM()
    kw = dict(lr=2e-2, batch_size=32, optimizer="adamw", weight_decay=0.01, lr_schedule="warmup_cosine",
              device="cpu", progress=False)

    def pruned():
        model = TinyLM()
        model.load_state_dict(dense_lm.state_dict())
        return model, ck.prune(model, 0.7).masks

    clean_model, masks = pruned()
    clean = finetune(clean_model, masks, small_text, epochs=3, out=tmp_path / "clean", **kw)
    steps_per_epoch = -(-len(small_text.train) // 32)

    class DieInEpoch2(Callback):
        def on_step_end(self, opt, step):
            if step == steps_per_epoch + 5:
                raise Killed

    model, masks2 = pruned()
    with pytest.raises(Killed):
        finetune(model, masks2, small_text, epochs=3, out=tmp_path / "run", callbacks=[DieInEpoch2()], **kw)
    model, masks3 = pruned()
    resumed = finetune(model, masks3, small_text, epochs=3, out=tmp_path / "run", resume=True, **kw)
    assert resumed.resumed_from == 1
    for (name, a), b in zip(clean_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert_pruned_plus_zero(model, masks)
    assert resumed.perplexity == clean.perplexity and resumed.perplexity_before == clean.perplexity_before
    # The numbers are the task's: perplexity = exp(mean next-token cross-entropy) on the test windows.
    scores = score(model, small_text.test, task=task_of(small_text))
    assert resumed.perplexity == pytest.approx(math.exp(scores["loss"]), rel=1e-9)
    assert resumed.accuracy == pytest.approx(scores["accuracy"])
    # Random init: near uniform (256) before; fine-tuning learns bigram statistics well below the unigram's.
    unigram = task_of(small_text).baseline(small_text)
    assert resumed.perplexity_before > 200 and resumed.perplexity < 0.8 * unigram
    history = resumed.history
    assert [m["sparsity"] for m in history] == [pytest.approx(0.7, abs=1e-4)] * 3
    assert history[-1]["test_perplexity"] == resumed.perplexity
    assert history[0]["train_perplexity"] == pytest.approx(math.exp(history[0]["loss"]))
    saved = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert saved["perplexity"] == resumed.perplexity and saved["perplexity_before"] == resumed.perplexity_before
    assert checkpoint.read_meta(tmp_path / "run" / "model.safetensors")["perplexity"] == resumed.perplexity
