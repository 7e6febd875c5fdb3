"""`collapsekit report`: JSON document, text verdict, bring-your-own model, one-line errors."""
import json
import re

import pytest

from collapsekit.cli import main
from test_analysis import counted  # noqa: F401 - the fixture counting traces and sorts


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_of_a_zoo_model(capsys):
    code, out, err = run(capsys, "report", "--model", "lenet_300_100", "--in-channels", "1", "--input-size", "8",
                         "--sparsity", "0.5", "0.99", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert [lv["sparsity"] for lv in doc["levels"]] == [0.5, 0.99]
    assert doc["total_prunable"] == 64 * 300 + 300 * 100 + 100 * 10
    assert 0 < doc["collapse_sparsity"] <= 1
    assert doc["levels"][1]["collapsed"] is True


def test_default_grid_text_report_for_an_importable_factory(capsys):
    code, out, _ = run(capsys, "report", "--model", "conftest:tiny_bn_cnn", "--input-shape", "1", "1", "8", "8")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].startswith("verdict:")
    levels = [line for line in lines if re.match(r"^0\.\d+\s+(ok|outputs cut|COLLAPSED)\s", line)]
    assert len(levels) == 21  # the default 0.5-0.999 grid


@pytest.mark.parametrize("argv,fragment", [
    (["--model", "no_such_net"], "unknown model 'no_such_net'"),
    (["--model", "lenet5", "--sparsity", "1.0"], "sparsity must lie in [0, 1)"),
    (["--model", "lenet5", "--input-shape", "1", "3", "2", "2"], "does not accept an input of shape"),
    (["--model", "nosuchpkg.mod:factory"], "cannot import module 'nosuchpkg.mod'"),
    (["--checkpoint", "/nonexistent/model.safetensors"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    code, out, err = run(capsys, "report", *argv)
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


LENET = ["--model", "lenet_300_100", "--in-channels", "1", "--input-size", "8"]  # 50,200 prunable weights


@pytest.mark.parametrize("text,python", [("96", 96), ("0.05", 0.05), ("0.05%", "0.05%"), ("1%", 1.0),
                                         ("2.5", 2.5), ("0", 0)])
def test_mt_on_the_command_line_reads_as_mt_in_python(capsys, text, python):
    import torch

    import collapsekit as ck
    from collapsekit import models
    from collapsekit.analysis.magnitudes import resolve_mt

    code, out, _ = run(capsys, "report", *LENET, "--sparsity", "0.5", "--mt", text, "--format", "json")
    assert code == 0
    cli_count = json.loads(out)["mt"]
    model = models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    assert ck.analyze(model, torch.randn(1, 1, 8, 8), sparsities=[0.5], mt=python).mt == cli_count
    assert cli_count == resolve_mt(text, 50_200) == resolve_mt(python, 50_200)
    expected = {"96": 96, "0.05": 25, "0.05%": 25, "1%": 502, "2.5": 1255, "0": 0}[text]  # percents of 50,200
    assert cli_count == expected


@pytest.mark.parametrize("mt,fragment", [("abc", "neither a count"), ("-3", "count must be >= 0"),
                                         ("nan", "percent must lie in [0, 100]"),
                                         ("150%", "percent must lie in [0, 100]")])
def test_bad_mt_is_one_line_and_exit_2(capsys, mt, fragment):
    code, out, err = run(capsys, "report", *LENET, "--sparsity", "0.5", f"--mt={mt}")
    assert code == 2 and out == ""
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_text_report_aligns_columns_and_output_file_matches_json(capsys, tmp_path):
    path = tmp_path / "sub" / "report.json"
    code, out, _ = run(capsys, "report", *LENET, "--sparsity", "0.5", "0.999", "--output", str(path))
    assert code == 0
    doc = json.loads(path.read_text())
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("sparsity"))
    rule, rows = lines[header + 1], lines[header + 2:header + 4]
    assert set(rule.replace(" ", "")) == {"-"}
    assert rows[0].split()[:2] == ["0.5", "ok"] and rows[1].split()[:2] == ["0.999", "COLLAPSED"]
    assert rows[1].split()[2] == f"{doc['levels'][1]['effective_sparsity']:.4f}"
    spans = [m.span() for m in re.finditer(r"-+", rule)]
    for row in rows:  # sparsity and verdict left-aligned, effective sparsity right-aligned
        cells = [m.span() for m in re.finditer(r"\S+", row)]
        assert cells[0][0] == spans[0][0] and cells[1][0] == spans[1][0] and cells[2][1] == spans[2][1]
    assert f"at sparsity {doc['collapse_sparsity']:.6f}" in lines[1]


def test_report_traces_and_sorts_the_model_once(capsys, counted):  # noqa: F811 - the fixture
    code, out, _ = run(capsys, "report", *LENET, "--sparsity", "0.5", "0.99", "--mt", "0.05")
    assert code == 0 and "MT 25 per layer" in out
    assert counted == {"traces": 1, "sorts": 1}


@pytest.mark.parametrize("text,count", [("96", 96), ("0.05", 25), ("0.05%", 25)])
def test_prune_reads_mt_as_report_does(capsys, tmp_path, text, count):
    code, out, _ = run(capsys, "prune", *LENET, "--sparsity", "0.9", "--mt", text, "--out", str(tmp_path),
                       "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["mt_count"] == count and min(layer["kept"] for layer in doc["layers"]) >= count


@pytest.fixture
def saved_lenet(tmp_path, dense):
    """The trained LeNet-300-100 saved as `train --out` does: runs/lenet/model.safetensors + its sidecar."""
    from collapsekit.files import checkpoint

    meta = {"model": "lenet_300_100", "num_classes": 10, "in_channels": 1, "input_size": 8, "data": "digits"}
    return checkpoint.save(dense, tmp_path / "lenet" / "model.safetensors", meta)


def test_streamed_checkpoint_report_with_data_carries_the_forecast(capsys, tmp_path, saved_lenet, dense):
    # The README line: a .safetensors checkpoint is streamed, yet the forecast gets the real weights,
    # and says what the same weights as a torch state_dict say.
    import torch

    torch.save(dense.state_dict(), tmp_path / "lenet.pt")
    docs = []
    for path, extra in ((saved_lenet, []), (tmp_path / "lenet.pt", ["--model", "lenet_300_100"])):
        code, out, err = run(capsys, "report", "--checkpoint", str(path), *extra, "--data", "digits",
                             "--sparsity", "0.9", "0.99", "--format", "json")
        assert code == 0, err
        docs.append([lv["forecast"] for lv in json.loads(out)["levels"]])
    assert docs[0] == docs[1] and docs[0][0]["trainable"] is True


def test_report_of_a_pruned_checkpoint_decodes_it(capsys, tmp_path, saved_lenet):
    code, _, err = run(capsys, "prune", "--checkpoint", str(saved_lenet), "--sparsity", "0.9", "--out",
                       str(tmp_path / "p90"))
    assert code == 0, err
    code, out, err = run(capsys, "report", "--checkpoint", str(tmp_path / "p90" / "pruned.safetensors"),
                         "--sparsity", "0.5", "0.95", "--format", "json")
    assert code == 0, err
    import torch

    import collapsekit as ck

    model = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    model.load_state_dict(ck.load_sparse(tmp_path / "p90" / "pruned.safetensors"))
    expected = ck.analyze(model, torch.randn(1, 1, 8, 8), sparsities=[0.5, 0.95]).to_dict()
    doc = json.loads(out)
    assert doc["collapse_sparsity"] == expected["collapse_sparsity"]
    assert [lv["effective_sparsity"] for lv in doc["levels"]] == [lv["effective_sparsity"] for lv in expected["levels"]]


@pytest.mark.parametrize("command", ["report", "prune"])
def test_a_directory_as_checkpoint_suggests_the_file_in_it(capsys, tmp_path, saved_lenet, command):
    (saved_lenet.parent / "model.safetensors").rename(saved_lenet.parent / "weights.safetensors")
    out = ["--out", str(tmp_path / "out")] if command == "prune" else []
    code, _, err = run(capsys, command, "--checkpoint", str(saved_lenet.parent), "--sparsity", "0.9", *out)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"is a directory; did you mean {saved_lenet.parent / 'weights.safetensors'}?" in err


def test_sparsity_takes_a_percent_as_mt_does(capsys, tmp_path):
    code, out, err = run(capsys, "report", *LENET, "--sparsity", "95%", "0.99", "--format", "json")
    assert code == 0, err
    assert [lv["sparsity"] for lv in json.loads(out)["levels"]] == [0.95, 0.99]
    code, out, err = run(capsys, "prune", *LENET, "--sparsity", "95%", "--mt", "0.05%", "--out", str(tmp_path),
                         "--format", "json")
    assert code == 0, err
    assert json.loads(out)["target_sparsity"] == 0.95


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_a_damaged_checkpoint_without_its_sidecar_is_named_as_damaged(capsys, tmp_path, kind):
    # Without --model the sidecar would name the model; the damaged file is the first thing to say, not the
    # missing sidecar (passing --model would only lead to the same file's error next).
    import torch

    from collapsekit.files import checkpoint
    from conftest import tiny_mlp

    if kind == "safetensors":
        path = checkpoint.save(tiny_mlp(), tmp_path / "model.safetensors", {})
        checkpoint.sidecar_path(path).unlink()
    else:
        path = tmp_path / "model.pt"
        torch.save(tiny_mlp().state_dict(), path)
    intact = path.read_bytes()
    path.write_bytes(intact[:-64])
    rc = main(["report", "--checkpoint", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"checkpoint {path} is corrupt or truncated: " in err and "does not exist" not in err
    path.write_bytes(intact)  # intact, still without a sidecar: the model is what is missing
    rc = main(["report", "--checkpoint", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no model given: pass --model" in err and f"{path.with_suffix('.json')} does not exist" in err


def test_an_intact_checkpoint_in_torchs_older_format_without_a_sidecar_asks_for_the_model(capsys, tmp_path):
    import torch

    from conftest import tiny_mlp

    path = tmp_path / "model.pt"
    torch.save(tiny_mlp().state_dict(), path, _use_new_zipfile_serialization=False)  # a pickle stream, no zip
    rc = main(["report", "--checkpoint", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no model given: pass --model" in err and "corrupt" not in err


def test_a_failed_command_leaves_no_empty_output_folder_it_made_and_keeps_the_users(capsys, tmp_path):
    # --out is created up front (proved writable before any long work); the run then fails on its input.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    made = tmp_path / "new" / "deeper"
    rc = main(["prune", "--checkpoint", str(bad), "--sparsity", "0.9", "--out", str(made)])
    assert rc == 2 and "is corrupt or truncated" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # both folders it made are gone again
    mine = tmp_path / "mine"
    mine.mkdir()
    rc = main(["prune", "--checkpoint", str(bad), "--sparsity", "0.9", "--out", str(mine)])
    assert rc == 2 and mine.is_dir()  # the user's own folder stays
