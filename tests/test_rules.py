"""rules.py: every interpreter built on RuleInterpreter answers what it cannot handle conservatively, lists it,
and never raises (Invariant 10); constants enter as abstract values."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import collapsekit as ck
from collapsekit.analysis.analysis import Analysis
from collapsekit.analysis.averages import constant_values
from collapsekit.analysis.intervals import interval_bounds, interval_cuts
from collapsekit.analysis.rules import UNHANDLED, Abstract, RuleInterpreter, RuleTable
from collapsekit.analysis.trace import trace
from collapsekit.analysis.values import relu_cuts
from collapsekit.validation import probe


class BufferMLP(nn.Module):
    """Swin V2's continuous position bias: an MLP applied to a registered float buffer, added to the logits.

    The buffer's first dim is 2 in one variant: read as a (positive, negative) sign pair it used to be
    silently misread; any other size made the sign pass raise on unpacking it."""

    def __init__(self, rows: int = 7):
        super().__init__()
        self.register_buffer("table", torch.randn(rows, 5, 2))
        self.cpb = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
        self.fc = nn.Linear(6, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        bias = self.cpb(self.table).flatten(0, 1).mean(0)
        return self.out(torch.relu(self.fc(x))) + bias


@pytest.mark.parametrize("rows", [2, 7])
def test_a_linear_applied_to_a_buffer_is_interpreted_not_raised(rows):
    torch.manual_seed(0)
    model = BufferMLP(rows).eval()
    an = Analysis(model, torch.randn(1, 6))
    keep = an.level(an.count(0.5)).keep_list()
    assert relu_cuts(an.traced, an.weights, keep) is not None
    box, _ = interval_bounds(an.traced, an.weights, keep)
    assert an.traced.gm.meta[UNHANDLED]["signs"] == {} and an.traced.gm.meta[UNHANDLED]["intervals"] == {}
    # The box holds the masked model's output for any input: the buffer's path entered at its real values.
    masked = probe.masked_copy(model, an.masks(0.5))
    with torch.no_grad():
        out = masked(torch.randn(64, 6) * 10).double()
    tol = 1e-5 * out.abs().clamp(min=1)  # the model runs in float32, the box in float64
    assert bool((out >= box[0] - tol).all() and (out <= box[1] + tol).all())


class _Pass(RuleInterpreter):
    """A toy pass: values are (x, x) pairs, with one rule that works and one that raises."""

    RULES = RuleTable()
    PASS = "toy"

    def input(self, real):
        return (real, real)

    def constant(self, value, target):
        return (value, value)

    def unknown(self):
        shape = self._node.meta["tensor_meta"].shape
        return (torch.full(shape, -1.0), torch.full(shape, 1.0))


@_Pass.RULES.module(nn.ReLU)
def _relu(ip, module, x):
    return tuple(t.relu() for t in x)


@_Pass.RULES.module(nn.Linear)
def _broken(ip, module, x):
    raise ValueError("a rule that cannot read this node")


def test_the_base_answers_unknown_ops_and_failing_rules_with_the_top_element_and_lists_them():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Tanh())
    traced = trace(model, torch.randn(1, 3))
    ip = _Pass(traced.gm)
    out = ip.run(*traced.example_inputs)
    assert isinstance(out, Abstract) and torch.equal(out[0], torch.full((1, 3), -1.0))  # Tanh: no rule
    assert traced.gm.meta[UNHANDLED]["toy"] == {"Linear": 1, "Tanh": 1}  # ReLU ran its rule


class Odd(nn.Module):
    """One odd op (or idiom) between two linear layers and ReLUs: the fuzz corpus."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)
        self.w = nn.Parameter(torch.randn(8, 8) * 0.3)
        self.register_buffer("mask", torch.rand(1, 8) > 0.5)
        self.register_buffer("index", torch.randperm(8))
        self.register_buffer("scale", torch.rand(8) + 0.5)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(torch.relu(self.op(self, h)))


ODD_OPS = {
    "chunk_attention": lambda m, h: torch.cat([(h[:, :4].transpose(0, 1) @ h[:, 4:]).softmax(-1).sum(0) * h[:, 4:],
                                               h[:, :4]], -1),
    "where": lambda m, h: torch.where(h > 0.1, h, -h),
    "masked_fill": lambda m, h: h.masked_fill(m.mask, -1.0),
    "gather_buffer_index": lambda m, h: h[:, m.index] - h.index_select(1, m.index.flip(0)),
    "sort_topk": lambda m, h: h.sort(-1).values - h.topk(8, -1)[0],
    "cumsum_roll": lambda m, h: h.cumsum(-1).roll(1, -1) - h.flip(-1),
    "arange_in_forward": lambda m, h: h - torch.arange(8, dtype=h.dtype) * 0.1,
    "meshgrid_in_forward": lambda m, h: h - torch.stack(torch.meshgrid(torch.arange(2), torch.arange(2),
                                                                      indexing="ij")).flatten().to(h.dtype),
    "parameter_matmul": lambda m, h: h @ m.w.t() - 0.2,
    "einsum": lambda m, h: torch.einsum("bi,ij->bj", h, m.w),
    "buffer_mul": lambda m, h: h * m.scale - m.scale,
    "layer_norm": lambda m, h: F.layer_norm(h, (8,)) - 0.5,
    "max_named_tuple": lambda m, h: h - h.max(-1, keepdim=True).values,
    "stack_split": lambda m, h: torch.cat(torch.stack(h.split(4, -1), 0).unbind(0), -1),
    "view_by_size": lambda m, h: h.view(h.shape[0], 2, h.shape[-1] // 2).transpose(1, 2).reshape(h.shape[0], -1),
    "in_place": lambda m, h: h.clone().add_(-0.3).mul_(2.0),
    "pad_interpolate": lambda m, h: F.interpolate(F.pad(h[:, None], (1, 1)), size=8).squeeze(1),
}


@pytest.mark.parametrize("name", sorted(ODD_OPS))
def test_no_interpreter_raises_on_odd_ops_and_value_verdicts_stay_sound(name):
    torch.manual_seed(0)
    model = Odd(ODD_OPS[name]).eval()
    x = torch.randn(1, 8)
    an = Analysis(model, x)
    for s in (0.3, 0.7, 0.9):
        keep = an.level(an.count(s)).keep_list()
        relu_cuts(an.traced, an.weights, keep)  # none may raise: None (nothing claimed) at worst
        interval_cuts(an.traced, an.weights, keep)
        constant_values(an.traced, an.weights, an.level(an.count(s)), {n.name for n in an.traced.gm.graph.nodes})
    report = an.report([0.3, 0.7, 0.9])
    assert set(report.unhandled_ops) >= {"flow", "signs", "intervals"}
    assert all(isinstance(n, int) and n > 0 for ops in report.unhandled_ops.values() for n in ops.values())
    for level in report.levels:
        if level.value_collapsed:  # sound: the masked model is constant over random inputs at several scales
            masked = probe.masked_copy(model, an.masks(level.sparsity))
            with torch.no_grad():
                outs = torch.cat([masked(torch.randn(16, 8) * scale) for scale in (0.1, 1.0, 10.0)])
            assert not probe.varying(outs, outs[:1].expand_as(outs), rtol=1e-5, atol=1e-6).any(), level.sparsity


def test_the_text_report_names_the_passes_that_fell_back():
    torch.manual_seed(0)
    report = ck.analyze(Odd(ODD_OPS["sort_topk"]).eval(), torch.randn(1, 8), sparsities=[0.5])
    from collapsekit.views.render import report_to_text

    assert report.unhandled_ops["signs"] and "value-level passes answered" in report_to_text(report)
