"""Value-level collapse: constant at the current weights although a kept path remains."""
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.validation import probe
from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.prunable import find_prunable
from collapsekit.analysis.trace import trace
from collapsekit.analysis.values import relu_cuts
from collapsekit.analysis.analysis import Analysis


class SignCut(nn.Module):
    """A classifier conv whose only kept weight is negative, reading ReLU outputs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.classifier = nn.Conv2d(4, 2, 1, bias=False)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        y = torch.relu(self.classifier(torch.relu(self.features(x))))
        return self.fc(y.mean((2, 3)))


def masks_for(model):
    keep = [torch.ones(w.shape, dtype=torch.bool) for w in find_prunable(model)]
    keep[1].zero_()
    keep[1][0, 2] = True  # one kept weight in the classifier conv, negative below
    with torch.no_grad():
        model.classifier.weight[0, 2] = -0.7
    return keep


def test_relu_fed_only_by_a_negative_weight_is_value_collapsed_not_structurally():
    torch.manual_seed(0)
    model = SignCut()
    keep = masks_for(model)
    traced = trace(model, torch.randn(1, 3, 6, 6))
    weights = find_prunable(model)
    structural = run_flow(traced, weights, keep)
    assert not structural.collapsed  # a kept path remains ...
    cuts = relu_cuts(traced, weights, keep)
    assert cuts is not None and len(cuts) == 1
    value = run_flow(traced, weights, keep, backward=False, cuts=cuts)
    assert value.collapsed  # ... but the output is constant at these weights
    real = probe.masked_copy(model, {w.name: k for w, k in zip(weights, keep)})
    assert probe.output_is_constant(real, traced.example_inputs)


def test_positive_weight_is_not_cut():
    torch.manual_seed(0)
    model = SignCut()
    keep = masks_for(model)
    with torch.no_grad():
        model.classifier.weight[0, 2] = 0.7
    traced = trace(model, torch.randn(1, 3, 6, 6))
    weights = find_prunable(model)
    cuts = relu_cuts(traced, weights, keep)
    assert not run_flow(traced, weights, keep, backward=False, cuts=cuts).collapsed


def negate_layer(model, weight_name):
    """Make one layer's weights and bias non-positive: the ReLU after it can never fire."""
    module = model.get_submodule(weight_name.rpartition(".")[0])
    with torch.no_grad():
        module.weight.copy_(-module.weight.abs())
        if module.bias is not None:
            module.bias.copy_(-module.bias.abs())
    return model


def test_value_collapsed_verdicts_are_sound_and_found_on_the_zoo():
    x = torch.randn(1, 1, 8, 8)
    for name, layer in [("lenet_300_100", "fc2.weight"), ("lenet5", "features.3.weight")]:
        torch.manual_seed(0)
        model = ck.models.create(name, num_classes=4, in_channels=1, input_size=8)
        assert layer in {w.name for w in find_prunable(model)}
        negate_layer(model, layer)
        report = ck.analyze(model, x, sparsities=[0.3, 0.5, 0.9])
        claims = [lv for lv in report.levels if lv.value_collapsed and not lv.collapsed]
        assert claims, name  # a kept path remains, yet the output is constant
        an = Analysis(model, x)
        for level in claims:
            keep, _, _ = an.keep_masks(level.pruned)
            pruned = probe.masked_copy(model, {w.name: k for w, k in zip(an.weights, keep)})
            assert probe.output_is_constant(pruned, (x,)), (name, level.sparsity)
