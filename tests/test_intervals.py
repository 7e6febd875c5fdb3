"""Interval domain: boxes over an input range that prove activations constant at the current weights."""
import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.intervals import data_range, interval_bounds, interval_cuts, merge_cuts
from collapsekit.analysis.prunable import find_prunable
from collapsekit.analysis.trace import trace
from collapsekit.analysis.values import relu_cuts
from collapsekit.validation import probe


class BiasCut(nn.Module):
    """A hidden layer whose mixed-sign weights can never beat its negative bias for inputs in [0, 1]."""

    def __init__(self, act=None):
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.act = act or nn.ReLU()
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def bias_cut(act=None, bias=-2.0):
    torch.manual_seed(0)
    model = BiasCut(act)
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[0.5, -0.5, 0.25, -0.25]] * 3))  # at most 0.75 on [0, 1]^4
        model.fc1.bias.fill_(bias)
    return model


def analyse(model, x, input_range):
    traced, weights = trace(model, x), find_prunable(model)
    keep = [torch.ones(w.shape, dtype=torch.bool) for w in weights]
    return traced, weights, keep, interval_cuts(traced, weights, keep, input_range)


def test_affine_box_is_exact_for_one_layer():
    model = bias_cut()
    traced, weights, keep, _ = analyse(model, torch.zeros(1, 4), (0.0, 1.0))
    (lo, hi), _ = interval_bounds(traced, weights, keep, (0.0, 1.0))
    # ReLU outputs are 0 everywhere, so fc2's output is exactly its bias.
    assert torch.allclose(lo, model.fc2.bias.double()) and torch.allclose(hi, model.fc2.bias.double())


@pytest.mark.parametrize("act, bias, edge", [(nn.ReLU(), -2.0, 0.0), (nn.ReLU6(), -2.0, 0.0),
                                             (nn.Hardswish(), -4.0, -3.0)])
def test_a_negative_bias_cuts_what_signs_cannot(act, bias, edge):
    model = bias_cut(act, bias)
    traced, weights, keep, cuts = analyse(model, torch.zeros(1, 4), (0.0, 1.0))
    assert relu_cuts(traced, weights, keep) in ({}, None)  # mixed signs: the sign domain proves nothing
    assert cuts is not None and len(cuts) == 1 and bool((next(iter(cuts.values())) == 0).all())
    assert run_flow(traced, weights, keep, backward=False, cuts=cuts).collapsed
    # Sound: constant for inputs in the range, and the range matters (outside it the layer fires).
    g = torch.Generator().manual_seed(1)
    inside = model(torch.rand(64, 4, generator=g))
    assert torch.allclose(inside, inside[:1].expand_as(inside))
    outside = model(torch.tensor([[10.0, -10.0, 10.0, -10.0], [0.0, 0.0, 0.0, 0.0]]))
    assert not torch.allclose(outside[0], outside[1])
    assert edge + 1 > 0.75 + bias  # the box's upper end 0.75 + bias clears the flat piece


def test_without_a_range_only_what_holds_for_every_input_is_claimed():
    model = bias_cut()
    _, _, _, cuts = analyse(model, torch.zeros(1, 4), (-float("inf"), float("inf")))
    assert cuts == {}


def test_a_box_touching_the_edge_is_not_cut():
    model = bias_cut(bias=-0.75)  # upper end exactly 0: rounding could fire the ReLU
    _, _, _, cuts = analyse(model, torch.zeros(1, 4), (0.0, 1.0))
    assert cuts == {}


def test_merge_keeps_every_proven_cut():
    a = {"relu": torch.tensor([1.0, 0.0, 1.0])}
    b = {"relu": torch.tensor([0.0, 1.0, 1.0]), "relu_1": torch.tensor([0.0])}
    merged = merge_cuts(a, None, b)
    assert merged["relu"].tolist() == [0.0, 0.0, 1.0] and merged["relu_1"].tolist() == [0.0]
    assert merge_cuts(None, None) is None


def test_data_range_spans_train_and_test():
    bundle = ck.data.load("synthetic")
    lo, hi = data_range(bundle)
    x = torch.cat([bundle.train.tensors[0], bundle.test.tensors[0]])
    assert lo == float(x.min()) and hi == float(x.max()) and lo < hi


@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v1", "resnet20"])
def test_cut_elements_are_constant_on_random_inputs_in_the_range(name):
    """Soundness on the zoo at high sparsity: every element cut is constant over random inputs in the range."""
    torch.manual_seed(0)
    kw = {"width_mult": 0.25} if name == "mobilenet_v1" else {}
    model = ck.models.create(name, num_classes=10, in_channels=1, input_size=8, **kw).eval()
    with torch.no_grad():  # shifted BN statistics and biases make some units provably off, others saturated
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.bias.uniform_(-2, 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-1, 0.2)
    x = torch.zeros(1, 1, 8, 8)
    weights = find_prunable(model)
    masks = ck.prune(__import__("copy").deepcopy(model), 0.9).masks
    keep = [masks[w.name] for w in weights]
    traced = trace(model, x)
    rng = (-1.5, 2.0)
    bounds = interval_bounds(traced, weights, keep, rng)
    assert bounds is not None
    (lo, hi), cuts = bounds
    assert any(bool((c == 0).any()) for c in cuts.values()), name  # the test exercises some cut
    gm = trace(probe.masked_copy(model, masks), x).gm
    g = torch.Generator().manual_seed(0)
    inputs = torch.rand(32, 1, 8, 8, generator=g) * (rng[1] - rng[0]) + rng[0]
    inputs[0].fill_(rng[0])
    inputs[1].fill_(rng[1])
    recorder = Recorder(gm)
    with torch.no_grad():
        out = recorder.run(inputs)
    assert bool((out >= lo.float() - 1e-4).all() and (out <= hi.float() + 1e-4).all())  # the box holds
    for key, cut in cuts.items():
        value = recorder.seen[key]
        constant = (cut == 0).expand_as(value)
        assert float((value - value[:1]).abs()[constant].sum()) == 0.0, key


class Recorder(torch.fx.Interpreter):
    """Runs a graph module, keeping every node's output."""

    def __init__(self, gm):
        super().__init__(gm)
        self.seen = {}

    def run_node(self, n):
        out = self.seen[n.name] = super().run_node(n)
        return out


def test_analyze_with_data_proves_value_collapse_over_the_data_range():
    """A level constant for every input the data can give, not for every real input: value_collapsed with data."""
    from collapsekit.data import bundle

    model = BiasCut()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[0.1, 0.0, 0.0, 0.0],  # the only unit that follows the input ...
                                             [0.5, -0.5, 0.25, -0.25],  # ... these two never beat their bias on [0, 1]
                                             [0.5, -0.5, 0.25, -0.25]]))
        model.fc1.bias.copy_(torch.tensor([0.0, -2.0, -2.0]))
        model.fc2.weight.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.rand(200, 4, generator=g), torch.rand(50, 4, generator=g)
    data = bundle("box", x_train, torch.arange(200) % 2, x_test, torch.arange(50) % 2, 2, 4, 4)
    s = 4 / 18  # Global MP prunes fc1's three zeros, then its 0.1: the unit that follows the input
    with_data = ck.analyze(model, x_test[:1], sparsities=[s], data=data).at(s)
    without = ck.analyze(model, x_test[:1], sparsities=[s]).at(s)
    assert not with_data.collapsed and not without.collapsed  # kept paths remain
    assert with_data.value_collapsed and not without.value_collapsed
    assert not with_data.forecast.trainable  # a constant function on the data: nothing to learn from
    pruned = probe.masked_copy(model, ck.Analysis(model, x_test[:1]).masks(s))
    out = pruned(torch.rand(256, 4, generator=g))
    assert torch.equal(out, out[:1].expand_as(out))  # sound on inputs in the range
