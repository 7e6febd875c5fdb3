"""collapsekit.analysis.connectivity: lazily served Global MP masks and per-conv reachable taps."""
import numpy as np
import torch
import torch.nn as nn

from collapsekit.analysis.connectivity import Connectivity, full_taps, reachable_taps
from collapsekit.analysis.magnitudes import MagnitudeIndex
from collapsekit.analysis.prunable import find_prunable, tensors
from collapsekit.analysis.trace import trace
from test_flow import TwoBlockResNet  # stem -> two identity residual blocks of 3x3 convs (8 channels) -> fc


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def build(model, x):
    traced = trace(model, x)
    weights = find_prunable(model)
    params = tensors(model, weights)
    index = MagnitudeIndex(weights, params)
    return Connectivity(traced, weights, params, index), weights, params, index


def global_mp(params, k):
    """Reference Global MP keep-masks: drop the k smallest |w| of all layers together (no ties here)."""
    flat = torch.cat([p.detach().abs().flatten() for p in params])
    v = flat.sort().values[k - 1] if k else -1.0
    return [p.detach().abs() > v for p in params]


def test_level_masks_equal_global_mp_and_the_index_on_an_mlp():
    torch.manual_seed(0)
    model = mlp()
    conn, weights, params, index = build(model, torch.randn(1, 4))
    assert index.total == 32 + 48 + 18 and conn.kmax == {} and conn.taps == {}  # no convs: no reduction
    for k in (0, 10, 49, 90, 97):
        level = conn.level(index.allocate(k))
        keep = level.keep_list()
        assert sum(int((~m).sum()) for m in keep) == k
        for w, m, ref in zip(weights, keep, global_mp(params, k)):
            assert torch.equal(m, ref), (k, w.name)
            assert level.channel_conn(w.name) is None  # linear layers: only the full mask
    assert "0.weight" in level and "0.bias" not in level


def test_reachable_taps_by_map_size_stride_and_padding():
    conv = nn.Conv2d(1, 1, 3, padding=1)
    assert reachable_taps(conv, (8, 8)).tolist() == [True] * 9
    assert torch.nonzero(reachable_taps(conv, (1, 1))).flatten().tolist() == [4]  # centre only
    strided = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert torch.nonzero(reachable_taps(strided, (2, 2))).flatten().tolist() == [4, 5, 7, 8]
    assert reachable_taps(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"), (1, 1)).all()
    assert reachable_taps(nn.Conv1d(1, 1, 5, padding=2), (2,)).tolist() == [False, True, True, True, False]


def test_full_taps_read_real_input_at_every_output_position():
    same = nn.Conv2d(1, 1, 3, padding=1)
    assert torch.nonzero(full_taps(same, (8, 8))).flatten().tolist() == [4]  # a 'same' conv: its centre
    assert torch.nonzero(full_taps(same, (1, 1))).flatten().tolist() == [4]
    strided = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert torch.nonzero(full_taps(strided, (8, 8))).flatten().tolist() == [4, 5, 7, 8]  # even map
    assert torch.nonzero(full_taps(strided, (7, 7))).flatten().tolist() == [4]  # odd: the last row reads padding
    assert full_taps(nn.Conv2d(1, 1, 3), (5, 5)).all()  # no padding: every tap always in bounds
    assert full_taps(nn.Conv2d(1, 1, 1, stride=2), (5, 5)).all()
    assert full_taps(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"), (4, 4)).all()
    assert full_taps(nn.Conv1d(1, 1, 5, padding=2), (2,)).tolist() == [False, False, True, False, False]
    assert not full_taps(nn.Conv2d(1, 1, 3, padding=1, dilation=4), (3, 3))[[0, 1, 2, 3, 5, 6, 7, 8]].any()


def test_full_tap_connectivity_equals_the_full_masks_reduced_over_full_taps():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    conn, weights, params, index = build(model, torch.randn(1, 3, 7, 7))
    assert torch.nonzero(conn.full[0]).flatten().tolist() == [4]  # 7 -> 4 with stride 2
    assert torch.nonzero(conn.full[1]).flatten().tolist() == [4]
    for k in (0, 40, 150, 300, 380):
        level = conn.level(index.allocate(k))
        restricted = level.full_taps_only()
        for i, w in enumerate(weights[:2]):
            keep = level.keep(w.name)
            want = keep.reshape(*keep.shape[:2], -1)[:, :, conn.full[i]].any(-1)
            assert torch.equal(restricted.channel_conn(w.name), want), (k, w.name)
            assert torch.equal(level.channel_conn(w.name), keep.reshape(*keep.shape[:2], -1).any(-1))


def test_residual_net_reduces_each_conv_over_its_reachable_taps():
    torch.manual_seed(0)
    model = TwoBlockResNet()
    conn, weights, params, index = build(model, torch.randn(1, 3, 1, 1))
    names = [w.name for w in weights]
    assert names == ["stem.weight", "b1.weight", "b2.weight", "fc.weight"]
    assert sorted(conn.kmax) == [0, 1, 2]  # the three convs; fc has none
    for i in (0, 1, 2):
        assert torch.nonzero(conn.taps[i]).flatten().tolist() == [4]  # a 1x1 map: only the centre tap
        assert torch.equal(conn.kmax[i], params[i].detach().abs()[:, :, 1, 1])
    big, _, _, _ = build(model, torch.randn(1, 3, 8, 8))
    assert all(bool(big.taps[i].all()) for i in (0, 1, 2))
    assert torch.equal(big.kmax[1], params[1].detach().abs().amax((2, 3)))


def test_channel_connectivity_equals_the_full_masks_reduced_over_reachable_taps():
    torch.manual_seed(0)
    model = TwoBlockResNet()
    with torch.no_grad():  # ties at one magnitude in b1: the non-exact branch must serve them too
        model.b1.weight.copy_(0.05 * torch.sign(model.b1.weight))
    conn, weights, params, index = build(model, torch.randn(1, 3, 1, 1))
    b1_kept = []
    for k in range(0, 1401, 175):
        level = conn.level(index.allocate(k))
        b1_kept.append(int(level.keep("b1.weight").sum()))
        for i, w in enumerate(weights[:3]):
            keep = level.keep(w.name)
            assert torch.equal(keep, index.layer_mask(i, int(level.alloc.pruned[i]), params[i]))
            conn_pairs = level.channel_conn(w.name)
            expected = keep.reshape(*keep.shape[:2], -1)[:, :, conn.taps[i]].any(-1)
            assert torch.equal(conn_pairs, expected), (k, w.name)
            # Reached pairs select which kept centre taps count as effective.
            reached = torch.zeros_like(conn_pairs)
            reached[:, :2] = True
            assert level.effective_count(w.name, reached) == int(keep[:, :2, 1, 1].sum())
            assert level.effective_count(w.name, torch.ones_like(conn_pairs)) == int(keep[:, :, 1, 1].sum())
    assert index.total == 216 + 576 + 576 + 32
    assert b1_kept[0] == 576 and b1_kept[-1] == 0 and np.all(np.diff(b1_kept) <= 0)
    assert any(0 < n < 576 for n in b1_kept)  # some level cuts through b1's ties


def test_effective_count_of_reached_pairs_equals_the_full_mask_count_with_every_tap_reachable():
    """With every tap reachable, the count reads only the lost pairs' weights (exact cuts) or
    the full mask (ties surviving at the cut); both equal counting the full mask."""
    torch.manual_seed(3)
    model = TwoBlockResNet()
    with torch.no_grad():  # ties at one magnitude in b1: the non-exact branch is taken there
        model.b1.weight.copy_(0.05 * torch.sign(model.b1.weight))
    conn, weights, params, index = build(model, torch.randn(1, 3, 8, 8))
    gen = torch.Generator().manual_seed(0)
    for k in range(0, 1401, 100):
        level = conn.level(index.allocate(k))
        for w in weights[:3]:
            keep = level.keep(w.name).reshape(*level.channel_conn(w.name).shape, -1)
            for _ in range(3):
                reached = torch.rand(keep.shape[:2], generator=gen) < 0.6
                assert level.effective_count(w.name, reached) == int(keep[reached].sum()), (k, w.name)


def test_kept_lines_equal_the_full_masks_rows_and_columns():
    """Which rows and columns keep a weight, from per-line maxima, equals reducing the full mask; with
    surviving ties at the cut it declines (None) and the mask answers."""
    torch.manual_seed(4)
    model = mlp()
    with torch.no_grad():  # ties at one magnitude in the middle layer
        model[2].weight.copy_(0.3 * torch.sign(model[2].weight))
    conn, weights, params, index = build(model, torch.randn(1, 4))
    declined = 0
    for k in range(0, index.total + 1, 7):
        level = conn.level(index.allocate(k))
        for w in weights:
            lines = level.kept_lines(w.name)
            keep = level.keep(w.name)
            if lines is None:
                declined += 1
                continue
            assert torch.equal(lines.rows, keep.any(1)) and torch.equal(lines.cols, keep.any(0)), (k, w.name)
        emptied = level.emptying({weights[1].name}).kept_lines(weights[1].name)
        assert not bool(emptied.rows.any()) and not bool(emptied.cols.any())
    assert declined > 0  # the tie branch was exercised


def test_line_maxima_from_the_cover_equal_those_read_directly():
    """The cover's pass over a linear weight leaves the same per-row and per-column maxima that
    Connectivity.line_max reads on its own, so the flows do not read the weights again."""
    from collapsekit.analysis.analysis import Analysis

    torch.manual_seed(5)
    an = Analysis(mlp(), torch.randn(1, 4))
    an.cover(channel_level=False)
    assert sorted(an.connectivity._line_max) == [0, 1, 2]
    fresh = Connectivity(an.traced, an.weights, an.tensors, an.index)
    for i in range(3):
        for got, want in zip(an.connectivity.line_max(i), fresh.line_max(i)):
            assert torch.equal(got, want)
