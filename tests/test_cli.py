"""The `collapsekit` entry point: file-system trouble is one line naming the path (exit 2), checked before any
long work; a closed stdout ends quietly."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collapsekit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_FLAGS = {"--out", "--output", "--dense", "--masks-file"}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_output_option_is_checked_before_the_command_runs():
    for name, sub in subcommands().items():
        flags = {flag for a in sub._actions for flag in a.option_strings} & OUTPUT_FLAGS
        registered = {flag for _, flag, _ in sub.get_default("_outputs") or []}
        assert flags <= registered, f"{name}: {sorted(flags - registered)} not added with add_output_arg"


@pytest.fixture
def no_training(monkeypatch):
    """Training that fails the test if it starts: the output check must come first."""
    import collapsekit.training.train as train

    def refuse(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(train, "dense_train", refuse)


TRAIN = ["train", "--model", "lenet_300_100", "--data", "digits", "--epochs", "1"]


def test_out_under_a_file_is_one_line_before_training(capsys, tmp_path, no_training):
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, *TRAIN, "--out", str(tmp_path / "afile" / "run"))
    assert code == 2
    assert one_line(err) == (f"collapsekit train: error: --out {tmp_path / 'afile' / 'run'} cannot be written: "
                             f"{tmp_path / 'afile'} is a file, not a directory")


def test_out_naming_an_existing_file_is_one_line(capsys, tmp_path, no_training):
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, *TRAIN, "--out", str(tmp_path / "afile"))
    assert code == 2 and one_line(err).endswith(f"--out {tmp_path / 'afile'} exists and is not a directory")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("code_,reason", [(errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system"),
                                          (errno.ENOSPC, "No space left on device")])
def test_unwritable_out_is_one_line_before_training(capsys, tmp_path, no_training, monkeypatch, code_, reason):
    import tempfile

    def refuse(dir=None, **kwargs):  # what a read-only mount, a foreign folder or a full disk answer
        raise OSError(code_, os.strerror(code_), str(Path(dir) / ".probe"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = run(capsys, *TRAIN, "--out", str(tmp_path / "run"))
    assert code == 2
    assert one_line(err) == f"collapsekit train: error: --out {tmp_path / 'run'} cannot be written: {reason}"


def test_a_directory_as_output_file_is_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "report", "--model", "lenet5", "--sparsity", "0.9", "--output", str(tmp_path))
    assert code == 2 and out == ""
    assert one_line(err).endswith(f"--output {tmp_path} is a directory; name a file in it")


def test_an_os_error_inside_a_command_names_the_path(capsys, monkeypatch):
    import collapsekit.cli.report as report

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/report.json")

    monkeypatch.setattr(report, "run", full_disk)
    code, _, err = run(capsys, "report", "--model", "lenet5")
    assert code == 2
    assert one_line(err) == "collapsekit report: error: /data/report.json: No space left on device"


def test_a_closed_stdout_ends_quietly():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "collapsekit", "report", "--model", "lenet5", "--sparsity", "0.9",
                             "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader went away, as `| head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait() == 141
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


# ---- every --model command takes the same input options; a factory's defaults stand ----

INPUT_FLAGS = {"--model", "--checkpoint", "--num-classes", "--in-channels", "--input-size", "--input-shape", "--tokens"}


def test_every_model_command_takes_the_same_input_options():
    with_model = {name: {f for a in sub._actions for f in a.option_strings}
                  for name, sub in subcommands().items() if "--model" in sub._option_string_actions}
    assert {"report", "prune", "plot", "train", "finetune", "validate", "mt-search"} <= set(with_model)
    for name, flags in with_model.items():
        assert INPUT_FLAGS <= flags, f"{name} lacks {sorted(INPUT_FLAGS - flags)}"


def four_class_mlp(num_classes: int = 4, in_channels: int = 1, input_size: int = 8):
    """A factory whose own default is 4 outputs."""
    import torch.nn as nn

    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, 12), nn.ReLU(),
                         nn.Linear(12, num_classes))


def tiny_gpt2():
    """A Hugging Face causal LM factory that takes no keywords (its config says everything)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import torch

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=97, n_positions=32))


@pytest.mark.parametrize("extra,outputs", [([], 4), (["--num-classes", "7"], 7), (["--data", "digits"], 10)])
def test_a_factorys_default_num_classes_stands_unless_asked(capsys, extra, outputs):
    import json

    code, out, err = run(capsys, "report", "--model", f"{__name__}:four_class_mlp", "--sparsity", "0.5",
                         "--format", "json", *extra)
    assert code == 0, err
    last = json.loads(out)["layers"][-1]
    assert last["name"] == "3.weight" and last["numel"] == 12 * outputs


@pytest.mark.parametrize("tokens", [["--tokens", "12"], []])  # without --tokens: 16 tokens, never an image
def test_prune_takes_a_token_model_with_tokens(capsys, tmp_path, tokens):
    import json

    code, out, err = run(capsys, "prune", "--model", f"{__name__}:tiny_gpt2", *tokens, "--sparsity", "0.9",
                         "--out", str(tmp_path), "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["target_sparsity"] == 0.9 and abs(doc["sparsity"] - 0.9) < 1e-3
    assert any(layer["name"].startswith("transformer.h.1.") for layer in doc["layers"])
    assert (tmp_path / "pruned.safetensors").is_file()


@pytest.mark.parametrize("flags,fragment", [
    (["--input-shape", "1", "3", "32", "32"], "--input-shape 1 3 32 32 does not describe digits's inputs [1, 1, 8, 8]"),
    (["--tokens", "8"], "--tokens 8 does not describe digits's inputs")])
def test_input_options_that_contradict_the_data_are_one_line(capsys, tmp_path, no_training, flags, fragment):
    code, _, err = run(capsys, "train", "--model", "lenet_300_100", "--data", "digits", "--in-channels", "1",
                       "--input-size", "8", *flags, "--out", str(tmp_path))
    assert code == 2 and fragment in one_line(err)


# ---- smaller things a new user meets ----

def test_a_pickled_whole_model_is_one_clean_line(capsys, tmp_path):
    import torch

    from collapsekit import models

    torch.save(models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8), tmp_path / "whole.pt")
    code, _, err = run(capsys, "report", "--model", "lenet_300_100", "--in-channels", "1", "--input-size", "8",
                       "--checkpoint", str(tmp_path / "whole.pt"))
    assert code == 2 and "\x1b" not in err
    assert one_line(err) == (f"collapsekit report: error: checkpoint {tmp_path / 'whole.pt'} holds a pickled "
                             "collapsekit.models.lenet.LeNet300100, not a state_dict of tensors, and collapsekit "
                             "never unpickles code: save model.state_dict() (torch.save) or a .safetensors file")


def test_terminal_escapes_never_reach_the_error_line(capsys, monkeypatch):
    import collapsekit.cli.report as report
    from collapsekit.errors import CollapsekitError

    def shouting(args):
        raise CollapsekitError("a \x1b[1mbold\x1b[0m claim")

    monkeypatch.setattr(report, "run", shouting)
    code, _, err = run(capsys, "report", "--model", "lenet5")
    assert code == 2 and one_line(err) == "collapsekit report: error: a bold claim"


@pytest.mark.parametrize("rank,printed", [("0", 1), ("3", 0)])
def test_only_rank_0_prints_an_error_line(capsys, monkeypatch, rank, printed):
    import collapsekit.cli.report as report

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/report.json")

    monkeypatch.setenv("RANK", rank)  # as torchrun sets it for each of its processes
    code, _, err = run(capsys, "report", "--model", "nonexistent_model_xyz")
    assert code == 2 and len(err.strip().splitlines()) == printed, err
    monkeypatch.setattr(report, "run", full_disk)
    code, _, err = run(capsys, "report", "--model", "lenet5")
    assert code == 2 and len(err.strip().splitlines()) == printed, err


def test_resume_with_nothing_to_resume_warns_and_starts_fresh(capsys, tmp_path, dense):
    import json

    from collapsekit.files import checkpoint

    path = checkpoint.save(dense, tmp_path / "dense" / "model.safetensors",
                           {"model": "lenet_300_100", "num_classes": 10, "in_channels": 1, "input_size": 8,
                            "data": "digits"})
    code, out, err = run(capsys, "finetune", "--checkpoint", str(path), "--sparsity", "0.9", "--epochs", "1",
                         "--out", str(tmp_path / "ft"), "--resume", "--device", "cpu", "--no-progress",
                         "--format", "json")
    assert code == 0
    assert one_line(err) == (f"collapsekit finetune: warning: nothing to resume in {tmp_path / 'ft'} "
                             "(no checkpoint.safetensors); starting a fresh run")
    doc = json.loads(out)
    assert doc["resumed_from"] == 0 and doc["epochs"] == 1


def test_a_sharded_checkpoint_folder_is_read_by_every_command(capsys, tmp_path):
    import torch

    import collapsekit as ck
    from test_streaming import save

    torch.manual_seed(3)
    model = four_class_mlp()
    save(model, tmp_path / "sharded", shards=2)
    code, _, err = run(capsys, "prune", "--model", f"{__name__}:four_class_mlp", "--checkpoint",
                       str(tmp_path / "sharded"), "--sparsity", "0.9", "--out", str(tmp_path / "p"))
    assert code == 0, err
    got = ck.masks.load(tmp_path / "p" / "pruned.safetensors")
    expected = ck.prune(model, 0.9).masks  # the same weights in memory
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_a_folder_holding_model_safetensors_means_that_file(capsys, tmp_path, dense):
    import json

    from collapsekit.files import checkpoint

    meta = {"model": "lenet_300_100", "num_classes": 10, "in_channels": 1, "input_size": 8, "data": "digits"}
    path = checkpoint.save(dense, tmp_path / "run" / "model.safetensors", meta)
    docs = []
    for given in (path.parent, path):
        code, out, err = run(capsys, "report", "--checkpoint", str(given), "--sparsity", "0.9", "--format", "json")
        assert code == 0, err
        docs.append(json.loads(out)["levels"])
    assert docs[0] == docs[1]
