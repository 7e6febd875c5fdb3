"""trace: fx first, torch.export for shape-dependent control flow, one clear error when both fail."""

import pytest
import torch
import torch.nn as nn
from torch.fx.passes.shape_prop import TensorMetadata

import collapsekit as ck
from collapsekit.analysis.trace import trace
from fresh import fresh_python


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


def test_export_records_no_stack_traces_and_leaves_the_users_fx_setting_as_it_was():
    for setting in (False, True):
        torch.fx.config.do_not_emit_stack_traces = setting
        try:
            traced = trace(ShapeBranch(), torch.randn(1, 3, 8, 8))
            assert torch.fx.config.do_not_emit_stack_traces is setting
        finally:
            torch.fx.config.do_not_emit_stack_traces = False
        assert traced.method == "export"
        assert not [n for n in traced.gm.graph.nodes if n.stack_trace]  # none extracted: a fifth of the export


def test_untraceable_model_names_the_module_and_both_failures():
    with pytest.raises(ck.CollapsekitError) as err:
        trace(ValueBranch(), torch.randn(1, 3))
    message = str(err.value)
    assert "\n" not in message
    assert "torch.fx failed" in message and "in ValueBranch.forward" in message
    assert "torch.export failed" in message


class KeywordNet(nn.Module):
    """A forward with keyword inputs, an optional mask and a flag, as Hugging Face models have."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 3)
        self.dec = nn.Linear(2, 3)

    def forward(self, x, mask=None, flag=False, y=None):
        out = self.enc(x)
        if mask is not None:
            out = out * mask
        if flag:
            out = -out
        return out + self.dec(y)


def test_keyword_inputs_trace_with_fx_and_only_the_given_tensors_are_inputs():
    traced = trace(KeywordNet(), {"x": torch.randn(3, 4), "y": torch.randn(3, 2)})
    assert traced.method == "symbolic_trace"
    placeholders = [n.target for n in traced.gm.graph.nodes if n.op == "placeholder"]
    assert placeholders == ["x", "y"]  # mask and flag were fixed at their defaults, guards removed
    assert traced.input_shapes == ((1, 4), (1, 2))
    assert set(traced.call_kwargs) == {"x", "y"} and traced.call_args == ()


def test_keyword_inputs_fall_back_to_export_in_keyword_order():
    class Branchy(KeywordNet):
        def forward(self, x, y=None):
            out = self.enc(x)
            if x.shape[0] > 0:  # shape control flow: fx fails, export specialises
                out = out + self.dec(y)
            return out

    traced = trace(Branchy(), {"y": torch.randn(1, 2), "x": torch.randn(1, 4)})
    assert traced.method == "export"
    shapes = {n.target: tuple(n.meta["tensor_meta"].shape) for n in traced.gm.graph.nodes if n.op == "placeholder"}
    inputs = dict(zip([n.target for n in traced.gm.graph.nodes if n.op == "placeholder"], traced.example_inputs))
    assert {k: tuple(v.shape) for k, v in inputs.items()} == shapes == {"x": (1, 4), "y": (1, 2)}


def test_plain_values_are_recorded_for_concrete_evaluation():
    class Sized(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            b, c = x.shape
            torch._assert(c == 6, "width")
            return self.fc(x.view(b, c))

    traced = trace(Sized(), torch.randn(1, 6))
    values = {n.name: n.meta.get("value") for n in traced.gm.graph.nodes if n.op == "call_function"}
    assert values["eq"] is True and values["getitem_1"] == 6


def test_bad_example_inputs_are_one_line_errors():
    for bad in ({"x": 3}, {}, [1, 2], "pixels"):
        with pytest.raises(ck.CollapsekitError) as err:
            trace(KeywordNet(), bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ck.CollapsekitError, match="does not accept"):
        trace(KeywordNet(), {"x": torch.randn(1, 5), "y": torch.randn(1, 2)})


def test_untraceable_model_names_the_op_source_line():
    with pytest.raises(ck.CollapsekitError) as err:
        trace(ValueBranch(), torch.randn(1, 3))
    assert "`if x.sum() > 0:`" in str(err.value)


def test_cli_untraceable_model_exits_2_with_one_line(capsys):
    from collapsekit.cli import main

    code = main(["report", "--model", "test_trace:ValueBranch", "--input-shape", "1", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cannot trace ValueBranch" in err and "ValueBranch.forward" in err


@pytest.mark.parametrize("cls,config_cls,kwargs", [
    ("GPT2LMHeadModel", "GPT2Config", dict(n_layer=2, n_embd=32, n_head=4, vocab_size=61, n_positions=16)),
    ("LlamaForCausalLM", "LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=61)),
])
def test_a_decoder_that_returns_its_cache_by_default_is_traced_without_it(cls, config_cls, kwargs):
    """A default Hugging Face config returns a key/value cache object that no tracer can return: traced with
    use_cache=False (positional inputs passed by name) unless the caller chose, the report equals the
    use_cache=False model's, and the model's config is left as it was."""
    transformers = pytest.importorskip("transformers")
    import collapsekit as ck

    def build(**extra):
        torch.manual_seed(0)
        return getattr(transformers, cls)(getattr(transformers, config_cls)(**kwargs, **extra)).eval()

    ids = torch.randint(0, 61, (1, 6), generator=torch.Generator().manual_seed(1))
    model = build()
    assert model.config.use_cache is True
    want = ck.analyze(build(use_cache=False), {"input_ids": ids}, sparsities=[0.5, 0.95])
    for example in (ids, (ids,), {"input_ids": ids}):
        got = ck.analyze(model, example, sparsities=[0.5, 0.95])
        assert got.collapse_sparsity == want.collapse_sparsity
        assert [lv.dead_channels for lv in got.levels] == [lv.dead_channels for lv in want.levels]
    assert model.config.use_cache is True
    with pytest.raises(ck.CollapsekitError, match="cannot trace"):  # the caller's own choice is kept
        ck.analyze(model, {"input_ids": ids, "use_cache": True}, sparsities=[0.5])


class Counter(nn.Module):
    """A forward that updates a buffer in place, as caches and step counters do."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(x.new_ones(()))  # traced as a graph op: only the real forward runs it
        return self.lin(x) + self.calls


def test_shapes_come_from_one_forward_that_leaves_the_model_as_it_was():
    model = Counter()
    traced = trace(model, torch.randn(2, 4))
    assert float(model.calls) == 0.0  # the forward ran on a copy of the buffer
    out = [n for n in traced.gm.graph.nodes if n.op == "output"][0].args[0]
    assert tuple(out.meta["tensor_meta"].shape) == (1, 3)
    assert out.meta["tensor_meta"].memory_format is torch.contiguous_format


def test_tracing_imports_no_symbolic_shape_machinery():
    code = ("import sys, torch, collapsekit as ck\nfrom collapsekit.analysis.trace import trace\n"
            "m = ck.models.create('resnet20', num_classes=10, in_channels=3, input_size=16)\n"
            "t = trace(m, torch.randn(1, 3, 16, 16))\n"
            "print(len([n for n in t.gm.graph.nodes if 'tensor_meta' in n.meta]) > 50, "
            "sorted(m for m in ('sympy', 'torch._dynamo') if m in sys.modules))")
    assert fresh_python(code) == "True []"


def test_meta_and_real_forwards_record_the_same_shapes_and_values(monkeypatch):
    """Shapes come from meta tensors once torch's symbolic-shape modules are loaded (no import to pay),
    from a real forward otherwise: both record the same metadata and plain values."""
    from collapsekit.analysis import trace as trace_module

    model = ck.models.create("mobilenet_v2", num_classes=10, in_channels=3, input_size=16)
    found = {}
    for loaded in (False, True):
        monkeypatch.setattr(trace_module, "_symbolic_machinery_loaded", lambda loaded=loaded: loaded)
        traced = trace(model, torch.randn(1, 3, 16, 16))
        found[loaded] = [(n.name, n.meta.get("tensor_meta"), n.meta.get("value")) for n in traced.gm.graph.nodes]
    assert found[True] == found[False] and len(found[True]) > 100


def _shape_records(traced) -> list:
    """(name, shape, dtype, plain value) per node: what the flows read (strides of size-1 dims are free)."""
    def shapes(meta):
        if isinstance(meta, TensorMetadata):
            return tuple(meta.shape), meta.dtype
        return type(meta)(shapes(m) for m in meta) if isinstance(meta, (tuple, list)) else meta
    return [(n.name, shapes(n.meta.get("tensor_meta")), n.meta.get("value")) for n in traced.gm.graph.nodes]


def test_an_exported_graph_takes_its_shapes_from_export_without_running_it_again(monkeypatch):
    from collapsekit.analysis import trace as trace_module

    model = ShapeBranch()
    runs = []
    real_propagate = trace_module._propagate_shapes
    monkeypatch.setattr(trace_module, "_propagate_shapes", lambda *a: runs.append(1) or real_propagate(*a))
    traced = trace(model, torch.randn(1, 3, 8, 8))
    assert traced.method == "export" and runs == []
    monkeypatch.setattr(trace_module, "_shapes_from_export", lambda gm: False)  # the graph run instead
    again = trace(model, torch.randn(1, 3, 8, 8))
    assert runs == [1]
    assert _shape_records(traced) == _shape_records(again)
    assert _shape_records(traced)[-1][1] == (((1, 4), torch.float32),)  # the output node's too


def test_a_data_dependent_size_in_an_export_is_recorded_by_running_the_graph():
    from collapsekit.analysis.trace import _shapes_from_export

    class Nonzero(nn.Module):
        def forward(self, x):
            return x[x > 0].sum() + x.mean()

    gm = torch.export.export(Nonzero(), (torch.randn(4),), strict=False).module()
    assert _shapes_from_export(gm) is False
    assert not any("type" in n.meta or "value" in n.meta for n in gm.graph.nodes)  # nothing half-recorded


def test_an_export_generates_less_code_and_real_forwards_run_only_on_failure(monkeypatch):
    import contextlib

    import torch.fx.graph as fx_graph

    from collapsekit.analysis import trace as trace_module

    codegen, forwards = [], []
    real_code = fx_graph.Graph.python_code
    monkeypatch.setattr(fx_graph.Graph, "python_code", lambda self, *a, **k: codegen.append(1) or
                        real_code(self, *a, **k))
    model = ShapeBranch()
    real_input = lambda t: not isinstance(t, torch._subclasses.fake_tensor.FakeTensor)  # noqa: E731
    model.register_forward_pre_hook(lambda m, args: forwards.append(1) if real_input(args[0]) else None)
    x = torch.randn(1, 3, 8, 8)
    traced = trace(model, x)
    lazy = len(codegen)
    assert traced.method == "export"
    assert forwards == []  # no real forward beside the export's own (_check_accepts runs when it fails)
    assert torch.allclose(traced.gm(*traced.example_inputs), model(x))  # the module returned runs
    assert not torch.fx._lazy_graph_module._use_lazy_graph_module_flag  # the switch is left as it was
    monkeypatch.setattr(trace_module, "_lazy_code", contextlib.nullcontext)
    codegen.clear()
    trace(model, x)
    assert lazy < len(codegen)  # export's intermediate graph modules generated code (torch 2.13: 6 vs 11)
