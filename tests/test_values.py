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


# -- one test per sign rule: a tiny net whose last op is the ReLU the rule decides ----------
def linear(rows, bias=None):
    """An nn.Linear with the given weight rows (and bias; none if not given)."""
    w = torch.tensor(rows, dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


def conv_signs(signs, bias=None):
    """A 1x1 nn.Conv2d from 1 channel to len(signs) channels with those weights."""
    conv = nn.Conv2d(1, len(signs), 1, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(signs, dtype=torch.float32).view(-1, 1, 1, 1))
        if bias is not None:
            conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return conv


class Net(nn.Module):
    """`fn(self, x)` as forward, over the given submodules."""

    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        for name, m in modules.items():
            self.add_module(name, m)

    def forward(self, x):
        return self.fn(self, x)


def only_cut(model, shape):
    """(node name, bool dead mask) of the one ReLU the sign analysis cuts; a forward pass at
    several scales confirms it: the model's output (that ReLU's) is 0 exactly on the cut."""
    traced = trace(model, torch.randn(1, *shape))
    weights = find_prunable(model)
    cuts = relu_cuts(traced, weights, [torch.ones(w.shape, dtype=torch.bool) for w in weights])
    assert cuts is not None and len(cuts) == 1, cuts
    (node, cut), = cuts.items()
    dead = cut[0] == 0
    with torch.no_grad():
        outs = torch.cat([model(*x) for x in probe.random_inputs((torch.zeros(1, *shape),), batch=16)])
    assert bool((outs[:, dead] == 0).all())  # proven constant 0 ...
    assert bool((outs[:, ~dead] != 0).any(0).all())  # ... and every element not cut fires for some input
    return node, dead.flatten().tolist()


def test_relu_module_rule():
    model = nn.Sequential(nn.ReLU(), linear([[-1.0, -2.0], [1.0, 1.0]]), nn.ReLU())
    assert only_cut(model, (2,)) == ("_2", [True, False])


def test_relu_function_rule():
    model = Net(lambda m, x: torch.relu(m.fc(torch.relu(x))), fc=linear([[-1.0, -2.0], [1.0, 1.0]]))
    assert only_cut(model, (2,)) == ("relu_1", [True, False])


def test_relu_method_rule():
    model = Net(lambda m, x: m.fc(x.relu()).relu(), fc=linear([[1.0, 1.0], [-1.0, -2.0]]))
    assert only_cut(model, (2,)) == ("relu_1", [False, True])


def test_linear_rule_reads_the_bias_sign():
    # Row 0 has a positive weight on a non-negative input; row 1 only a negative bias.
    model = nn.Sequential(nn.ReLU(), linear([[-1.0, 0.5], [0.0, 0.0]], bias=[0.0, -1.0]), nn.ReLU())
    assert only_cut(model, (2,)) == ("_2", [False, True])


def test_same_sign_module_rule():
    model = nn.Sequential(nn.ReLU(), linear([[-1.0, -2.0], [1.0, 1.0]]), nn.Tanh(), nn.ReLU())
    assert only_cut(model, (2,)) == ("_3", [True, False])


def test_positive_module_rule():
    # A sigmoid is never negative: negative weights and bias after it can never fire.
    model = nn.Sequential(linear([[1.0, -1.0], [2.0, 1.0]]), nn.Sigmoid(),
                          linear([[-1.0, -1.0], [1.0, -1.0]], bias=[-0.1, 0.0]), nn.ReLU())
    assert only_cut(model, (2,)) == ("_3", [True, False])


def test_batch_norm_rule():
    bn = nn.BatchNorm1d(2).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([-1.0, 1.0]))
        bn.bias.copy_(torch.tensor([-0.1, 0.2]))
    # Channel 0: a negative scale on a non-negative input and a negative shift.
    model = nn.Sequential(nn.ReLU(), linear([[1.0, 0.0], [0.0, 1.0]]), bn, nn.ReLU()).eval()
    assert only_cut(model, (2,)) == ("_3", [True, False])


def test_conv_rule():
    model = nn.Sequential(nn.ReLU(), conv_signs([-1.0, 1.0], bias=[-0.1, 0.0]), nn.ReLU())
    assert only_cut(model, (1, 2, 2)) == ("_2", [True] * 4 + [False] * 4)


def test_avg_pool_module_rule():
    model = nn.Sequential(nn.ReLU(), conv_signs([-1.0, 1.0]), nn.AvgPool2d(2), nn.ReLU())
    assert only_cut(model, (1, 4, 4)) == ("_3", [True] * 4 + [False] * 4)


def test_max_pool_module_rule():
    model = nn.Sequential(nn.ReLU(), conv_signs([1.0, -1.0]), nn.MaxPool2d(2), nn.ReLU())
    assert only_cut(model, (1, 4, 4)) == ("_3", [False] * 4 + [True] * 4)


def test_add_rule():
    # Element 0: both operands non-positive; element 1: one operand can be positive.
    model = Net(lambda m, x: torch.relu(m.f(torch.relu(x)) + m.g(torch.relu(x))),
                f=linear([[-1.0, 0.0], [0.0, -1.0]]), g=linear([[-1.0, -1.0], [1.0, 0.0]]))
    assert only_cut(model, (2,)) == ("relu_2", [True, False])


def test_mul_rule():
    # Non-negative times non-positive is non-positive; non-negative times non-negative is not.
    model = Net(lambda m, x: torch.relu(m.f(torch.relu(x)) * m.g(torch.relu(x))),
                f=linear([[1.0, 0.0], [0.0, 1.0]]), g=linear([[-1.0, 0.0], [0.0, 1.0]]))
    assert only_cut(model, (2,)) == ("relu_2", [True, False])


def test_shape_function_rule():
    model = Net(lambda m, x: torch.relu(torch.flatten(m.conv(torch.relu(x)), 1)), conv=conv_signs([-1.0, 1.0]))
    assert only_cut(model, (1, 2, 2)) == ("relu_1", [True] * 4 + [False] * 4)


def test_cat_rule():
    model = Net(lambda m, x: torch.relu(torch.cat([m.f(torch.relu(x)), m.g(torch.relu(x))], 1)),
                f=linear([[-1.0, -1.0]]), g=linear([[1.0, 2.0]]))
    assert only_cut(model, (2,)) == ("relu_2", [True, False])


def test_getitem_rule():
    model = Net(lambda m, x: torch.relu(m.f(torch.relu(x))[:, 1:3]), f=linear([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
    assert only_cut(model, (2,)) == ("relu_1", [True, False])


def test_method_rule():
    model = Net(lambda m, x: torch.relu(m.conv(torch.relu(x)).flatten(1)), conv=conv_signs([1.0, -1.0]))
    assert only_cut(model, (1, 2, 2)) == ("relu_1", [False] * 4 + [True] * 4)
