"""collapsekit.pruning.compact: outputs equal the masked model's (Invariant 5), fewer parameters, exact folding."""
import copy

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.validation import probe
from collapsekit.errors import CollapsekitError
from collapsekit.pruning.prune import apply_masks


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def recalibrate(model, x, beta=0.3):
    """Re-estimate BN statistics after pruning (else the signal fades layer by layer) and give
    each BN a random shift, so dead channels carry non-zero constants to fold."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
            with torch.no_grad():
                m.bias.normal_(0, beta, generator=g)
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def assert_same_outputs(model, small, shape):
    g = torch.Generator().manual_seed(3)
    for scale in (0.1, 1.0, 10.0):
        x = torch.randn((6, *shape), generator=g) * scale
        with torch.no_grad():
            a, b = model(x), small(x)
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=1e-5 * max(1.0, scale)), (a - b).abs().max()


# (zoo name, create kwargs, input shape, sparsity, MT, parameters of the compacted net)
ZOO_CASES = [
    ("lenet_300_100", {"in_channels": 1, "input_size": 8}, (1, 8, 8), 0.9, 5, 247),
    ("lenet5", {"in_channels": 1, "input_size": 8}, (1, 8, 8), 0.9, 5, None),
    ("resnet20", {"input_size": 8}, (3, 8, 8), 0.97, 5, None),
    ("wrn_16_2", {"input_size": 8}, (3, 8, 8), 0.98, 5, None),
    ("mobilenet_v1", {"input_size": 16, "width_mult": 0.25}, (3, 16, 16), 0.9, 200, None),
]


@pytest.mark.parametrize("name,kwargs,shape,sparsity,mt,expected", ZOO_CASES, ids=[c[0] for c in ZOO_CASES])
def test_zoo_models_compact_to_fewer_parameters_with_equal_outputs(name, kwargs, shape, sparsity, mt, expected):
    torch.manual_seed(0)
    model = ck.models.create(name, num_classes=10, **kwargs).eval()
    result = ck.prune(model, sparsity, mt=mt)
    recalibrate(model, torch.randn(32, *shape))
    x = torch.randn(1, *shape)
    assert not probe.output_is_constant(model, (x,))  # a live network, not a trivially constant one
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = ck.compact(model, result.masks, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    assert n_params(small) < 0.9 * n_params(model)
    if expected is not None:
        assert n_params(small) == expected
    assert not small.training
    assert_same_outputs(model, small, shape)


class Head(nn.Module):
    """conv3x3-BN-ReLU -> conv(k)-BN-ReLU -> pool -> linear: the reader of conv1 is 1x1 or 3x3."""

    def __init__(self, k):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, k, padding=k // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def head_masks(model):
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
             if n.endswith("weight") and p.ndim > 1}
    masks["conv1.weight"][[0, 1, 2]] = False  # three empty filters: dead channels
    masks["conv2.weight"][:, 5] = False  # nothing reads channel 5: unused
    with torch.no_grad():
        model.bn1.bias.copy_(torch.tensor([1.0, -1.0, 0.5, 0.1, 0.2, 0.3, 0.4, 0.5]))  # ReLU(beta): 1, 0, 0.5
        model.bn1.running_mean.uniform_(-0.2, 0.2)
    return masks


def test_dead_channel_constants_fold_into_a_1x1_reader():
    model = Head(k=1).eval()
    masks = head_masks(model)
    small = ck.compact(model, masks, torch.randn(1, 3, 8, 8))
    masked = apply_masks(copy.deepcopy(model), masks)
    # dead 0, 1, 2 folded into conv2's new bias, unused 5 dropped: 8 -> 4 channels
    assert small.conv1.weight.shape == (4, 3, 3, 3) and small.bn1.num_features == 4
    assert small.conv2.weight.shape == (6, 4, 1, 1) and small.conv2.bias is not None
    assert small.bn1.running_mean.shape == (4,)
    assert_same_outputs(masked, small, (3, 8, 8))


def test_a_padded_3x3_reader_keeps_non_zero_constants_but_drops_zero_ones():
    model = Head(k=3).eval()
    masks = head_masks(model)
    small = ck.compact(model, masks, torch.randn(1, 3, 8, 8))
    masked = apply_masks(copy.deepcopy(model), masks)
    # The border sums of constants 1.0 (ch 0) and 0.5 (ch 2) differ from the interior: kept.
    # Channel 1 is ReLU(-1) = 0: nothing to fold, dropped; channel 5 is unused: dropped.
    assert small.conv1.weight.shape == (6, 3, 3, 3)
    assert torch.equal(small.conv1.weight, masked.conv1.weight[[0, 2, 3, 4, 6, 7]])
    assert_same_outputs(masked, small, (3, 8, 8))


class TwoBlockResNet(nn.Module):
    """stem -> two identity residual blocks -> pooled linear."""

    def __init__(self, c=6):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.a1, self.b1 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.a2, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.b1(torch.relu(self.a1(h))))
        h = torch.relu(h + self.b2(torch.relu(self.a2(h))))
        return self.fc(torch.flatten(self.pool(h), 1))


def test_residual_channels_are_removed_only_when_removable_on_every_operand():
    model = TwoBlockResNet().eval()
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.ndim > 1}
    for name in ("stem.weight", "b1.weight", "b2.weight"):
        masks[name][2] = False  # channel 2 empty in every operand of both adds: dead everywhere
    masks["b1.weight"][4] = False  # channel 4 empty only in one operand: the stem keeps it alive
    masks["a1.weight"][1] = False  # a1's channel 1: dead, read by the 3x3 b1 (bias constant at borders)
    masks["a2.weight"][:, 3] = False  # a2 never reads channel 3, but the residual and fc do
    with torch.no_grad():
        for conv in (model.stem, model.b1, model.b2):
            conv.bias[2] = -0.5  # ReLU makes channel 2 a zero constant: nothing to fold
        model.a1.bias[1] = 0.5  # a non-zero constant read by a padded 3x3: stays
    small = ck.compact(model, masks, torch.randn(1, 3, 8, 8))
    masked = apply_masks(copy.deepcopy(model), masks)
    # The residual group (stem, b1, b2 outputs) loses channel 2 only, consistently.
    assert small.stem.weight.shape[0] == small.b1.weight.shape[0] == small.b2.weight.shape[0] == 5
    assert small.a1.weight.shape[1] == small.a2.weight.shape[1] == small.fc.weight.shape[1] == 5
    assert small.a1.weight.shape[0] == 6
    assert_same_outputs(masked, small, (3, 8, 8))


def test_unsupported_graphs_and_bad_masks_are_clear_errors():
    model = ck.models.create("fastgrnn", num_classes=3, in_channels=2, input_size=4)
    masks = {"W.weight": torch.ones(32, 2, dtype=torch.bool)}
    with pytest.raises(CollapsekitError, match="compact does not support"):
        ck.compact(model, masks, torch.randn(1, 4, 2))
    head = Head(k=1).eval()
    with pytest.raises(CollapsekitError, match="do not fit"):
        ck.compact(head, {"conv1.weight": torch.ones(8, 3, 1, 1, dtype=torch.bool)}, torch.randn(1, 3, 8, 8))


def test_compact_leaves_the_model_untouched():
    from invariants import assert_unchanged, snapshot
    from test_flow import SharedLinear  # one nn.Linear applied twice

    torch.manual_seed(0)
    model = ck.models.create("resnet20", num_classes=10, input_size=8).train()
    masks = ck.prune(copy.deepcopy(model), 0.95, mt=5).masks
    snap = snapshot(model)
    small = ck.compact(model, masks, torch.randn(1, 3, 8, 8))
    assert n_params(small) < n_params(model)
    assert_unchanged(model, snap)
    shared = SharedLinear()
    snap = snapshot(shared)
    with pytest.raises(CollapsekitError, match="fc \\(Linear\\) called 2 times"):
        ck.compact(shared, {"fc.weight": torch.ones(6, 6, dtype=torch.bool)}, torch.randn(1, 6))
    assert_unchanged(shared, snap)


def test_a_new_module_type_is_one_registry_entry():
    # nn.PReLU has no handler: compaction refuses it until one entry says it is per-element (one slope here).
    from collapsekit.pruning import compact as compact_module

    model = nn.Sequential(nn.Linear(4, 6), nn.PReLU(), nn.Linear(6, 3)).eval()
    masks = {"0.weight": torch.ones(6, 4, dtype=torch.bool), "2.weight": torch.ones(3, 6, dtype=torch.bool)}
    masks["2.weight"][:, [1, 4]] = False  # hidden units 1 and 4 are unused
    x = torch.randn(1, 4)
    with pytest.raises(CollapsekitError, match="1 \\(PReLU\\)"):
        ck.compact(model, masks, x)
    compact_module.register(compact_module.LayerHandler(compact_module.PASSTHROUGH), nn.PReLU)
    try:
        small = ck.compact(model, masks, x)
    finally:
        del compact_module.HANDLERS[nn.PReLU]
    assert small.get_submodule("0").weight.shape == (4, 4) and small.get_submodule("2").weight.shape == (3, 4)
    assert_same_outputs(apply_masks(copy.deepcopy(model), masks), small, (4,))
