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
