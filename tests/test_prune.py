"""collapsekit.pruning.prune: exact Global MP in place (Invariant 1), MT (Invariant 2), validation, suggest_mt, CLI."""
import json
import math

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.validation import probe
from collapsekit.errors import CollapsekitError
from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.magnitudes import resolve_mt
from collapsekit.analysis.prunable import find_prunable, tensors
from collapsekit.analysis.cost import count_macs
from collapsekit.pruning.prune import apply_masks, check_masks
from collapsekit.analysis.trace import trace


class TiedNet(nn.Module):
    """An MLP of small integer weights (many ties, many exact zeros) with one Linear used twice."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Linear(30, 40)
        self.shared = nn.Linear(40, 40)
        self.b = nn.Linear(40, 20)
        self.c = nn.Linear(20, 5)
        self.alias = self.shared  # the same tensor under a second name: counts once
        with torch.no_grad():
            for lin in (self.a, self.shared, self.b, self.c):
                lin.weight.copy_(torch.randint(-3, 4, lin.weight.shape, generator=g).float())

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.relu(self.alias(torch.relu(self.shared(h))))
        return self.c(torch.relu(self.b(h)))


def brute_force_keep(params, k, mt=0):
    """Keep-masks by sorting (|w|, layer, flat index) explicitly, MT protecting each layer's top."""
    order = []
    for li, t in enumerate(params):
        layer = sorted((v, li, j) for j, v in enumerate(t.detach().abs().flatten().tolist()))
        order += layer[:len(layer) - min(mt, len(layer))]
    order.sort()
    keep = [torch.ones(t.numel(), dtype=torch.bool) for t in params]
    for _, li, j in order[:k]:
        keep[li][j] = False
    return [kp.view(t.shape) for kp, t in zip(keep, params)]


def bits(t):
    return t.detach().contiguous().view(torch.int32) if t.dtype == torch.float32 else t


def state_bits(model):
    return {k: bits(v).clone() for k, v in model.state_dict().items()}


def assert_same_state(before, model):
    after = state_bits(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


SPARSITIES = [0.5, 0.7, 0.9, 0.95, 0.99, 0.999]


@pytest.mark.parametrize("mt", [0, 2])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_exact_count_and_masks_match_brute_force(sparsity, mt):
    model = TiedNet()
    weights = find_prunable(model)
    assert [w.name for w in weights] == ["a.weight", "shared.weight", "b.weight", "c.weight"]
    params = [t.detach().clone() for t in tensors(model, weights)]
    total = sum(t.numel() for t in params)
    assert total == 1200 + 1600 + 800 + 100
    k = round(sparsity * total)
    if k > total - mt * len(params):  # MT=2 leaves 3692 prunable: 0.999 (k=3696) does not fit
        before = state_bits(model)
        with pytest.raises(CollapsekitError, match="lower the MT or the sparsity"):
            ck.prune(model, sparsity, mt=mt)
        assert_same_state(before, model)
        return
    result = ck.prune(model, sparsity, mt=mt)
    expected = brute_force_keep(params, k, mt)
    assert result.pruned == k and result.total == total
    assert result.sparsity == pytest.approx(k / total)
    assert list(result.masks) == [w.name for w in weights]
    for w, orig, want in zip(weights, params, expected):
        keep = result.masks[w.name]
        assert keep.dtype == torch.bool and torch.equal(keep, want), w.name
        now = model.get_parameter(w.name).detach()
        assert torch.equal(bits(now[keep]), bits(orig[keep]))  # kept weights untouched, bit for bit
        assert torch.equal(bits(now[~keep]), torch.zeros(int((~keep).sum()), dtype=torch.int32))  # +0.0
        layer = next(lay for lay in result.layers if lay.name == w.name)
        assert layer.kept == int(keep.sum()) >= min(mt, orig.numel())
    # The alias is the same tensor: pruned once, both names see it.
    assert model.alias.weight is model.shared.weight


def test_zeros_go_first_and_ties_break_by_layer_then_index():
    model = TiedNet()
    params = [t.detach().clone() for t in tensors(model, find_prunable(model))]
    zeros = sum(int((t == 0).sum()) for t in params)
    result = ck.prune(model, zeros / 3700 * 0.5)  # fewer than the zeros: only zeros go
    assert result.pruned < zeros
    for name, orig in zip(result.masks, params):
        assert bool((orig[~result.masks[name]] == 0).all())
    # Among the tied zeros, the earlier layer and the lower flat index go first.
    first_layer = result.masks["a.weight"]
    assert int((~first_layer).sum()) == min(result.pruned, int((params[0] == 0).sum()))
    pruned_idx = torch.nonzero(~first_layer.flatten()).flatten()
    zero_idx = torch.nonzero(params[0].flatten() == 0).flatten()
    assert torch.equal(pruned_idx, zero_idx[:pruned_idx.numel()])
    again = ck.prune(TiedNet(), zeros / 3700 * 0.5)
    assert all(torch.equal(result.masks[n], again.masks[n]) for n in result.masks)


def small_bottleneck_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # the 40->3 layer (120 weights) would empty first
    return model


def test_mt_keeps_min_mt_size_per_layer_with_exact_total():
    total = 2000 + 120 + 6
    assert "2.weight" in ck.prune(small_bottleneck_mlp(), 0.9).emptied_layers
    model = small_bottleneck_mlp()
    orig = model[2].weight.detach().clone()
    result = ck.prune(model, 0.9, mt=10)
    assert result.mt_count == 10 and result.pruned == round(0.9 * total)
    kept = {layer.name: layer.kept for layer in result.layers}
    assert kept["2.weight"] == 10  # protected: exactly its 10 largest
    top10 = torch.topk(orig.abs().flatten(), 10).indices
    assert torch.equal(torch.sort(top10).values, torch.nonzero(result.masks["2.weight"].flatten()).flatten())
    assert kept["4.weight"] == 6  # smaller than MT: stays dense
    assert result.emptied_layers == []
    # A percent MT means a share of all prunable weights (the reference's --min-threshold).
    pct = ck.prune(nn.Sequential(nn.Linear(50, 40), nn.Linear(40, 3)), 0.5, mt="1%")
    assert pct.mt_count == round(0.01 * 2120) == 21


def test_bad_calls_leave_the_model_untouched():
    model = TiedNet()
    before = state_bits(model)
    for bad in (1.0, 1.5, -0.1, float("nan"), "x"):
        with pytest.raises(CollapsekitError, match="sparsity"):
            ck.prune(model, bad)
    with pytest.raises(CollapsekitError, match="MT"):
        ck.prune(model, 0.5, mt=-3)
    with pytest.raises(CollapsekitError, match="lower the MT"):
        ck.prune(model, 0.9, mt=1000)  # 4 layers keep >= 100 + 3 * 1000 > 10 % of 3700
    assert_same_state(before, model)
    with torch.no_grad():
        model.b.weight[3, 4] = float("nan")
    before = state_bits(model)
    with pytest.raises(CollapsekitError, match="NaN"):
        ck.prune(model, 0.5)
    assert_same_state(before, model)


def test_apply_and_check_masks():
    model = TiedNet()
    result = ck.prune(model, 0.8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(-1.0)  # an optimizer step that would resurrect pruned weights
    apply_masks(model, result.masks)
    for name, keep in result.masks.items():
        w = model.get_parameter(name).detach()
        assert int((w != 0).sum()) <= int(keep.sum()) and bool((w[~keep] == 0).all())
        assert not bool(torch.signbit(w[~keep]).any())  # +0.0, never -0.0
    before = state_bits(model)
    wrong = {"a.weight": torch.ones(40, 31, dtype=torch.bool)}
    cases = [(wrong, "mask \\[40, 31\\] vs parameter \\[40, 30\\]"),
             ({"nope.weight": torch.ones(2, dtype=torch.bool)}, "no such parameter"),
             ({"a.weight": torch.ones(40, 30)}, "not a bool tensor"),
             ({}, "non-empty")]
    for masks, message in cases:
        with pytest.raises(CollapsekitError, match=message):
            check_masks(model, masks)
        with pytest.raises(CollapsekitError, match=message):
            apply_masks(model, masks)
    assert_same_state(before, model)
    # An alias name addresses the shared tensor.
    check_masks(model, {"alias.weight": torch.ones(40, 40, dtype=torch.bool)})


def test_result_to_dict_is_the_json_document():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    with torch.no_grad():
        model[2].weight.mul_(1e-4)
    result = ck.prune(model, 0.85)
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["pruned"] == 102 and doc["total"] == 120 and doc["emptied_layers"] == ["2.weight"]
    assert doc["layers"][1] == {"name": "2.weight", "size": 20, "kept": 0, "sparsity": 1.0, "emptied": True}
    assert doc["layers"][0]["kept"] == 18 and doc["mt_count"] == 0
    assert 0 < doc["threshold"] < 1


def collapsing_mlp():
    """Tanh MLP (no activation cuts a path by sign) whose middle layer empties first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    with torch.no_grad():
        model[2].weight.mul_(0.05)
    return model.eval()


def masked_real(model, sparsity, mt):
    clone = collapsing_mlp()
    clone.load_state_dict(model.state_dict())
    ck.prune(clone, sparsity, mt=mt)
    return clone


def test_suggest_mt_is_the_smallest_mt_that_keeps_a_path():
    model = collapsing_mlp()
    x = torch.randn(1, 16)
    before = state_bits(model)
    sparsity = 0.97
    sug = ck.suggest_mt(model, x, sparsity, require="any_output")
    assert_same_state(before, model)
    assert sug.collapses_without_mt and sug.mt >= 2, sug
    total = 512 + 1024 + 128
    assert sug.total == total and resolve_mt(sug.percent, total) == sug.mt
    assert sug.max_mt == (total - round(sparsity * total)) // 3
    weights = find_prunable(model)
    traced = trace(model, x)

    def verdict(mt):
        clone = masked_real(model, sparsity, mt)
        keep = [clone.get_parameter(w.name) != 0 for w in weights]
        return run_flow(traced, weights, keep, backward=False).collapsed, clone

    collapsed, good = verdict(sug.mt)
    assert not collapsed
    assert not probe.output_is_constant(good, (x,))  # the forward pass agrees: outputs vary
    collapsed, bad = verdict(sug.mt - 1)
    assert collapsed and probe.output_is_constant(bad, (x,))
    rng = list(sug.search_range)
    assert rng[0] == sug.mt and rng == sorted(set(rng)) and rng[-1] <= min(max(8 * sug.mt, resolve_mt(0.05, total)), sug.max_mt)
    assert len(rng) >= 3 and all(not verdict(m)[0] for m in rng)
    assert json.loads(json.dumps(sug.to_dict()))["mt"] == sug.mt


def test_suggest_mt_says_when_no_mt_is_needed_or_none_helps():
    model = collapsing_mlp()
    x = torch.randn(1, 16)
    easy = ck.suggest_mt(model, x, 0.3, require="any_output")
    assert easy.mt == 0 and not easy.collapses_without_mt and easy.search_range == ()
    assert "does not collapse" in easy.reason
    hopeless = ck.suggest_mt(model, x, 0.999)  # 2 weights kept: no room for MT >= 1 in 3 layers
    assert hopeless.mt == 0 and hopeless.collapses_without_mt and hopeless.max_mt == 0
    assert "no MT helps" in hopeless.reason


def test_default_suggestion_keeps_every_output_reachable():
    # A net that still moves one logit is not collapsed but predicts one class;
    # the default asks for a path to every output element.
    model = collapsing_mlp()
    x = torch.randn(1, 16)
    weakest = ck.suggest_mt(model, x, 0.9, require="any_output")
    sug = ck.suggest_mt(model, x, 0.9)
    assert sug.mt > weakest.mt >= 1
    weights = find_prunable(model)
    traced = trace(model, x)

    def alive_fraction(mt):
        clone = masked_real(model, 0.9, mt)
        keep = [clone.get_parameter(w.name) != 0 for w in weights]
        return run_flow(traced, weights, keep, backward=False).output_alive

    assert alive_fraction(sug.mt) == 1.0 and alive_fraction(sug.mt - 1) < 1.0
    with pytest.raises(CollapsekitError, match="require"):
        ck.suggest_mt(model, x, 0.97, require="most")


def test_count_macs_counts_kept_weights_times_positions():
    torch.manual_seed(0)
    model = ck.models.create("lenet5", num_classes=10, in_channels=1, input_size=8).eval()
    traced = trace(model, torch.randn(1, 1, 8, 8))
    dense = count_macs(traced)
    # conv1: 6x1x5x5 weights at 8x8 positions (padding 2); conv2 (padding 2 for 8x8): 16x6x5x5 at 4x4.
    assert dense["features.0"]["dense"] == 150 * 64
    assert dense["features.3"]["dense"] == 2400 * 16
    assert dense["classifier.0"]["dense"] == 16 * 2 * 2 * 120
    result = ck.prune(model, 0.9)
    after = count_macs(traced, result.masks)
    for module, entry in after.items():
        kept = int(result.masks[entry["weight"]].sum())
        positions = dense[module]["dense"] // result.masks[entry["weight"]].numel()
        assert entry["kept"] == kept * positions


def test_cli_prune_writes_pruned_masks_and_report(tmp_path):
    from collapsekit.cli import main
    from collapsekit.files.sparse import load_sparse
    from collapsekit.pruning.masks import load as load_masks

    out = tmp_path / "run"
    code = main(["prune", "--model", "lenet_300_100", "--in-channels", "1", "--input-size", "8",
                 "--sparsity", "0.9", "--mt", "5", "--out", str(out), "--format", "json"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["prune.json", "pruned.safetensors"]  # masks inside
    doc = json.loads((out / "prune.json").read_text())
    total = 64 * 300 + 300 * 100 + 100 * 10
    assert doc["pruned"] == round(0.9 * total) and doc["mt_count"] == 5
    assert doc["macs"]["dense"] == total and doc["macs"]["kept"] == total - doc["pruned"]
    masks = load_masks(out / "pruned.safetensors")
    state = load_sparse(out / "pruned.safetensors")
    assert sum(int((~m).sum()) for m in masks.values()) == doc["pruned"]
    for name, keep in masks.items():
        assert bool((state[name][~keep] == 0).all())
    assert math.isclose(doc["sparsity"], doc["pruned"] / total)
    bad = main(["prune", "--model", "lenet_300_100", "--sparsity", "1.0", "--out", str(tmp_path / "x")])
    assert bad == 2 and not (tmp_path / "x" / "prune.json").exists()


def test_ck_prune_stays_callable_after_the_module_is_imported():
    import collapsekit.pruning.prune  # noqa: F401 - the import system rebinds ck.prune to the module

    model = nn.Sequential(nn.Linear(4, 4))
    result = ck.prune(model, 0.5)
    assert result.pruned == 8 and callable(ck.prune) and callable(ck.compact)


@pytest.mark.parametrize("mt", [None, 3])
def test_the_analysis_masks_are_the_masks_prune_applies(mt):
    # validate and mt-search prune with the analysis's masks instead of sorting again.
    import copy

    from collapsekit.analysis.analysis import Analysis

    model = collapsing_mlp()
    an = Analysis(model, torch.randn(1, 16), mt=mt)
    for sparsity in (0.5, 0.9, 0.97):
        keep, _, _ = an.keep_masks(round(sparsity * an.index.total))
        masks = ck.prune(copy.deepcopy(model), sparsity, mt=mt).masks
        assert all(torch.equal(masks[w.name], k) for w, k in zip(an.weights, keep))
