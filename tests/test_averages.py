"""averages: a softmax average of a constant equal in every row is dead; of rows that differ, live."""
import pytest
import torch
import torch.nn as nn

from collapsekit.analysis.analysis import Analysis
from collapsekit.analysis.averages import averaged_values
from collapsekit.analysis.flow import run_flow
from invariants import check_levels


class Attention(nn.Module):
    """One attention over 6 tokens; `positional` adds a learned table to the values (rows then differ)."""

    def __init__(self, positional: bool):
        super().__init__()
        self.qk = nn.Linear(8, 16)
        self.v = nn.Linear(8, 8)
        self.pos = nn.Parameter(torch.randn(6, 8)) if positional else None
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        q, k = self.qk(x).chunk(2, -1)
        v = self.v(x) if self.pos is None else self.v(x) + self.pos
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.head((attn @ v).mean(1))


def _verdict(positional: bool):
    torch.manual_seed(0)
    model = Attention(positional)
    an = Analysis(model, torch.randn(1, 6, 8))
    keep = [torch.ones(w.shape, dtype=torch.bool) for w in an.weights]
    keep[[w.name for w in an.weights].index("v.weight")][:] = False  # the values are constants
    return model, an, run_flow(an.traced, an.weights, keep)


def test_average_of_a_broadcast_bias_is_dead():
    model, an, flow = _verdict(positional=False)
    assert list(averaged_values(an.traced.gm).values())[0].target == "v"
    assert flow.collapsed  # live attention weights average eight constant columns: constant output


def test_average_of_rows_that_differ_stays_live():
    model, an, flow = _verdict(positional=True)
    assert not flow.collapsed  # the position table makes each row's constant different


def test_both_agree_with_the_oracle_at_every_level():
    for positional in (False, True):
        torch.manual_seed(1)
        check_levels(Attention(positional), torch.randn(1, 6, 8), (0.5, 0.8, 0.95), boundary=True)


class PositionFirst(nn.Module):
    """A position table added before the value projection: at low sparsity it reaches every value
    feature (rows differ), and a feature whose projection row is emptied later is a bias (rows equal)."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(6, 8))
        self.qk = nn.Linear(8, 16)
        self.v = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        q, k = self.qk(x).chunk(2, -1)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.head((attn @ self.v(x + self.pos)).mean(1))


def _reports(model, example, fresh_runs: bool, monkeypatch):
    """The default report, counting generic runs; `fresh_runs` disables the reuse across nested levels."""
    from collapsekit.analysis import averages, flow

    runs, real = [], flow.constant_values
    monkeypatch.setattr(flow, "constant_values", lambda *a, **k: runs.append(1) or real(*a, **k))
    if fresh_runs:
        monkeypatch.setattr(averages.RowUniformity, "proven", lambda *a: False)
        monkeypatch.setattr(averages.RowUniformity, "record", lambda self, counts, values: {
            name: averages.row_uniform(v) for name, v in values.items()})
    report = Analysis(model, example).report()
    monkeypatch.undo()
    return report, len(runs)


def test_nested_levels_reuse_one_generic_run_and_change_nothing(monkeypatch):
    """A decoder whose constants are all row-uniform pays for one generic run per report
    (not one per level), and every verdict equals that of a fresh run at each level."""
    from corpus import build

    for name in ("hf_llama", "position_first"):
        torch.manual_seed(0)
        model, example = build(name) if name != "position_first" else (PositionFirst(), torch.randn(1, 6, 8))
        shared, shared_runs = _reports(model, example, False, monkeypatch)
        fresh, fresh_runs = _reports(model, example, True, monkeypatch)
        # Every verdict equal; `unhandled_ops` lists the passes that ran, and the shared report may run no
        # generic (averages) pass at all where the structural rule decides (report-schema.md: absent).
        a, b = shared.to_dict(), fresh.to_dict()
        assert a.pop("unhandled_ops")["flow"] == b.pop("unhandled_ops")["flow"] and a == b, name
        assert shared_runs < fresh_runs, name
        if name == "hf_llama":
            assert shared_runs <= 1 and fresh_runs > 5  # none where the structural rule (bias_only) decides


def test_position_table_before_the_values_agrees_with_the_oracle():
    torch.manual_seed(2)
    check_levels(PositionFirst(), torch.randn(1, 6, 8), (0.3, 0.5, 0.7, 0.8, 0.9, 0.95), boundary=True)


def test_value_features_map_to_the_weight_lines_they_come_from():
    """Through a q/k/v split and a head split (GPT-2's Conv1D: addmm, columns) or straight from a
    Linear (rows); a value with a position table added after its projection has no structural map."""
    from corpus import build

    from collapsekit.analysis.averages import feature_lines

    torch.manual_seed(0)
    gpt2, example = build("hf_gpt2")
    lines = list(feature_lines(Analysis(gpt2, example).traced.gm).values())
    embd, heads = gpt2.config.n_embd, gpt2.config.n_head
    assert len(lines) == gpt2.config.n_layer and not lines[0].rows
    assert lines[0].weight == "transformer.h.0.attn.c_attn.weight"
    expected = 2 * embd + torch.arange(embd).reshape(1, heads, 1, embd // heads)  # v follows q and k
    assert torch.equal(lines[0].index, expected)
    plain = Analysis(Attention(False), torch.randn(1, 6, 8)).traced.gm
    assert [(f.weight, f.rows, f.index.flatten().tolist()) for f in feature_lines(plain).values()] == [
        ("v.weight", True, list(range(8)))]
    assert feature_lines(Analysis(Attention(True), torch.randn(1, 6, 8)).traced.gm) == {}


def test_a_value_feature_whose_weight_line_is_pruned_whole_is_proven_uniform_without_a_run(monkeypatch):
    """PositionFirst: the table reaches every value feature through kept weights, so no nested run proves
    a newly dead feature uniform; its emptied projection row does, from the masks alone."""
    from collapsekit.analysis import averages

    torch.manual_seed(2)
    an = Analysis(PositionFirst(), torch.randn(1, 6, 8))
    monkeypatch.setattr(averages, "_generic_run", lambda *a, **k: pytest.fail("no generic run expected"))
    uniformity = averages.RowUniformity.of(an.traced)
    (source, lines), = uniformity.lines.items()
    v = [w.name for w in an.weights].index("v.weight")
    for k in range(0, an.total, 7):
        masks = an.level(k)
        emptied = ~masks.keep("v.weight").any(1)
        dead = emptied.reshape(1, 1, 8)
        counts = masks.pruned_counts()
        assert uniformity.proven(counts, source, dead, masks)
        assert torch.equal(averages.bias_only(lines, masks), dead)
        if bool(emptied.any()) and not bool(emptied.all()):  # a row kept: its feature is not proven so
            assert not uniformity.proven(counts, source, ~dead, masks) or counts[v] == 0


def test_a_flow_that_skips_the_average_question_is_only_more_alive_and_says_so(monkeypatch):
    from collapsekit.analysis import flow

    runs, real = [], flow.constant_values
    monkeypatch.setattr(flow, "constant_values", lambda *a, **k: runs.append(1) or real(*a, **k))
    for positional in (False, True):
        model, an, exact = _verdict(positional)
        keep = [torch.ones(w.shape, dtype=torch.bool) for w in an.weights]
        keep[[w.name for w in an.weights].index("v.weight")][:] = False
        runs.clear()
        skipped = run_flow(an.traced, an.weights, keep, averages=False)
        assert not runs and skipped.approximate  # the question came up and was not asked
        assert not skipped.collapsed and skipped.output_alive >= exact.output_alive
        for name, dead in skipped.dead_channels.items():  # its deaths are real ones
            assert set(dead) <= set(exact.dead_channels.get(name, []))
        assert flow.collapses(an.traced, an.weights, keep) == exact.collapsed  # asks only where it must


def test_a_class_token_alone_dead_asks_no_average_question(monkeypatch):
    """A class token's value row is constant while every patch row is live: no value feature is dead in
    every row, so nothing can average a constant and no generic network runs (the cover's flow paid one)."""
    from collapsekit.analysis import flow
    from corpus import build

    runs, real = [], flow.constant_values
    monkeypatch.setattr(flow, "constant_values", lambda *a, **k: runs.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model, example = build("hf_vit")
    an = Analysis(model, example)
    assert an.cover().proven and not runs
