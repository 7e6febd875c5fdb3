"""Channel flow: structural death is exact against the masks and sound against forward passes."""
import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.prunable import find_prunable
from collapsekit.analysis.trace import trace
from invariants import check_levels, scramble

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)


def keep_all_but(model, zero: dict):
    """Keep-masks that drop exactly the given (weight name -> index tuple or slice) entries."""
    keep = []
    for w in find_prunable(model):
        k = torch.ones(w.shape, dtype=torch.bool)
        if w.name in zero:
            k[zero[w.name]] = False
        keep.append(k)
    return keep


def test_mlp_with_an_emptied_middle_layer_collapses():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    traced = trace(model, torch.randn(1, 4))
    weights = find_prunable(model)
    result = run_flow(traced, weights, keep_all_but(model, {"2.weight": slice(None)}))
    assert result.collapsed
    assert result.dead_channels["2.weight"] == list(range(6))
    assert result.dead_channels["4.weight"] == [0, 1, 2]
    assert result.unused_channels["0.weight"] == list(range(8))  # nothing downstream reads layer 0
    assert result.effective.tolist() == [0, 0, 0]


def test_one_dead_hidden_unit_is_dead_and_its_readers_ineffective():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    traced = trace(model, torch.randn(1, 4))
    weights = find_prunable(model)
    result = run_flow(traced, weights, keep_all_but(model, {"0.weight": (2,), "2.weight": (slice(None), 4)}))
    assert not result.collapsed
    assert result.dead_channels == {"0.weight": [2]}
    assert result.unused_channels == {"0.weight": [4]}
    # Layer 0 keeps 16 weights, 4 of which feed unit 4 that nobody reads; layer 2
    # keeps 12, of which the 3 reading dead unit 2 are on no input path.
    assert result.effective.tolist() == [12, 9]


class TwoBlockResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + torch.relu(self.b1(x))
        x = x + torch.relu(self.b2(x))
        return self.fc(x.mean((2, 3)))


def test_emptied_conv_inside_a_residual_block_does_not_collapse():
    model = TwoBlockResNet()
    traced = trace(model, torch.randn(1, 3, 8, 8))
    result = run_flow(traced, find_prunable(model), keep_all_but(model, {"b1.weight": slice(None)}))
    assert not result.collapsed
    assert result.dead_channels == {"b1.weight": list(range(8))}
    emptied_stem = run_flow(traced, find_prunable(model), keep_all_but(model, {"stem.weight": slice(None)}))
    assert emptied_stem.collapsed


def test_off_centre_taps_on_a_one_pixel_map_read_only_padding():
    # On a 1x1 map a 3x3 conv with padding 1 reads real data only through its
    # centre tap: keeping only corner taps kills the channel (spatially exact flow).
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Flatten(), nn.Linear(2, 2))
    traced = trace(model, torch.randn(1, 2, 1, 1))
    keep = keep_all_but(model, {"0.weight": (slice(None), slice(None), 1, 1)})
    assert run_flow(traced, find_prunable(model), keep).collapsed


@pytest.mark.parametrize("name,shape,kwargs", [
    ("lenet_300_100", (1, 1, 8, 8), {}),
    ("lenet5", (1, 1, 8, 8), {}),
    ("resnet20", (1, 3, 8, 8), {}),
    ("wrn_16_2", (1, 3, 8, 8), {}),
    ("mobilenet_v1", (1, 3, 16, 16), {"width_mult": 0.25}),
    ("mobilenet_v2", (1, 3, 8, 8), {}),
    ("fastgrnn", (1, 6, 9), {}),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_zoo_flow_is_exact_and_sound(name, shape, kwargs, seed):
    torch.manual_seed(seed)
    sequence = name == "fastgrnn"
    model = ck.models.create(name, num_classes=5, in_channels=shape[2] if sequence else shape[1],
                             input_size=shape[1] if sequence else shape[2], **kwargs)
    if seed:
        scramble(model, seed)
    verdicts = check_levels(model, torch.randn(*shape), SPARSITIES)
    flags = [v.collapsed for v in verdicts]
    assert flags == sorted(flags)  # nested masks: once collapsed, always collapsed
    assert flags[-1] is True  # 99.9 % leaves no path in any of them


@pytest.mark.parametrize("name,shape,kwargs", [
    ("resnet20", (1, 3, 8, 8), {}),
    ("mobilenet_v1", (1, 3, 8, 8), {"width_mult": 0.25}),
    ("mobilenet_v2", (1, 3, 8, 8), {}),
])
def test_channel_level_flow_is_sound(name, shape, kwargs):
    torch.manual_seed(0)
    model = scramble(ck.models.create(name, num_classes=5, in_channels=3, input_size=shape[2], **kwargs), 2)
    check_levels(model, torch.randn(*shape), SPARSITIES, channel_level=True)


class PaddedOddMaps(nn.Module):
    """Stride-2 convs on odd maps, an explicit zero pad and an identity shortcut: live sets that shrink."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.b1 = nn.Conv2d(6, 6, 3, padding=1)
        self.down = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.b2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + torch.relu(self.b1(x))
        x = torch.relu(self.down(nn.functional.pad(x, (1, 0, 1, 0))))
        x = torch.relu(self.b2(x))
        return self.fc(x.amax((2, 3)))


UNDER_APPROXIMATED = [  # (name, input shape, whether full taps alone prove it alive somewhere)
    ("resnet20", (1, 3, 8, 8), True), ("wrn_16_2", (1, 3, 8, 8), True), ("mobilenet_v2", (1, 3, 8, 8), True),
    ("mobilenet_v1", (1, 3, 9, 9), True), ("two_block_1x1", (1, 3, 1, 1), True),
    ("padded_odd_maps", (1, 3, 9, 9), False),  # the zero pad leaves no channel live everywhere
]


def _model(name, shape):
    if name == "padded_odd_maps":
        return PaddedOddMaps()
    if name == "two_block_1x1":
        return TwoBlockResNet()
    kwargs = {"width_mult": 0.25} if name == "mobilenet_v1" else {}
    return ck.models.create(name, num_classes=5, in_channels=3, input_size=shape[2], **kwargs)


@pytest.mark.parametrize("name,shape,proves", UNDER_APPROXIMATED)
def test_full_taps_flow_under_approximates_the_element_level(name, shape, proves):
    """Channels the full-taps channel flow finds live are live per element, so its "alive" proves the
    element level alive; where a model allows it, it does so at some level (all prune at least 30 %)."""
    from collapsekit.analysis.analysis import Analysis

    torch.manual_seed(0)
    model = scramble(_model(name, shape), 6)
    an = Analysis(model, torch.randn(*shape), exact=False)
    proven, total = 0, an.index.max_count()
    for k in sorted({int(total * s) for s in torch.linspace(0.3, 0.999, 24).tolist()}):
        element = run_flow(an.traced, an.weights, an.level(k), backward=False)
        under = run_flow(an.traced, an.weights, an.level(k).full_taps_only(), backward=False, channel_level=True)
        for layer, dead in element.dead_channels.items():
            assert set(dead) <= set(under.dead_channels.get(layer, [])), (k, layer)
        assert under.output_alive <= element.output_alive
        if not under.collapsed:
            assert not element.collapsed, k
            proven += 1
    assert (proven > 0) == proves


@pytest.mark.parametrize("name,shape,proves", UNDER_APPROXIMATED)
def test_channel_level_collapse_sparsity_is_the_element_level_one(name, shape, proves):
    torch.manual_seed(1)
    model = scramble(_model(name, shape), 7)
    x = torch.randn(*shape)
    exact = ck.analyze(model, x, sparsities=[0.5, 0.9], exact=True)
    coarse = ck.analyze(model, x, sparsities=[0.5, 0.9], exact=False)
    assert exact.collapse_sparsity == coarse.collapse_sparsity < 1.0


def test_a_residual_net_analysed_per_channel_proves_its_boundary_without_an_element_flow(monkeypatch):
    """The element-level check one weight below the channel-level boundary (a full conv pass per
    weight position) is answered by the full-taps flow on a residual net."""
    import collapsekit.analysis.analysis as analysis_mod
    import collapsekit.analysis.flow as flow_mod

    calls = []

    def counted(*args, channel_level=False, **kwargs):
        calls.append(channel_level)
        return run_flow(*args, channel_level=channel_level, **kwargs)

    monkeypatch.setattr(analysis_mod, "run_flow", counted)
    monkeypatch.setattr(flow_mod, "run_flow", counted)  # the collapse questions (flow.collapses)
    torch.manual_seed(1)
    model = scramble(_model("wrn_16_2", (1, 3, 8, 8)), 7)
    an = analysis_mod.Analysis(model, torch.randn(1, 3, 8, 8), exact=False)
    exact = analysis_mod.Analysis(model, torch.randn(1, 3, 8, 8), exact=True).collapse_sparsity()
    calls.clear()
    assert an.collapse_sparsity() == exact < 1.0
    assert calls and not any(c is False for c in calls)


def test_channel_and_element_level_reports_agree_on_collapse_sparsity():
    torch.manual_seed(0)
    model = scramble(ck.models.create("mobilenet_v1", num_classes=5, in_channels=3, input_size=8,
                                      width_mult=0.25), 4)
    x = torch.randn(1, 3, 8, 8)
    exact = ck.analyze(model, x, sparsities=[0.5, 0.9, 0.99], exact=True)
    coarse = ck.analyze(model, x, sparsities=[0.5, 0.9, 0.99], exact=False)
    assert exact.collapse_sparsity == coarse.collapse_sparsity
    assert [lv.collapsed for lv in exact.levels] == [lv.collapsed for lv in coarse.levels]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet32", "resnet56", "wrn_16_4", "mobilenet_v1", "wrn_28_8", "wrn_28_10"])
def test_larger_zoo_flow_is_exact_and_sound(name):
    torch.manual_seed(0)
    model = scramble(ck.models.create(name, num_classes=10, in_channels=3, input_size=8), 3)
    levels = SPARSITIES if model.training and sum(p.numel() for p in model.parameters()) < 5e6 else (0.5, 0.99, 0.999)
    check_levels(model, torch.randn(1, 3, 8, 8), levels)


class Mixer(nn.Module):
    """Concat, channel shuffle, gating multiply, attention and an op with no rule (cumsum)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.shuffle = nn.ChannelShuffle(2)
        self.gate = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.shuffle(torch.cat([self.a(x), self.b(x)], 1))
        y = y * torch.sigmoid(self.gate(y.mean((2, 3))))[:, :, None, None]
        seq = y.flatten(2).transpose(1, 2)
        seq, _ = self.attn(seq, seq, seq)
        seq = torch.cumsum(seq, dim=1)
        return self.fc(seq.mean(1))


def test_mixer_ops_and_conservative_fallback_stay_sound():
    torch.manual_seed(0)
    model = scramble(Mixer(), 5)
    verdicts = check_soundness_only(model, torch.randn(1, 3, 4, 4), SPARSITIES)
    assert verdicts[-1].collapsed


def check_soundness_only(model, example, sparsities):
    # Attention mixes by value, so the positive-copy (exactness) check does not
    # apply; predicted death must still be real.
    from collapsekit.validation import probe
    from collapsekit.analysis.magnitudes import sparsity_to_count
    from collapsekit.analysis.analysis import Analysis

    an = Analysis(model, example)
    out = []
    for s in sparsities:
        keep, _, _ = an.keep_masks(sparsity_to_count(s, an.index.total))
        flow = run_flow(an.traced, an.weights, keep)
        real = probe.masked_copy(model, {w.name: k for w, k in zip(an.weights, keep)})
        if flow.collapsed:
            assert probe.output_is_constant(real, an.traced.example_inputs)
        out.append(flow)
    return out


def test_unseen_architectures_stay_sound():
    # Idioms the zoo does not use: in-place ReLU and +=, view(size(0), -1), functional
    # pooling, a GRU and a transformer layer that the tracer keeps opaque.
    class TorchvisionStyle(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.relu = nn.ReLU(inplace=True)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.relu(self.bn(self.c1(x)))
            out = self.c2(x)
            out += x
            out = torch.nn.functional.adaptive_avg_pool2d(self.relu(out), (1, 1))
            return self.fc(out.view(out.size(0), -1))

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(6, 12, batch_first=True)
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.fc(out[:, -1])

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 16, 4, 4)
            self.enc = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            return self.head(self.enc(self.embed(x).flatten(2).transpose(1, 2)).mean(1))

    torch.manual_seed(0)
    cases = [(TorchvisionStyle(), (1, 3, 8, 8)), (Recurrent(), (1, 7, 6)), (Encoder(), (1, 3, 16, 16))]
    for model, shape in cases:
        verdicts = check_soundness_only(model, torch.randn(*shape), (0.5, 0.9, 0.99, 0.999))
        assert verdicts[-1].collapsed, type(model).__name__
        assert all(v.effective is not None for v in verdicts)


class SharedLinear(nn.Module):
    """One nn.Linear applied twice: the traced graph shares it with the model."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.fc(x)))))


@pytest.mark.parametrize("name", ["resnet20", "shared_linear"])
def test_flow_and_sign_analysis_leave_the_model_untouched(name):
    from collapsekit.analysis.analysis import Analysis
    from collapsekit.analysis.magnitudes import sparsity_to_count
    from collapsekit.analysis.values import relu_cuts
    from invariants import assert_unchanged, snapshot

    torch.manual_seed(0)
    if name == "resnet20":
        model, x = ck.models.create("resnet20", num_classes=10, input_size=8), torch.randn(1, 3, 8, 8)
    else:
        model, x = SharedLinear(), torch.randn(1, 6)
    model.train()  # the flow reads batch norms as in eval mode; the flag must survive
    snap = snapshot(model)
    an = Analysis(model, x)
    k = sparsity_to_count(0.9, an.index.total)
    keep, _, _ = an.keep_masks(k)
    element = run_flow(an.traced, an.weights, keep)
    channel = run_flow(an.traced, an.weights, an.level(k), channel_level=True)
    cuts = relu_cuts(an.traced, an.weights, keep)
    value = run_flow(an.traced, an.weights, keep, backward=False, cuts=cuts)
    assert cuts is not None and element.effective is not None and channel.effective is not None
    assert value.output_alive <= element.output_alive
    assert_unchanged(model, snap)


def test_a_rule_that_cannot_read_a_node_falls_back_conservatively(monkeypatch):
    # The flow never crashes on a graph that traced: a raising rule becomes the conservative
    # rule (every output element depends on every input element), counted in the report.
    from collapsekit.analysis.flow import RULES
    from collapsekit.analysis.rules import Rule

    def broken(flow, *args, **kwargs):
        raise RuntimeError("this rule cannot read the node")

    monkeypatch.setitem(RULES.functions, torch.cumsum, Rule(broken))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net[2](torch.cumsum(self.net[1](self.net[0](x)), dim=-1))

    an = ck.Analysis(Cumulative(), torch.randn(1, 4))
    keep = [torch.ones(w.shape, dtype=torch.bool) for w in an.weights]
    keep[0][:3] = False  # hidden units 0-2 dead: cumsum would keep unit 0 dead, the fallback cannot
    flow = run_flow(an.traced, an.weights, keep)
    assert flow.conservative_ops == {"cumsum": 1}
    assert not flow.collapsed and flow.dead_channels == {"net.0.weight": [0, 1, 2]}
    assert an.report([0.5]).conservative_ops == {"cumsum": 1}


def test_sizes_and_shape_assertions_are_evaluated_concretely():
    class Asserting(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            b, c, h, w = x.shape
            torch._assert(h == 8, "height")
            y = self.conv(x).view(b, 4, h * w)  # view on sizes computed from the input
            return self.fc(y.mean(-1))

    an = ck.Analysis(Asserting(), torch.randn(1, 3, 8, 8))
    assert an.traced.method == "symbolic_trace"
    assert an.conservative_ops() == {}
    check_levels(Asserting(), torch.randn(1, 3, 8, 8), (0.5, 0.9), boundary=True)


def test_lazy_linear_masks_give_the_same_verdicts_as_full_masks():
    """Linear layers answered from row/column maxima (no mask read where liveness is uniform) give
    exactly the flow of the full keep-masks: collapse, dead and unused channels, effective counts."""
    pytest.importorskip("transformers")
    from corpus import build

    from collapsekit.analysis.analysis import Analysis
    from collapsekit.analysis.magnitudes import sparsity_to_count

    for name in ("hf_llama", "hf_gpt2", "hf_bert", "hf_t5"):
        torch.manual_seed(0)
        model, example = build(name)
        an = Analysis(model, example)
        for s in (0.0, 0.5, 0.9, 0.97, 0.99, 0.999):
            level = an.level(sparsity_to_count(s, an.total))
            lazy = run_flow(an.traced, an.weights, level)
            full = run_flow(an.traced, an.weights, level.keep_list())
            assert (lazy.collapsed, lazy.dead_channels, lazy.unused_channels, lazy.output_alive) == (
                full.collapsed, full.dead_channels, full.unused_channels, full.output_alive), (name, s)
            assert lazy.effective.tolist() == full.effective.tolist(), (name, s)


def test_transposed_weights_applied_by_matmul_give_the_float_leaf_verdicts(monkeypatch):
    """A prunable [in, out] weight applied as x @ w (GPT-2's Conv1D, exported as addmm) runs as a linear
    layer on its transposed mask; collapse, dead and unused channels and effective counts equal those of
    the float-leaf path, whose gradient records reached positions."""
    pytest.importorskip("transformers")
    from corpus import build

    from collapsekit.analysis import flow as flow_mod
    from collapsekit.analysis.analysis import Analysis
    from collapsekit.analysis.flow_values import PrunableConstant
    from collapsekit.analysis.magnitudes import sparsity_to_count

    torch.manual_seed(0)
    model, example = build("hf_gpt2")
    an = Analysis(model, example)
    routed = []
    original = flow_mod.ChannelFlow.layer

    def counting(self, name, *args, transposed=False, **kwargs):
        if transposed:
            routed.append(name)
        return original(self, name, *args, transposed=transposed, **kwargs)

    monkeypatch.setattr(flow_mod.ChannelFlow, "layer", counting)
    verdicts = {}
    for s in (0.0, 0.5, 0.9, 0.97, 0.99, 0.999):
        level = an.level(sparsity_to_count(s, an.total))
        verdicts[s] = (run_flow(an.traced, an.weights, level), run_flow(an.traced, an.weights, level.keep_list()))
    assert routed and {w.name for w in an.weights if w.name.endswith("c_attn.weight")} <= set(routed)
    matmul = flow_mod.ChannelFlow.matmul

    def float_leaf(self, a, b):
        if isinstance(b, PrunableConstant):
            b.mask  # materialised first: the generic path
        return matmul(self, a, b)

    monkeypatch.setattr(flow_mod.ChannelFlow, "matmul", float_leaf)
    for s, got in verdicts.items():
        want = run_flow(an.traced, an.weights, an.level(sparsity_to_count(s, an.total)))
        for flow in got:
            assert (flow.collapsed, flow.dead_channels, flow.unused_channels, flow.output_alive) == (
                want.collapsed, want.dead_channels, want.unused_channels, want.output_alive), s
            assert flow.effective.tolist() == want.effective.tolist(), s


class FunctionalPatchConv(nn.Module):
    """A patch embedding written as F.conv2d on its own weight (as exported graphs apply every conv), on the
    graph's input, then a per-patch MLP: the conv's mask gradient alone says which kernel taps are used."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 4, 4))
        self.head = nn.Linear(8 * 4, 5)

    def forward(self, x):
        y = torch.nn.functional.conv2d(x, self.weight, stride=4)
        return self.head(torch.relu(y).flatten(1))


def test_a_functional_conv_on_a_prunable_weight_runs_as_a_layer_without_its_inputs_gradient(monkeypatch):
    """F.conv2d on a prunable weight runs on the keep-mask as linear does (ChannelFlow.layer): the same
    verdicts, dead and unused channels and effective counts as the float-leaf path, and no gradient of the
    graph's input is computed (a patch embedding spent most of its backward on it)."""
    from collapsekit.analysis import flow_rules
    from collapsekit.analysis.analysis import Analysis
    from collapsekit.analysis.flow_layers import LayerOnKeep
    from collapsekit.analysis.flow_values import support
    from collapsekit.analysis.magnitudes import sparsity_to_count

    torch.manual_seed(0)
    model = FunctionalPatchConv()
    an = Analysis(model, torch.randn(1, 3, 8, 8), exact=True)
    applied, input_grads = [], []
    real_apply, real_grad = LayerOnKeep.apply, torch.autograd.grad

    def apply(x, keep, op, record, lines=None):
        applied.append(tuple(keep.shape))
        return real_apply(x, keep, op, record, lines)

    def grad(outputs, inputs, *a, **k):
        input_grads.extend(tuple(t.shape) for t in inputs)
        return real_grad(outputs, inputs, *a, **k)

    monkeypatch.setattr(LayerOnKeep, "apply", apply)
    monkeypatch.setattr(torch.autograd, "grad", grad)
    levels = [an.level(sparsity_to_count(s, an.total)) for s in (0.0, 0.5, 0.8, 0.9, 0.95)]
    got = [run_flow(an.traced, an.weights, level) for level in levels]
    assert (8, 3, 4, 4) in applied
    assert (8, 3, 4, 4) in input_grads and (1, 3, 8, 8) not in input_grads  # the mask's gradient, not the input's
    monkeypatch.setattr(flow_rules, "_weighted", lambda flow, x, weight, op: op(x, support(weight)))
    want = [run_flow(an.traced, an.weights, level) for level in levels]
    for g, w in zip(got, want):
        assert (g.collapsed, g.dead_channels, g.unused_channels) == (w.collapsed, w.dead_channels, w.unused_channels)
        assert g.effective.tolist() == w.effective.tolist() and g.output_alive == w.output_alive
    assert any(g.dead_channels or g.unused_channels for g in got)  # the levels tell something apart
