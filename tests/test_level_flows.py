"""level_flows: every level's channel-level flow from one max-min pass equals the level's own flow."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import collapsekit as ck
from collapsekit.analysis.analysis import DEFAULT_SPARSITIES, Analysis
from collapsekit.analysis.flow import run_flow
from collapsekit.analysis.level_flows import level_flows
from invariants import assert_unchanged, scramble, snapshot


class Dense(nn.Module):
    """A DenseNet block: each conv reads the concatenation of everything before it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
        self.b = nn.Sequential(nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 4, 1))
        self.trans = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.a(x)], 1)
        x = torch.cat((x, self.b(x)), dim=1)
        x = F.avg_pool2d(self.trans(x), 2)
        return self.head(torch.flatten(x, 1))  # a linear over channels x positions


class Squeeze(nn.Module):
    """A squeeze-excite gate (x * sigmoid(fc(pool(x)))), a grouped conv, a residual and a reduction head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.squeeze = nn.Conv2d(8, 2, 1)
        self.excite = nn.Conv2d(2, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.grouped(x)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(y, 1)))))
        x = x + y * gate
        return self.fc(x.mean((2, 3)))


class SmallMap(nn.Module):
    """A 3x3 conv on a 1x1 map (only its centre tap reads input) and a view written with x.size(0)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=4)
        self.small = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.adaptive_max_pool2d(self.stem(x), 1)
        return self.fc(self.small(x).view(x.size(0), -1))


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck: a downsampling shortcut, in-place ReLUs and `out += identity`."""

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4))

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class TorchvisionLike(nn.Module):
    """ResNet bottlenecks, an inception block (a max-pool branch, ceil mode), a fire module (squeeze, expand
    1x1 and 3x3 concatenated) and a MBConv with squeeze-excite (SiLU, Hardsigmoid, `scale * input`)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.layer1 = nn.Sequential(Bottleneck(8, 4, 1), Bottleneck(16, 4, 2))
        self.b1 = nn.Conv2d(16, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(16, 4, 1), nn.Conv2d(4, 4, 3, padding=1))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), nn.Conv2d(16, 4, 1))
        self.squeeze = nn.Conv2d(12, 4, 1)
        self.e1, self.e3 = nn.Conv2d(4, 8, 1), nn.Conv2d(4, 8, 3, padding=1)
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.SiLU(), nn.Conv2d(4, 16, 1),
                                nn.Hardsigmoid())
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16 * 2 * 2, 10), nn.Hardswish(),
                                        nn.Linear(10, 5))

    def forward(self, x):
        x = self.layer1(self.stem(x))
        x = torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)
        s = F.relu(self.squeeze(x))
        x = torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)
        y = self.dw(x)
        x = x + self.project(self.se(y) * y)
        x = F.adaptive_avg_pool2d(x, (2, 2))
        return self.classifier(torch.flatten(x, 1))


class ConvHead(nn.Module):
    """SqueezeNet's head: the last layer is a conv, pooled and flattened into the logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, 5, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def _quantized(model):
    """Weights on a coarse grid: many ties, so Global MP's cuts fall inside runs of equal magnitudes."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_((p * 8).round() / 8)
    return model


MODELS = {
    "resnet20": lambda: (scramble(ck.models.create("resnet20", num_classes=5, in_channels=3, input_size=8), 3),
                         torch.randn(1, 3, 8, 8)),
    "mobilenet_v2": lambda: (scramble(ck.models.create("mobilenet_v2", num_classes=5, in_channels=3,
                                                       input_size=8), 4), torch.randn(1, 3, 8, 8)),
    "lenet5": lambda: (scramble(ck.models.create("lenet5", num_classes=5), 2),
                       torch.randn(ck.models.input_shape("lenet5"))),
    "lenet_300_100": lambda: (scramble(ck.models.create("lenet_300_100", num_classes=5), 1),
                              torch.randn(ck.models.input_shape("lenet_300_100"))),
    "dense": lambda: (scramble(Dense(), 5), torch.randn(1, 3, 8, 8)),
    "squeeze": lambda: (scramble(Squeeze(), 6), torch.randn(1, 3, 8, 8)),
    "small_map": lambda: (scramble(SmallMap(), 7), torch.randn(1, 3, 8, 8)),
    "torchvision_like": lambda: (scramble(TorchvisionLike(), 9), torch.randn(1, 3, 16, 16)),
    "conv_head": lambda: (scramble(ConvHead(), 10), torch.randn(1, 3, 16, 16)),
    "quantized": lambda: (_quantized(scramble(ck.models.create("resnet20", num_classes=5, in_channels=3,
                                                                input_size=8), 8)), torch.randn(1, 3, 8, 8)),
}


def _levels(an):
    room = an.index.max_count(an.mt)
    counts = sorted({an.count(s) for s in DEFAULT_SPARSITIES if round(s * an.total) <= room})
    return counts, [an.level(k) for k in counts]


@pytest.mark.parametrize("mt", [None, 20])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_level_equals_its_own_channel_level_flow(name, mt):
    torch.manual_seed(0)
    model, x = MODELS[name]()
    snap = snapshot(model)
    an = Analysis(model, x, mt=mt)
    counts, levels = _levels(an)
    got = level_flows(an.traced, an.weights, levels)
    assert got is not None and len(got) == len(counts)
    for k, flow in zip(counts, got):
        want = run_flow(an.traced, an.weights, an.level(k), channel_level=True)
        assert (flow.collapsed, flow.dead_channels, flow.unused_channels, flow.output_alive, flow.conservative_ops) \
            == (want.collapsed, want.dead_channels, want.unused_channels, want.output_alive, want.conservative_ops), k
        assert np.array_equal(flow.effective, want.effective), k
    verdicts = [f.collapsed for f in got]
    assert verdicts == sorted(verdicts)  # nested masks: once collapsed, collapsed at every sparser level
    assert_unchanged(model, snap)


def test_the_corpus_covers_what_it_claims():
    """The cases above reach what they are there for: collapse, dead and unused channels, and ties at cuts."""
    seen = set()
    for name in ("resnet20", "dense", "quantized"):
        model, x = MODELS[name]()
        an = Analysis(model, x)
        counts, levels = _levels(an)
        flows = level_flows(an.traced, an.weights, levels)
        seen |= {"collapsed"} if any(f.collapsed for f in flows) else set()
        seen |= {"dead"} if any(f.dead_channels and not f.collapsed for f in flows) else set()
        seen |= {"unused"} if any(f.unused_channels and not f.collapsed for f in flows) else set()
        if name == "quantized":
            ties = [(i, lv) for lv in levels for i, n in enumerate(lv.alloc.pruned)
                    if 0 < n < an.index.sizes[i] and an.index.cut(i, int(n))[1]]
            seen |= {"ties"} if ties else set()
    assert seen == {"collapsed", "dead", "unused", "ties"}


class Between(nn.Module):
    """A conv, then `middle(self, h)`, then a linear on `features`: one pattern between two prunable layers."""

    def __init__(self, middle, features=4):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.side = nn.Conv2d(4, 4, 1)
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.fc, self.other = nn.Linear(features, 2), nn.Linear(features, 2)
        self.middle = middle

    def forward(self, x):
        return self.middle(self, self.conv(x))


def _dangling(m, h):
    m.side(h)  # a branch whose output nothing reads: the flow does not run it
    return m.fc(h.mean((2, 3)))


NOT_PLAIN = {
    "dangling": (_dangling, 4),
    "shared": (lambda m, h: m.fc(m.conv(h).mean((2, 3))), 4),  # a module applied twice
    "scaled": (lambda m, h: m.fc((h * m.scale).mean((2, 3))), 4),  # a get_attr weight
    "two_heads": (lambda m, h: (m.fc(h.mean((2, 3))), m.other(h.mean((2, 3)))), 4),
    "transposed": (lambda m, h: m.fc(h.permute(0, 2, 3, 1).mean((1, 2))), 4),
    "channel_mean": (lambda m, h: m.fc(h.mean(1).flatten(1)), 16),  # keeps the positions, not the channels
    # the flow answers a dilated window conservatively (and lists it)
    "dilated_pool": (lambda m, h: m.fc(F.max_pool2d(h, 2, 1, 0, 2).mean((2, 3))), 4),
}


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_graphs_outside_the_plain_ops_keep_their_own_flows(name):
    torch.manual_seed(0)
    middle, features = NOT_PLAIN[name]
    model = Between(middle, features)
    if name != "dangling":
        model.side = None  # only the dangling case has a side branch
    if name not in ("two_heads",):
        model.other = None
    an = Analysis(model, torch.randn(1, 4, 4, 4))
    assert level_flows(an.traced, an.weights, _levels(an)[1]) is None


@pytest.mark.parametrize("name", ["resnet20", "dense", "quantized", "torchvision_like"])
def test_a_channel_level_report_takes_its_levels_from_the_one_pass(name, monkeypatch):
    import collapsekit.analysis.analysis as analysis_mod

    model, x = MODELS[name]()
    an = Analysis(model, x, exact=False)
    report = an.report()
    assert an.timings.calls.get("level flows") == 1 and "flow per level" not in an.timings.calls
    monkeypatch.setattr(analysis_mod, "level_flows", lambda *args: None)
    alone = Analysis(model, x, exact=False).report()
    drop = lambda d: {k: v for k, v in d.items() if "seconds" not in k and "time" not in k}  # noqa: E731
    assert drop(report.to_dict()) == drop(alone.to_dict())


def test_the_same_module_without_those_patterns_takes_the_one_pass():
    """The control for NOT_PLAIN: with a plain middle and no unused layers, `Between` is read in one pass."""
    torch.manual_seed(0)
    model = Between(lambda m, h: m.fc(F.relu(h).mean((2, 3))))
    model.side = model.other = None
    an = Analysis(model, torch.randn(1, 4, 4, 4))
    assert level_flows(an.traced, an.weights, _levels(an)[1]) is not None
