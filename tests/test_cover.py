"""cover.py: levels that contain the cover masks get the dense verdict without a flow, exactly."""
import numpy as np
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis.analysis import Analysis
from collapsekit.analysis.flow import run_flow


def resnet(channel_level):
    torch.manual_seed(0)
    model = ck.models.create("resnet20", num_classes=10, in_channels=3, input_size=16).eval()
    return Analysis(model, torch.randn(1, 3, 16, 16), exact=not channel_level)


def test_contained_levels_have_exactly_the_dense_verdict():
    for channel_level in (False, True):
        an = resnet(channel_level)
        cover = an.cover()
        assert cover.proven
        contained = 0
        for k in np.linspace(0, an.total - 1, 40).astype(int):
            level = an.level(int(k))
            if not cover.contains(level.alloc.pruned):
                continue
            contained += 1
            flow = run_flow(an.traced, an.weights, level, channel_level=channel_level)
            assert not flow.collapsed and not flow.dead_channels and not flow.unused_channels
            assert np.array_equal(flow.effective, an.index.sizes - level.alloc.pruned)
        assert 5 <= contained < 40  # the cover covers the low levels, not the high ones


def test_collapsed_at_shortcuts_agree_with_the_flow_at_every_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    an = Analysis(model, torch.randn(1, 6))
    for k in range(0, an.index.max_count() + 1, 3):
        assert an.collapsed_at(k) == run_flow(an.traced, an.weights, an.level(k), backward=False).collapsed, k


class Unused(nn.Module):
    """A layer whose output nothing reads: the dense net already has unused channels."""

    def __init__(self):
        super().__init__()
        self.used, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        self.spare(x)
        return self.used(x)


def test_no_shortcut_when_the_dense_net_is_not_fully_connected():
    an = Analysis(Unused(), torch.randn(1, 4))
    assert not an.cover().proven
    assert not an.cover().contains(an.level(1).alloc.pruned)


def test_cover_read_in_row_blocks_is_the_same_cover(monkeypatch):
    import collapsekit.analysis.magnitudes as magnitudes

    whole = resnet(False).cover()
    monkeypatch.setattr(magnitudes, "_CHUNK", 5)  # a few rows per read (line_maxima's block size)
    blocks = resnet(False).cover()
    assert whole.proven and blocks.proven
    assert np.array_equal(whole.full, blocks.full)
