"""collapsekit.validation.probe: forward-pass checks on a constant net vs a live one."""
import torch
import torch.nn as nn

from collapsekit.analysis.prunable import find_prunable
from collapsekit.validation import probe


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).train()


def all_kept(model):
    return {w.name: torch.ones(w.shape, dtype=torch.bool) for w in find_prunable(model)}


def test_output_is_constant_on_an_emptied_net_but_not_on_a_live_one():
    model, x = mlp(), (torch.randn(1, 4),)
    masks = all_kept(model)
    live = probe.masked_copy(model, masks)
    assert not probe.output_is_constant(live, x)
    masks["0.weight"][:] = False  # first layer emptied: BN and the head see a constant
    dead = probe.masked_copy(model, masks)
    assert probe.output_is_constant(dead, x)
    masks["0.weight"][2, 1] = True  # one kept weight makes it vary again
    assert not probe.output_is_constant(probe.masked_copy(model, masks), x)


def test_masked_copy_zeroes_pruned_weights_in_an_eval_copy_and_leaves_the_model():
    model = mlp()
    before = model[0].weight.detach().clone()
    masks = all_kept(model)
    masks["0.weight"][1] = False
    copy = probe.masked_copy(model, masks)
    assert not copy.training and model.training
    assert torch.equal(model[0].weight, before)
    assert int((copy[0].weight == 0).sum()) == 4 and torch.equal(copy[0].weight[0], before[0])
    assert not torch.signbit(copy[0].weight[1]).any()  # +0.0, never -0.0


def test_positive_copy_is_float64_with_kept_weights_one_over_fan_in_and_neutral_norms():
    model = mlp()
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
    masks = all_kept(model)
    masks["3.weight"][:, 0] = False
    pos = probe.positive_copy(model, find_prunable(model), masks)
    assert pos[0].weight.dtype == torch.float64 and not pos.training
    assert torch.all(pos[0].weight == 0.25) and torch.all(pos[0].bias == 0)
    assert pos[3].weight[:, 0].eq(0).all() and pos[3].weight[:, 1:].eq(0.2).all()
    assert pos[1].weight.eq(1).all() and pos[1].running_mean.eq(0).all() and pos[1].running_var.eq(1).all()
    out = pos(torch.full((2, 4), 2.0, dtype=torch.float64))  # input 2 -> 2 -> BN ~2 -> ReLU -> 4/5 of it
    assert torch.allclose(out, torch.full((2, 3), 0.8 * 2 / (1 + 1e-5) ** 0.5, dtype=torch.float64))


def test_capture_records_every_call_of_a_shared_module():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    model = Twice()
    out, seen = probe.capture(model, {"fc.weight": "fc"}, (torch.randn(2, 3),))
    assert len(seen["fc.weight"]) == 2 and torch.equal(seen["fc.weight"][1], out)
    assert not model.fc._forward_hooks  # hooks removed


def test_varying_flat_outputs_and_random_inputs():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert probe.varying(a, a + torch.tensor([0.0, 1e-9, 1.0])).tolist() == [False, False, True]
    t = torch.zeros(2)
    assert len(probe.flat_outputs({"a": t, "b": (t, [t])})) == 3 and probe.flat_outputs(3) == []
    batches = probe.random_inputs((torch.zeros(1, 4),), batch=500, seed=1)
    assert [b[0].shape for b in batches] == [(500, 4)] * 3
    stds = [float(b[0].std()) for b in batches]
    assert 0.09 < stds[0] < 0.11 and 0.9 < stds[1] < 1.1 and 9 < stds[2] < 11  # scales 0.1, 1, 10
    assert torch.equal(batches[0][0], probe.random_inputs((torch.zeros(1, 4),), batch=500, seed=1)[0][0])
