"""The corpus: third-party architectures analyse, and soundly (Invariant 4 at 0.5, 0.9, 0.99 and the boundary).

Every model of tests/corpus.py (Hugging Face vision and text models from small
configs, and hand-written modules for patterns real code uses) must trace and
analyse; `collapsed` must equal the structural oracle at every level, including
the predicted collapse point and one weight below it; no channel predicted dead
may vary in a forward pass with the real weights; and the model must be left as
it was (Invariant 7). Channels the oracle sees dead but the flow keeps alive
(where an op was interpreted conservatively) are the precision lost; they are
printed (`pytest -s`) and measured by benchmarks/bench_corpus.py.
"""
import copy

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from corpus import CORPUS, build
from invariants import assert_unchanged, check_levels, snapshot

pytest.importorskip("transformers")

LEVELS = (0.5, 0.9, 0.99)
FAST = [n for n, e in CORPUS.items() if not e.slow]
SLOW = [n for n, e in CORPUS.items() if e.slow]


def _check(name: str) -> None:
    model, inputs = build(name)
    model.train(name.endswith("_vit"))  # one model in train mode: the analysis must restore it
    before = snapshot(model)
    stats = {"missed": 0, "dead": 0}
    verdicts = check_levels(model, inputs, LEVELS, boundary=True, stats=stats)
    assert_unchanged(model, before)
    flags = [v.collapsed for v in verdicts[:len(LEVELS)]]
    assert flags == sorted(flags)  # nested masks: once collapsed, always collapsed
    if len(verdicts) > len(LEVELS):  # the boundary: alive one weight below, collapsed at it
        assert [v.collapsed for v in verdicts[len(LEVELS):]] == [False, True]
    print(f"\n{name}: structurally dead channels missed {stats['missed']} of {stats['dead']}")


@pytest.mark.parametrize("name", FAST)
def test_corpus_model_is_exact_and_sound(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_slow_corpus_model_is_exact_and_sound(name):
    _check(name)


def test_corpus_covers_the_architectures_users_prune():
    vision = [n for n, e in CORPUS.items() if e.family == "vision"]
    text = [n for n, e in CORPUS.items() if e.family == "text"]
    assert len(vision) + len(text) >= 30 and len(text) >= 10
    for arch in ("vit", "deit", "beit", "dinov2", "swin", "swinv2", "convnext", "convnextv2", "cvt", "pvt",
                 "mobilevit", "mobilevitv2", "mobilenet_v1", "mobilenet_v2", "efficientnet", "regnet", "resnet",
                 "levit", "poolformer", "segformer"):
        assert f"hf_{arch}" in vision
    for arch in ("bert", "albert", "distilbert", "gpt2", "llama", "mistral", "opt", "bloom", "t5", "bart"):
        assert f"hf_{arch}" in text


def test_report_lists_the_ops_interpreted_conservatively():
    class Sorted(nn.Module):  # sorting moves every element by every value: no exact rule
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.sort(self.a(x), dim=-1).values)

    report = ck.analyze(Sorted(), torch.randn(1, 4), sparsities=[0.5])
    assert report.conservative_ops == {"sort": 1}
    assert report.to_dict()["conservative_ops"] == {"sort": 1}
    from collapsekit.views.render import report_to_text

    text = report_to_text(report)
    assert "interpreted conservatively" in text and "sort x1" in text
    exact = ck.analyze(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(1, 4),
                       sparsities=[0.5])
    assert exact.conservative_ops == {}


def test_token_model_cli_builds_input_ids_and_decoder_ids(capsys, tmp_path):
    from collapsekit.cli import main

    code = main(["report", "--model", "test_corpus:tiny_t5", "--tokens", "5", "--sparsity", "0.5", "0.99",
                 "--format", "json"])
    import json

    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["input_shapes"] == [[1, 5], [1, 5]]  # input_ids and decoder_input_ids
    assert doc["trace_method"] == "export"


def tiny_t5():
    """The corpus T5 as a CLI factory (`--model test_corpus:tiny_t5`)."""
    return build("hf_t5")[0]


def test_weight_transform_that_moves_zeros_keeps_the_whole_weight_live():
    # Invariant 8: standardization subtracts the row mean, so a row that keeps one weight (reading a
    # dead channel) becomes dense after the transform and reads the live channels too.
    from collapsekit.analysis.flow import run_flow
    from corpus import WeightStandardized

    model = WeightStandardized()
    plain = copy.deepcopy(model)
    plain.ws = nn.Conv2d(8, 8, 3, padding=1)
    keep = {"a.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool), "ws.weight": torch.zeros(8, 8, 3, 3, dtype=torch.bool),
            "fc.weight": torch.ones(5, 8, dtype=torch.bool)}
    keep["a.weight"][3] = False  # channel 3 of `a` is dead
    keep["ws.weight"][0, 3, 1, 1] = True  # the only kept weight of ws reads it
    verdicts = {}
    for label, net in (("standardized", model), ("plain", plain)):
        an = ck.Analysis(net, torch.randn(1, 3, 8, 8))
        verdicts[label] = run_flow(an.traced, an.weights, [keep[w.name] for w in an.weights])
    assert verdicts["plain"].collapsed
    assert not verdicts["standardized"].collapsed
    assert verdicts["standardized"].dead_channels["ws.weight"] == list(range(1, 8))  # rows with no kept weight
    assert verdicts["standardized"].effective[1] == 1  # transformed: its one kept weight counts as effective


def test_parametrizations_are_judged_by_what_they_do_to_a_zero():
    from corpus import parametrized, weight_normed

    names = {w.name: w.keeps_zeros for w in ck.Analysis(parametrized(), torch.randn(1, 12)).weights}
    assert names == {"0.parametrizations.weight.original": True, "2.parametrizations.weight.original": False,
                     "4.weight": True}
    an = ck.Analysis(weight_normed(), torch.randn(1, 3, 8, 8))
    assert [w.name for w in an.weights] == ["0.parametrizations.weight.original1",
                                            "4.parametrizations.weight.original1"]
    report = an.report([0.5])
    assert report.total == 8 * 27 + 5 * 8


def test_docs_hugging_face_command_prints_the_documented_verdict(monkeypatch, capsys):
    import shlex
    from pathlib import Path

    from collapsekit.cli import main

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "own-model.md").read_text()
    command = doc.split("<!-- hf-model-command", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].strip()
    env, program, *args = shlex.split(command)
    monkeypatch.syspath_prepend(str(root / env.partition("=")[2]))
    assert program == "collapsekit" and main(args) == 0
    printed = capsys.readouterr().out
    shown = doc.split(command, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    for line in shown.strip().splitlines():
        assert line in printed, line  # the doc shows this command's real output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hf_mobilevit", "hf_mobilevitv2", "hf_mobilenet_v2"])
def test_default_report_of_the_slowest_corpus_models_takes_under_30_s(name):
    import time

    model, inputs = build(name)
    start = time.perf_counter()
    report = ck.analyze(model, inputs)  # the default 21 levels and the exact collapse sparsity
    assert time.perf_counter() - start < 30.0
    assert len(report.levels) == 21 and 0.9 < report.collapse_sparsity < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_conservative_ops_from_the_cover_equal_those_of_the_dense_masks(name):
    """The report lists conservative ops from the cover's flow; on every corpus model that list equals a
    flow on the dense masks (which rule reads a node depends on the graph, not on the masks)."""
    from collapsekit.analysis.analysis import Analysis

    model, example = build(name)
    an = Analysis(model, example)
    assert an.cover().conservative_ops == an.flow(0, backward=False).conservative_ops
