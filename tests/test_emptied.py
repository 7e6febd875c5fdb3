"""emptied.py: levels that empty the same layers and keep every other layer's cover, or nest above the sparsest
level that empties those layers, share one exact verdict."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import collapsekit.analysis.emptied as emptied
from collapsekit.analysis.analysis import Analysis
from collapsekit.analysis.flow import run_flow


class FadingBranches(nn.Module):
    """A residual MLP whose branches' output layers start 100x smaller (as GPT-2 scales its projections):
    Global MP empties them first, and each emptied branch leaves its input layer unused, not dead."""

    def __init__(self, width=32, blocks=3, small=0.01):
        super().__init__()
        self.stem = nn.Linear(16, width)
        self.up = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(blocks))
        self.down = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(blocks))
        for d in self.down:
            d.weight.data.mul_(small)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = self.stem(x)
        for up, down in zip(self.up, self.down):
            h = h + down(torch.relu(up(h)))
        return self.head(h)


def gpt2(layers=6, width=128):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=300, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval(), {"input_ids": torch.randint(0, 300, (1, 32))}


def _assert_own_flow(an, level, known):
    """A shared verdict equals the level's own flow in every field the report reads."""
    flow = run_flow(an.traced, an.weights, level, channel_level=an.channel_level)
    assert (known.collapsed, known.dead_channels, known.unused_channels, known.output_alive) == (
        flow.collapsed, flow.dead_channels, flow.unused_channels, flow.output_alive)
    assert np.array_equal(known.effective, flow.effective)


def reports(model, x, monkeypatch):
    """(report with shared verdicts, the analysis, report without them)."""
    an = Analysis(model, x)
    with_covers = an.report()
    monkeypatch.setattr(emptied, "WORTH", 10**9)  # never planned: every level runs its own flow
    monkeypatch.setattr(emptied.SparsestOfSet, "verdict", lambda self, pruned: None)
    without = Analysis(model, x).report()
    return with_covers, an, without


@pytest.mark.parametrize("build", [lambda: (FadingBranches(), torch.randn(1, 16)), gpt2])
def test_the_shared_verdict_is_every_levels_own(build, monkeypatch):
    torch.manual_seed(0)
    model, x = build()
    fast, an, slow = reports(model, x, monkeypatch)
    verdicts = [v for v in an.emptied_covers()._verdicts.values() if v is not None] + list(an.level_sets()._bounds)
    assert verdicts, "the model empties the same layers at several levels: a shared verdict must be built"
    assert fast.levels == slow.levels
    assert fast.collapse_sparsity == slow.collapse_sparsity


def test_an_emptied_branch_leaves_its_input_layer_ineffective_at_every_level_it_answers():
    torch.manual_seed(0)
    model = FadingBranches()
    an = Analysis(model, torch.randn(1, 16))
    covers = an.emptied_covers()
    answered = 0
    for k in np.linspace(0, an.total - 1, 60).astype(int):
        level = an.level(int(k))
        covers.plan([level.alloc.pruned] * emptied.WORTH)
        known = covers.verdict(level.alloc.pruned)
        if known is None:
            continue
        answered += 1
        _assert_own_flow(an, level, known)
        empty = {w.name for w, n in zip(an.weights, level.alloc.pruned) if n == w.numel}
        for i, w in enumerate(an.weights):  # an up layer feeding an emptied down layer: nothing effective
            if w.name.startswith("up.") and w.name.replace("up.", "down.") in empty:
                assert known.effective[i] == 0
    assert answered >= 5


def test_unplanned_sets_and_levels_outside_the_covers_run_no_shared_flows():
    torch.manual_seed(0)
    an = Analysis(FadingBranches(), torch.randn(1, 16))
    covers = an.emptied_covers()
    top = an.level(an.total - 1)
    assert covers.key(top.alloc.pruned) is None  # every layer thinned below its cover: no shared verdict
    middle = an.level(int(an.total * 0.5))
    assert covers.key(middle.alloc.pruned) is not None
    assert covers.verdict(middle.alloc.pruned) is None and not covers._verdicts  # not planned: nothing built


@pytest.mark.parametrize("build, shared", [(lambda: (FadingBranches(), torch.randn(1, 16)), 0), (gpt2, 3)])
def test_the_sparsest_level_of_an_emptied_set_answers_every_denser_one_exactly(build, shared):
    # FadingBranches' sparsest levels have dead channels a dense upper bound lacks: no verdict is shared;
    # GPT-2's emptied projections leave the rest clean at high sparsity: one flow answers the denser levels.
    torch.manual_seed(0)
    model, x = build()
    an = Analysis(model, x)
    counts = sorted({int(k) for k in np.linspace(0, an.total - 1, 40)})
    sets = an.level_sets()
    sets.plan(counts, lambda pruned: False)
    answered = 0
    for k in counts:
        level = an.level(k)
        known = sets.verdict(level.alloc.pruned)
        if known is None:
            continue
        answered += 1
        _assert_own_flow(an, level, known)
    assert answered >= shared if shared else answered == 0  # FadingBranches: none shared, as said above
    for e, (pruned, _) in sets._bounds.items():  # one weight sparser than a set's sparsest: not answered
        k = int(pruned.sum()) + 1
        if sets._emptied(an.level(k).alloc.pruned) == e:
            assert sets.verdict(an.level(k).alloc.pruned) is None
