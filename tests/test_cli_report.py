"""`collapsekit report`: JSON document, text verdict, bring-your-own model, one-line errors."""
import json
import re

import pytest

from collapsekit.cli import main


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
    levels = [line for line in lines if re.match(r"^0\.\d+\s+(ok|COLLAPSED)\s", line)]
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
