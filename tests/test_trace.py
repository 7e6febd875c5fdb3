"""trace: fx first, torch.export for shape-dependent control flow, one clear error when both fail."""
import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis.trace import trace


class ShapeBranch(nn.Module):
    """Control flow on the input's shape: fx cannot trace it, torch.export specialises it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if x.shape[-1] > 4:
            y = y + torch.relu(self.b(y))
        return self.fc(y.mean((2, 3)))


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return x


def test_fx_is_used_when_it_can_trace_and_shapes_are_recorded():
    traced = trace(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(5, 4))
    assert traced.method == "symbolic_trace"
    assert traced.example_inputs[0].shape == (1, 4)  # cut to a batch of one
    shapes = [tuple(n.meta["tensor_meta"].shape) for n in traced.gm.graph.nodes if n.op == "call_module"]
    assert shapes == [(1, 3), (1, 3)]


def test_export_fallback_is_analysed_like_fx():
    model = ShapeBranch()
    report = ck.analyze(model, torch.randn(1, 3, 8, 8), sparsities=[0.5, 0.99])
    assert report.trace_method == "export"
    by_name = {lay.name: lay for lay in report.layers}
    assert by_name["b.weight"].bypassable and not by_name["a.weight"].bypassable
    assert 0 < report.collapse_sparsity <= 1.0


def test_untraceable_model_names_the_module_and_both_failures():
    with pytest.raises(ck.CollapsekitError) as err:
        trace(ValueBranch(), torch.randn(1, 3))
    message = str(err.value)
    assert "\n" not in message
    assert "torch.fx failed" in message and "in ValueBranch.forward" in message
    assert "torch.export failed" in message
