"""MagnitudeIndex: exact Global MP counts, deterministic ties, MT, critical sparsities (Invariants 1-2)."""
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.analysis.magnitudes import MagnitudeIndex, resolve_mt, sparsity_to_count
from collapsekit.analysis.prunable import find_prunable, tensors


def tied_mlp(seed=0):
    """An MLP whose weights are small integers: many ties, many exact zeros."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        for lin in m[::2]:
            lin.weight.copy_(torch.randint(-3, 4, lin.weight.shape).float())
    return m


def brute_force_keep(params, k, mt=0):
    """Keep-masks by sorting (|w|, layer, flat index) explicitly, MT protecting each layer's top."""
    order = []
    for li, t in enumerate(params):
        flat = t.detach().abs().flatten().tolist()
        layer = sorted((v, li, j) for j, v in enumerate(flat))
        protect = min(mt, len(layer))
        order += layer[:len(layer) - protect]
    order.sort()
    keep = [torch.ones(t.numel(), dtype=torch.bool) for t in params]
    for _, li, j in order[:k]:
        keep[li][j] = False
    return [kp.view(t.shape) for kp, t in zip(keep, params)]


def index_of(model):
    weights = find_prunable(model)
    params = tensors(model, weights)
    return MagnitudeIndex(weights, params), params


@pytest.mark.parametrize("mt", [0, 4, 30])
def test_every_count_matches_brute_force_with_ties_and_zeros(mt):
    model = tied_mlp()
    idx, params = index_of(model)
    assert sum(float((t == 0).sum()) for t in params) > 10  # the fixture really has zeros
    for k in range(0, idx.max_count(mt) + 1):
        alloc = idx.allocate(k, mt)
        masks = [m for _, m in idx.layer_masks(alloc, params)]
        expected = brute_force_keep(params, k, mt)
        assert sum(int((~m).sum()) for m in masks) == k
        for got, want in zip(masks, expected):
            assert torch.equal(got, want), k


def test_zeros_go_first_and_masks_are_nested():
    model = tied_mlp(1)
    idx, params = index_of(model)
    zeros = sum(int((t == 0).sum()) for t in params)
    alloc = idx.allocate(zeros)
    masks = [m for _, m in idx.layer_masks(alloc, params)]
    assert all(torch.equal(m, t != 0) for m, t in zip(masks, params))
    previous = None
    for k in range(0, idx.total + 1, 7):
        masks = [m for _, m in idx.layer_masks(idx.allocate(k), params)]
        if previous is not None:
            assert all(bool((m <= p).all()) for m, p in zip(masks, previous))
        previous = masks


def test_exact_count_at_high_sparsity_on_random_conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 8, 8))
    idx, params = index_of(model)
    for s in (0.5, 0.9, 0.99, 0.999):
        k = sparsity_to_count(s, idx.total)
        masks = [m for _, m in idx.layer_masks(idx.allocate(k), params)]
        assert sum(int((~m).sum()) for m in masks) == round(s * idx.total)


def test_mt_keeps_min_mt_size_per_layer_and_total_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 40), nn.Linear(40, 3))  # the small layer (120) holds the small weights
    with torch.no_grad():
        model[1].weight.mul_(1e-3)
    idx, params = index_of(model)
    k = sparsity_to_count(0.95, idx.total)
    plain = idx.allocate(k)
    assert plain.pruned[1] == 120  # without MT, Global MP empties the classifier
    with_mt = idx.allocate(k, 16)
    assert with_mt.pruned.sum() == k
    assert (idx.sizes - with_mt.pruned >= np.minimum(16, idx.sizes)).all()
    assert idx.sizes[1] - with_mt.pruned[1] == 16


def test_an_allocation_is_remembered_per_count_and_mt_and_cannot_be_changed():
    idx, _ = index_of(tied_mlp())
    first = idx.allocate(40, 2)
    assert idx.allocate(40, 2) is first  # asked again: not recomputed
    assert idx.allocate(40) is not first and idx.allocate(40).pruned.sum() == 40
    fresh, _ = index_of(tied_mlp())
    assert np.array_equal(fresh.allocate(40, 2).pruned, first.pruned)
    with pytest.raises(ValueError):
        first.pruned[0] = 0  # shared by every caller: read-only


def test_critical_sparsity_is_the_first_count_that_empties_the_layer():
    model = tied_mlp(2)
    idx, _ = index_of(model)
    crit = idx.critical_counts()
    for i, c in enumerate(crit):
        assert idx.allocate(int(c)).pruned[i] == idx.sizes[i]
        assert idx.allocate(int(c) - 1).pruned[i] < idx.sizes[i]
    assert np.allclose(idx.critical_sparsities(), crit / idx.total)
    assert (idx.critical_sparsities(mt_count=3) == 1.0).all()  # MT >= 1 never empties a layer


@pytest.mark.parametrize("mt,count", [
    (None, 0), (7, 7), (np.int64(7), 7), ("12", 12), (" 96 ", 96), (96, 96),  # integers are counts
    (0.05, 500), ("0.05", 500), ("0.05%", 500), ("0.05 %", 500), ("5e-2", 500),  # decimals and N% are percents
    (96.0, 960_000), ("96.0", 960_000), ("96%", 960_000), ("100%", 1_000_000),
    (0, 0), (0.0, 0), ("0%", 0), (0.00001, 1),  # a positive percent keeps at least one weight
])
def test_resolve_mt_reads_integers_as_counts_and_decimals_or_percent_signs_as_percents(mt, count):
    assert resolve_mt(mt, 1_000_000) == count


@pytest.mark.parametrize("bad,fragment", [
    (-1, "count must be >= 0"), ("-3", "count must be >= 0"), (-0.5, "percent must lie in [0, 100]"),
    ("-0.5%", "percent must lie in [0, 100]"), (150.0, "percent must lie in [0, 100]"),
    ("101%", "percent must lie in [0, 100]"), (float("nan"), "percent must lie in [0, 100]"),
    ("nan", "percent must lie in [0, 100]"), ("inf", "percent must lie in [0, 100]"),
    ("abc", "neither a count"), ("", "neither a count"), ("%", "neither a count"), ("5%%", "neither a count"),
    ([3], "must be a count"), (True, "must be a count"),
])
def test_resolve_mt_refuses_bad_values_in_one_line(bad, fragment):
    with pytest.raises(CollapsekitError, match=re.escape(fragment)) as err:
        resolve_mt(bad, 1000)
    assert "\n" not in str(err.value)


def test_bad_sparsity_and_overlarge_k_are_clear_errors():
    for bad in (1.0, -0.1, 1.5, "x", float("nan")):
        with pytest.raises(CollapsekitError, match="sparsity"):
            sparsity_to_count(bad, 100)
    idx, _ = index_of(tied_mlp())
    with pytest.raises(CollapsekitError, match="MT"):
        idx.allocate(idx.total - 5, mt_count=10)


def near_tied_net(seed=0):
    """Random float weights in a narrow range with repeated values: many share a histogram bin."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 10), nn.Linear(10, 8), nn.Linear(8, 4))
    with torch.no_grad():
        for lin in model:
            w = 1.0 + torch.randint(0, 40, lin.weight.shape).float() / 1024  # 40 values in two bins
            w[torch.rand(w.shape) < 0.2] = 0.0
            lin.weight.copy_(w * torch.sign(torch.randn(w.shape)))
    return model


@pytest.mark.parametrize("mt", [0, 5])
def test_chunked_reads_and_bin_misses_match_brute_force(monkeypatch, mt):
    import collapsekit.analysis.magnitudes as magnitudes

    monkeypatch.setattr(magnitudes, "_CHUNK", 7)  # every layer read in many chunks
    monkeypatch.setattr(magnitudes, "_WINDOW", 0.0)  # every miss reads one bin only
    monkeypatch.setattr(magnitudes, "_WINDOW_MIN", 0)
    model = near_tied_net()
    idx, params = index_of(model)
    assert len({int(b) >> 16 for t in params for b in magnitudes.abs_bits(t).flatten()}) <= 6
    for k in range(0, idx.max_count(mt) + 1, 3):
        assert k == 0 or len(idx._fine) <= 6
        masks = [m for _, m in idx.layer_masks(idx.allocate(k, mt), params)]
        for got, want in zip(masks, brute_force_keep(params, k, mt)):
            assert torch.equal(got, want), k


def test_prefetch_and_critical_counts_match_a_fresh_index():
    model = near_tied_net(3)
    idx, params = index_of(model)
    ks = [0, 1, idx.total // 3, idx.total - 1]
    idx.prefetch(ks)
    fresh, _ = index_of(model)
    for k in ks:
        assert np.array_equal(idx.allocate(k).pruned, fresh.allocate(k).pruned)
    crit = idx.critical_counts()
    for i, c in enumerate(crit):
        keep = brute_force_keep(params, int(c))
        assert not bool(keep[i].any()) and bool(brute_force_keep(params, int(c) - 1)[i].any())


def test_index_holds_no_copy_of_the_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 1000))
    idx, _ = index_of(model)
    idx.allocate(idx.total // 2)
    held = sum(v.nbytes + e.nbytes for runs in idx._fine.values() for v, e in runs) + idx._cum.nbytes
    assert held < 0.25 * idx.total * 4  # the old index held one float32 copy (total * 4 bytes)


def test_bf16_weights_rank_like_their_float32_values():
    model = near_tied_net(5)
    with torch.no_grad():  # values bf16 holds exactly, with ties created by the rounding
        for lin in model:
            lin.weight.copy_(lin.weight.to(torch.bfloat16).float() * 3.7)
            lin.weight.copy_(lin.weight.to(torch.bfloat16).float())
    idx32, params = index_of(model)
    half = [p.detach().to(torch.bfloat16) for p in params]
    idx16 = MagnitudeIndex(find_prunable(model), half)
    for k in (5, idx32.total // 2, idx32.total - 3):
        a32, a16 = idx32.allocate(k), idx16.allocate(k)
        assert np.array_equal(a32.pruned, a16.pruned) and a32.threshold == a16.threshold
        for (_, m32), (_, m16) in zip(idx32.layer_masks(a32, params), idx16.layer_masks(a16, half)):
            assert torch.equal(m32, m16)


def test_nan_weight_is_a_one_line_error():
    model = tied_mlp()
    with torch.no_grad():
        model[2].weight[1, 1] = float("nan")
    with pytest.raises(CollapsekitError, match="2.weight contains NaN"):
        index_of(model)


def test_a_bf16_bin_holds_one_value_and_costs_two_numbers():
    torch.manual_seed(0)
    weights = [torch.randn(300, 200).to(torch.bfloat16)]
    model = nn.Sequential(nn.Linear(200, 300, bias=False))
    idx = MagnitudeIndex(find_prunable(model), weights)
    alloc = idx.allocate(idx.total // 2)
    assert all(len(v) <= 1 for runs in idx._fine.values() for v, _ in runs)  # bf16: one value per bin
    mags = weights[0].float().abs().flatten()
    assert alloc.threshold == float(mags.sort().values[idx.total // 2 - 1])


@pytest.mark.parametrize("expected", [False, True])
@pytest.mark.parametrize("order", ["sparse first", "dense first", "shuffled"])
def test_kept_positions_are_the_masks_kept_weights_whatever_order_the_cuts_come_in(monkeypatch, order, expected):
    import collapsekit.analysis.magnitudes as magnitudes

    monkeypatch.setattr(magnitudes, "SPARSE", 0.5)  # the small fixture's layers qualify from half kept
    model = tied_mlp(3)  # ties at every cut: the surviving ones are the last in flat order
    idx, params = index_of(model)
    ks = list(range(idx.max_count() + 1))
    ks = ks[::-1] if order == "sparse first" else np.random.default_rng(0).permutation(ks).tolist() \
        if order == "shuffled" else ks
    reads = []
    real_read = MagnitudeIndex._read_top
    monkeypatch.setattr(MagnitudeIndex, "_read_top", staticmethod(lambda t, v: reads.append(v) or real_read(t, v)))
    if expected:  # told every level first: one read per layer, whatever order the levels come in
        idx.expect_kept([idx.allocate(int(k)) for k in ks])
    served = 0
    for k in ks:
        alloc = idx.allocate(int(k))
        for i, mask in idx.layer_masks(alloc, params):
            got = idx.kept_positions(i, int(alloc.pruned[i]), params[i])
            if got is None:
                assert int(mask.sum()) > 0.5 * mask.numel()
                continue
            served += 1
            assert torch.equal(got, torch.nonzero(mask.flatten()).flatten()), (k, i)
    assert served > len(ks)
    if expected:
        assert len(reads) == len(params)
    elif order == "sparse first":
        assert len(reads) > len(params)  # each denser level read its layer again


def test_line_maxima_read_with_the_expected_top_weights_serve_kept_positions_without_another_read(monkeypatch):
    import collapsekit.analysis.magnitudes as magnitudes

    monkeypatch.setattr(magnitudes, "SPARSE", 0.5)
    monkeypatch.setattr(magnitudes, "_CHUNK", 16)  # several row blocks per layer
    model = tied_mlp(3)
    idx, params = index_of(model)
    ks = list(range(idx.max_count() // 2, idx.max_count() + 1))
    idx.expect_kept([idx.allocate(k) for k in ks])
    for i, t in enumerate(params):
        rows = t.shape[0]
        assert all(torch.equal(a, b) for a, b in zip(idx.line_maxima(i, t, rows), magnitudes.line_maxima(t, rows)))
    monkeypatch.setattr(MagnitudeIndex, "_read_top", staticmethod(lambda t, v: pytest.fail("read again")))
    for k in ks:
        alloc = idx.allocate(k)
        for i, mask in idx.layer_masks(alloc, params):
            got = idx.kept_positions(i, int(alloc.pruned[i]), params[i])
            if got is not None:
                assert torch.equal(got, torch.nonzero(mask.flatten()).flatten()), (k, i)


def test_an_index_sent_to_another_process_goes_without_its_weights_and_answers_alike_once_attached():
    import pickle

    model = tied_mlp(1)
    idx, params = index_of(model)
    idx.prefetch([5, 40])
    assert idx.__getstate__()["_tensors"] is None  # the weights stay where they are
    back = pickle.loads(pickle.dumps(idx))
    assert idx._tensors is params  # the index sent is as it was
    assert back._tensors is None
    back.attach(params)
    for k in range(0, idx.max_count() + 1, 7):
        a, b = idx.allocate(k), back.allocate(k)
        assert np.array_equal(a.pruned, b.pruned) and a.threshold == b.threshold
    assert [m.tolist() for _, m in back.layer_masks(back.allocate(30), params)] == \
        [m.tolist() for _, m in idx.layer_masks(idx.allocate(30), params)]
