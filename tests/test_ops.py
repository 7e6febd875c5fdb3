"""Op kinds: one list per kind, and every pass that reads a kind knows each of its ops."""
import copy

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis import ops
from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.prunable import find_prunable
from collapsekit.analysis.trace import trace
from collapsekit.pruning.prune import apply_masks

pytestmark = pytest.mark.filterwarnings("ignore:dropout[23]d")  # Dropout2d/3d on features: still per element
PER_ELEMENT = [*ops.ACTIVATION_MODULES, *ops.PARAMETRIC_ACTIVATION_MODULES, *ops.DROPOUT_MODULES]


def _net(kind: type) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), kind(), nn.Linear(6, 3)).eval()


def _masks():
    masks = {"0.weight": torch.ones(6, 4, dtype=torch.bool), "2.weight": torch.ones(3, 6, dtype=torch.bool)}
    masks["0.weight"][2] = False  # hidden unit 2 is dead (its filter is empty)
    masks["2.weight"][:, [1, 4]] = False  # hidden units 1 and 4 are unused
    return masks


@pytest.mark.parametrize("kind", PER_ELEMENT, ids=lambda k: k.__name__)
def test_the_flow_reads_every_per_element_op_element_by_element(kind):
    # No conservative rule: a dead unit stays dead through the op, and unused units stay unused.
    model, x = _net(kind), torch.randn(1, 4)
    traced = trace(model, x)
    weights = find_prunable(traced.gm)
    masks = _masks()
    flow = run_flow(traced, weights, [masks[w.name] for w in weights])
    assert flow.conservative_ops == {}
    assert flow.dead_channels == {"0.weight": [2]} and flow.unused_channels == {"0.weight": [1, 4]}
    assert not flow.collapsed and flow.output_alive == 1.0


@pytest.mark.parametrize("kind", [*ops.ACTIVATION_MODULES, *ops.DROPOUT_MODULES], ids=lambda k: k.__name__)
def test_compaction_removes_unused_units_through_every_stateless_per_element_op(kind):
    model, x = _net(kind), torch.randn(1, 4)
    masks = _masks()
    small = ck.compact(model, masks, x)
    # unused units 1 and 4 removed, and dead unit 2 with its constant folded into the next bias
    assert small.get_submodule("0").weight.shape == (3, 4) and small.get_submodule("2").weight.shape == (3, 3)
    masked = apply_masks(copy.deepcopy(model), masks)
    g = torch.Generator().manual_seed(3)
    for scale in (0.1, 1.0, 10.0):
        xs = torch.randn(6, 4, generator=g) * scale
        with torch.no_grad():
            assert torch.allclose(masked(xs), small(xs), rtol=0, atol=1e-5 * max(1.0, scale))


def test_softmax_and_its_logarithm_are_separate_kinds():
    # Attention averages need rows that sum to one: log_softmax mixes a row but is no average.
    assert torch.softmax not in ops.LOG_SOFTMAX_FUNCTIONS and torch.log_softmax not in ops.SOFTMAX_FUNCTIONS
    assert "log_softmax" not in ops.SOFTMAX_METHODS and nn.LogSoftmax not in ops.SOFTMAX_MODULES
