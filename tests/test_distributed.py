"""Data-parallel fine-tuning: shards, single-process no-ops, and a 2-process torchrun (gloo) run."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from collapsekit.files import checkpoint
from collapsekit import data, models
from collapsekit.training import distributed
from collapsekit.pruning import masks as mask_io
from collapsekit.cli import main
from collapsekit.files.runstate import read_metrics
from collapsekit.training.train import fit, seed_everything


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    ds = TensorDataset(torch.arange(10.0))
    assert distributed.shard(ds, ctx, epoch=1, seed=0) is ds
    masks = {"w": torch.tensor([True, False])}
    assert distributed.broadcast_masks(masks, ctx) is masks
    assert distributed.mean([1.0, 2.0], ctx) == [1.0, 2.0]


def test_shards_are_equal_sized_cover_the_data_and_change_per_epoch():
    ds = TensorDataset(torch.arange(101), torch.arange(101) * 2)
    shards = {}
    for epoch in (1, 2):
        parts = [distributed.shard(ds, distributed.Context(r, 2, r, torch.device("cpu"), "gloo"), epoch, seed=0)
                 for r in (0, 1)]
        assert [len(p) for p in parts] == [51, 51]  # DistributedSampler pads to equal sizes: no rank waits
        seen = torch.cat([p.tensors[0] for p in parts])
        assert set(seen.tolist()) == set(range(101))
        assert torch.equal(parts[0].tensors[1], parts[0].tensors[0] * 2)  # inputs and labels stay paired
        shards[epoch] = parts[0].tensors[0]
    assert not torch.equal(shards[1], shards[2])


def torchrun_two(argv: list[str], timeout: int) -> dict:
    """The JSON that rank 0 of `torchrun --nproc-per-node 2 -m collapsekit ARGV` prints (rank 0 alone prints)."""
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a local rendezvous on a free port. A session of its own, so a hang is killed whole.
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "collapsekit", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


def one_and_two(common: list[str], tmp_path, capsys, timeout: int):
    """(one, two, masks one, masks two): `common` run in this process into tmp/one and under torchrun (2 ranks)
    into tmp/two; each run's printed JSON and the masks of the model it wrote. Both runs must have succeeded."""
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    two = torchrun_two(common + ["--out", str(tmp_path / "two")], timeout=timeout)
    assert two["world_size"] == 2 and one["world_size"] == 1
    masks = [mask_io.load(tmp_path / run / "model.safetensors") for run in ("one", "two")]
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    return one, two, masks[0], masks[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_two_processes_same_masks_as_one_and_trains(tmp_path, capsys):
    bundle = data.load("digits")
    seed_everything(0)
    dense = models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    fit(dense, bundle, epochs=2, lr=0.05, batch_size=64, device="cpu", seed=0, progress=False)
    ckpt = tmp_path / "dense" / "model.safetensors"
    checkpoint.save(dense, ckpt, {"model": "lenet_300_100", "num_classes": 10, "in_channels": 1, "input_size": 8,
                                  "data": "digits"})
    common = ["finetune", "--checkpoint", str(ckpt), "--sparsity", "0.9", "--epochs", "3", "--lr", "0.05",
              "--device", "cpu", "--no-progress", "--format", "json"]

    one, two, masks_one, masks_two = one_and_two(common, tmp_path, capsys, timeout=240)
    assert [m["epoch"] for m in read_metrics(tmp_path / "two")] == [1, 2, 3]
    assert two["accuracy"] > 0.1 + 0.5  # well above chance (10 classes)
    assert abs(two["accuracy"] - one["accuracy"]) < 0.1
    # Rank 0's weights keep the masks exactly.
    model = checkpoint.load_into(models.create("lenet_300_100", 10, 1, 8), tmp_path / "two" / "model.safetensors")
    for name, keep in masks_two.items():
        assert not model.get_parameter(name).detach()[~keep].any()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_fine_tunes_a_causal_lm_by_perplexity(tmp_path, capsys):
    """llama_tiny (a Hugging Face model returning an output object) under DDP: masks as one process's, learns."""
    pytest.importorskip("transformers")
    from collapsekit.data.text import embedded_corpus

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(embedded_corpus()[:20_000])
    text = ["--data", f"text:{corpus}", "--input-size", "32", "--device", "cpu", "--no-progress", "--format", "json"]
    assert main(["train", "--model", "llama_tiny", "--epochs", "1", "--out", str(tmp_path / "dense"), *text]) == 0
    dense = json.loads(capsys.readouterr().out)
    common = ["finetune", "--checkpoint", str(tmp_path / "dense" / "model.safetensors"), "--sparsity", "0.8",
              "--epochs", "1", *text]
    one, two, _, _ = one_and_two(common, tmp_path, capsys, timeout=300)
    # Same pruned model before fine-tuning; both runs win perplexity back from it.
    assert two["perplexity_before"] == pytest.approx(one["perplexity_before"], rel=1e-5)
    assert two["perplexity"] < two["perplexity_before"] and one["perplexity"] < one["perplexity_before"]
    assert dense["perplexity"] < two["perplexity_before"]
