"""prunable.py: which tensors Global MP ranks, for weights a module stores in another form."""
import warnings

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis.prunable import find_prunable


def _pair(kind: str):
    """The same net twice: its norm through torch.nn.utils.parametrizations, and through the older hook API
    (the stored tensors copied across, so both rank the same numbers)."""
    torch.manual_seed(0)
    old_api = {"weight_norm": nn.utils.weight_norm, "spectral_norm": nn.utils.spectral_norm}[kind]
    new_api = getattr(nn.utils.parametrizations, kind)

    def net(wrap):
        return nn.Sequential(wrap(nn.Conv2d(3, 8, 3, padding=1)), nn.ReLU(), wrap(nn.Conv2d(8, 8, 3, padding=1)),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), wrap(nn.Linear(8, 5)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old API is deprecated
        old = net(old_api)
    new = net(new_api)
    with torch.no_grad():
        for i in (0, 2, 6):
            if kind == "weight_norm":
                new[i].parametrizations.weight.original0.copy_(old[i].weight_g)
                new[i].parametrizations.weight.original1.copy_(old[i].weight_v)
            else:
                new[i].parametrizations.weight.original.copy_(old[i].weight_orig)
    return old.eval(), new.eval()


@pytest.mark.parametrize("kind, stored", [("weight_norm", "weight_v"), ("spectral_norm", "weight_orig")])
def test_a_weight_computed_by_the_older_hook_api_is_ranked_through_its_stored_tensor(kind, stored):
    old, new = _pair(kind)
    found = find_prunable(old)
    assert [w.name for w in found] == [f"0.{stored}", f"2.{stored}", f"6.{stored}"]  # weight_norm's weight_g: never
    assert [w.kind for w in found] == ["conv", "conv", "linear"] and all(w.keeps_zeros for w in found)
    assert [w.aliases for w in found] == [("0.weight",), ("2.weight",), ("6.weight",)]
    before = {k: v.clone() for k, v in old.state_dict().items()}
    x = torch.randn(1, 3, 6, 6)
    levels = [0.5, 0.8, 0.9, 0.95, 0.98]
    got, want = ck.analyze(old, x, sparsities=levels), ck.analyze(new, x, sparsities=levels)
    assert got.collapse_sparsity == want.collapse_sparsity < 1.0  # the same ranking as the parametrized net's
    for a, b in zip(got.levels, want.levels):
        assert (a.collapsed, a.effective_sparsity, len(a.emptied_layers), list(a.dead_channels.values()),
                list(a.unused_channels.values())) == (b.collapsed, b.effective_sparsity, len(b.emptied_layers),
                                                      list(b.dead_channels.values()), list(b.unused_channels.values()))
        assert list(a.layer_sparsity.values()) == list(b.layer_sparsity.values())
    assert all(torch.equal(before[k], v) for k, v in old.state_dict().items())  # the user's model as it was


def test_a_hook_that_moves_a_pruned_zero_leaves_its_layer_unpruned_in_the_flow():
    # A pre-hook computing weight = stored + 1 (a zero does not stay zero): ranked, but applied as dense.
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    stored = nn.Parameter(model[0].weight.detach().clone())
    del model[0].weight
    model[0].register_parameter("weight_raw", stored)
    model[0].register_forward_pre_hook(lambda m, inputs: setattr(m, "weight", m.weight_raw + 1))
    model[0].weight = stored.detach() + 1
    found = {w.name: w for w in find_prunable(model)}
    assert not found["0.weight_raw"].keeps_zeros and found["0.weight_raw"].aliases == ()
