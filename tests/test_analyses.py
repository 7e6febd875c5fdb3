"""analyses/: each script is one command that writes a table, a figure and a summary with the finding it claims."""
import ast
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collapsekit.validation import sgdprobe

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"
NAMES = ["wrn_vs_mobilenet", "mt_ablation", "lenet_l1_vs_global_mp", "trainability_forecast", "lm_pruning"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, str(ANALYSES / f"{name}.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("name", NAMES)
def test_script_says_what_it_reproduces_and_has_a_quick_mode(name):
    doc = ast.get_docstring(ast.parse((ANALYSES / f"{name}.py").read_text()))
    assert "Reproduces" in doc and f"python analyses/{name}.py [--quick]" in doc
    help_text = run(name, "--help", timeout=60)
    assert help_text.returncode == 0 and "--quick" in help_text.stdout
    assert f"## `{name}.py`" in (ANALYSES / "README.md").read_text()


def outputs(tmp_path: Path, name: str) -> tuple[dict, list[dict]]:
    """Run `name --quick` into tmp_path; (summary.json, table.csv rows) after checking every file is there."""
    done = run(name, "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "figure.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "table.md").read_text().startswith("| ")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quick"] is True
    with open(tmp_path / "table.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    return summary, rows


@pytest.mark.slow
def test_wrn_vs_mobilenet(tmp_path):
    summary, rows = outputs(tmp_path, "wrn_vs_mobilenet")
    wrn, mob = summary["models"]["WRN-16-2"], summary["models"]["MobileNet-V1 x0.25"]
    assert mob["collapse_sparsity"] < wrn["collapse_sparsity"] <= 1.0
    assert mob["bypassable"] == 0 and wrn["bypassable"] > wrn["bottleneck"]
    assert mob["collapsed_at_0.99"] and not wrn["collapsed_at_0.99"]
    assert 0.5 < min(wrn["dense_accuracy"], mob["dense_accuracy"]) <= 1.0
    between = f"{summary['between_sparsity']:g}"
    assert mob["collapse_sparsity"] < summary["between_sparsity"] < wrn["collapse_sparsity"]
    mob_at, wrn_at = summary["validation"]["MobileNet-V1 x0.25"][between], summary["validation"]["WRN-16-2"][between]
    assert mob_at["predicted_collapsed"] and mob_at["accuracy"] <= 0.2
    assert not wrn_at["predicted_collapsed"]
    assert all(lv["agree"] for per_model in summary["validation"].values() for lv in per_model.values())
    assert {r["model"] for r in rows} == {"WRN-16-2", "MobileNet-V1 x0.25"}


@pytest.mark.slow
def test_mt_ablation(tmp_path):
    summary, rows = outputs(tmp_path, "mt_ablation")
    (curve,) = summary["curves"].values()
    acc = curve["accuracy"]
    assert curve["mt"][0] == 0 and curve["mt"][-1] == curve["max_mt"] and all(0 <= a <= 1 for a in acc)
    assert curve["emptied_layers_mt0"] > 0  # plain Global MP empties layers at this sparsity
    assert curve["accuracy_max_mt"] < curve["best_accuracy"] - 0.05  # too much MT hurts
    assert curve["best_mt"] < curve["max_mt"]
    assert [int(r["mt"]) for r in rows] == curve["mt"]


@pytest.mark.slow
def test_lenet_l1_vs_global_mp(tmp_path):
    summary, rows = outputs(tmp_path, "lenet_l1_vs_global_mp")
    assert summary["dense_accuracy"] > 0.9
    numeric = ("_no_finetune", "_finetuned", "_kept")
    by_s = {float(r["sparsity"]): {k: float(v) for k, v in r.items() if k.endswith(numeric)} for r in rows}
    assert by_s[0.99]["layerwise_l1_fc3_kept"] == 10  # 1 % of the 10 x 100 output layer, as every layer
    assert by_s[0.99]["global_mp_fc3_kept"] > 100  # one global threshold leaves it far denser
    for s in (0.95, 0.99):
        assert by_s[s]["global_mp_finetuned"] > by_s[s]["layerwise_l1_no_finetune"] + 0.15
    assert by_s[0.99]["global_mp_finetuned"] > 0.8
    assert by_s[0.5]["layerwise_l1_no_finetune"] > 0.9  # mild pruning costs little either way
    assert summary["literature"]["layerwise_l1_no_finetune"] == {"0.9": 0.81, "0.95": 0.38}


@pytest.mark.slow
def test_trainability_forecast(tmp_path):
    summary, rows = outputs(tmp_path, "trainability_forecast")
    assert {r["arch"] for r in rows} == {"mlp", "cnn"}
    # Leave-one-architecture-out: one count per distinct prune below collapse, each scored by the other's fit.
    alive = {(r["arch"], r["sparsity"], r["prune"]): r for r in rows if r["collapsed"] == "False"}
    per = summary["per_architecture"]
    assert summary["counted"] == sum(c["counted"] for c in per.values()) == len(alive) > 0
    assert summary["loao_agreement"] == pytest.approx(sum(c["agree"] for c in per.values()) / summary["counted"])
    for arch, c in per.items():
        mine = [r for r in alive.values() if r["arch"] == arch]
        assert c["counted"] == len(mine)
        assert c["agree"] == sum((float(r["probability_loao"]) >= 0.5) == (r["trained"] == "True") for r in mine)
    assert set(summary["model"]["features"]) >= {"loss_kept", "signal_per_layer", "dense_gain"}
    mild = [r for r in rows if r["kind"] == "level" and float(r["sparsity"]) == 0.5]
    assert mild and all(r["trained"] == "True" for r in mild)
    assert all(float(r["forecast_seconds"]) < 30 for r in rows)  # one forward + backward pass and a short probe
    # The probe's cost, as a fraction of one fine-tune epoch: half an epoch, up to 1.5 where a prune stays undecided.
    assert 0 < summary["probe"]["epochs_mean"] <= summary["probe"]["epochs_max"] <= sgdprobe.EXTENDED_EPOCHS == 1.5
    with open(tmp_path / "suggestion.csv") as fh:
        suggestions = list(csv.DictReader(fh))
    assert len(suggestions) == 2 and summary["suggestion_loao"]["all_sweeps"] == 2
    for s in suggestions:
        assert int(s["suggested_mt"]) >= int(s["floor_mt"])
        assert (s["within_90"] == "True") == (float(s["suggested_accuracy"]) >= 0.9 * float(s["best_accuracy"]))
    assert (tmp_path / "loao.md").read_text().startswith("| architecture |")


def test_forecast_calibration_labels_each_task_by_its_own_trained_and_reports_loao_by_task(monkeypatch):
    """A language model's prune counts as trained by the causal-LM task's rule (half the log gap from unigram to
    dense), a classifier's by accuracy above chance + 0.1; leave-one-architecture-out counts add up per task."""
    monkeypatch.syspath_prepend(str(ANALYSES))
    import trainability_forecast as tf

    lm = {"task": "causal_lm", "unigram_perplexity": 25.0, "dense_perplexity": 4.0, "accuracy": 0.0}
    assert tf.trained({**lm, "perplexity": 9.9}) and not tf.trained({**lm, "perplexity": 10.1})  # sqrt(25 x 4) = 10
    assert tf.trained({"accuracy": 0.21, "chance": 0.1}) and not tf.trained({"accuracy": 0.19, "chance": 0.1})
    rows = [{"arch": "mlp"}, {"arch": "cnn", "task": "classification"}, {"arch": "llama_tiny", "task": "causal_lm"}]
    per = {"mlp": {"counted": 4, "agree_one_pass": 3, "agree": 4, "probed": 1},
           "cnn": {"counted": 6, "agree_one_pass": 6, "agree": 5, "probed": 0},
           "llama_tiny": {"counted": 5, "agree_one_pass": 2, "agree": 3, "probed": 2}}
    groups = tf.by_task(rows, per)
    assert list(groups) == ["causal_lm", "classification"]
    assert groups["classification"] == {"counted": 10, "agree_one_pass": 9, "agree": 9, "probed": 1,
                                        "agreement_one_pass": 0.9, "agreement": 0.9}
    assert groups["causal_lm"]["agreement"] == pytest.approx(0.6)
    assert {a for a, *_ in tf.LM_RUNS} >= {"llama_tiny", "gpt2_lm", "opt_lm"}


def test_tables_and_summary_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A run stopped while writing leaves the previous complete table (atomic writes), and no temporary file."""
    import argparse

    monkeypatch.syspath_prepend(str(ANALYSES))
    import _common

    rows = [{"level": 0.5, "alive": True}, {"level": 0.9, "alive": False}]
    csv_path, md_path = _common.write_table(rows, tmp_path)
    first = csv_path.read_text()
    assert first.splitlines() == ["level,alive", "0.5,True", "0.9,False"] and "| 0.9000 |" in md_path.read_text()

    class Stop(Exception):
        pass

    def broken_writerows(self, rows):
        raise Stop

    monkeypatch.setattr(csv.DictWriter, "writerows", broken_writerows)
    with pytest.raises(Stop):
        _common.write_table([{"level": 0.99, "alive": False}], tmp_path)
    assert csv_path.read_text() == first and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv", "table.md"]
    args = argparse.Namespace(quick=True, seed=3, started=0.0)
    summary = json.loads(_common.write_summary(tmp_path, {"collapse": 0.93}, args).read_text())
    assert summary["collapse"] == 0.93 and summary["quick"] is True and summary["seed"] == 3


@pytest.mark.slow
def test_lm_pruning(tmp_path):
    pytest.importorskip("transformers")
    summary, rows = outputs(tmp_path, "lm_pruning")
    unigram, dense = summary["unigram_perplexity"], summary["dense_perplexity"]
    assert dense <= 0.8 * unigram  # the dense LM learned
    assert {(float(r["sparsity"]), r["method"]) for r in rows} == {(s, m) for s in (0.5, 0.9)
                                                                    for m in ("global_mp", "uniform")}
    levels = summary["levels"]
    for method in ("global_mp", "uniform"):
        half, ninety = levels[f"{method}@0.5"], levels[f"{method}@0.9"]
        assert dense < half["perplexity_pruned"] < ninety["perplexity_pruned"]  # pruning costs more as it deepens
        for lv in (half, ninety):
            assert lv["perplexity_finetuned"] < lv["perplexity_pruned"]  # and fine-tuning wins some back
    assert levels["global_mp@0.5"]["trained"]
    points = summary["mt_points"]
    assert points[0]["mt"] == 0 and all(p["perplexity_finetuned"] > dense for p in points)
    assert summary["suggested_mt"] in [p["mt"] for p in points]
