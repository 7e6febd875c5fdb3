"""Tiny networks of the families the trainability forecast is calibrated on: plain stacks with and without batch
norm, deep narrow stacks, residual, depthwise-separable and a small transformer block (CPU-sized, digits-sized).

Each factory takes (num_classes, in_channels, input_size, image) and returns an nn.Module for a DataBundle's
inputs: images [N, C, S, S], or sequences [N, S steps, C features] when `image` is False.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def mlp(num_classes, in_channels, input_size, image=True, width=64, depth=3, bn=False) -> nn.Module:
    """Flatten, `depth` hidden Linear(+BN)+ReLU layers of `width`, a Linear head."""
    layers, fan_in = [nn.Flatten()], in_channels * input_size * input_size if image else in_channels * input_size
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width)] + ([nn.BatchNorm1d(width)] if bn else []) + [nn.ReLU()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, num_classes))


def cnn(num_classes, in_channels, input_size, image=True, widths=(16, 32, 32), bn=False) -> nn.Module:
    """VGG-style plain conv stack (3x3, ReLU, one max-pool after the second conv), global average pool, Linear."""
    layers, c = [], in_channels
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=not bn)] + ([nn.BatchNorm2d(w)] if bn else []) + [nn.ReLU()]
        if i == 1:
            layers.append(nn.MaxPool2d(2))
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    """Stem conv, `blocks` identity-shortcut basic blocks of width `c`, a narrow 1x1 head conv, GAP, Linear."""

    def __init__(self, num_classes, in_channels, input_size, image=True, c=16, blocks=3, head=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*[_Block(c) for _ in range(blocks)])
        self.head = nn.Sequential(nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def dwsep(num_classes, in_channels, input_size, image=True, widths=(16, 32, 32, 64)) -> nn.Module:
    """MobileNet-style: a stem conv, then depthwise 3x3 + pointwise 1x1 pairs (each BN + ReLU), GAP, Linear."""
    c = widths[0]
    layers = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
    for i, w in enumerate(widths[1:]):
        layers += [nn.Conv2d(c, c, 3, stride=2 if i == 1 else 1, padding=1, groups=c, bias=False),
                   nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


class Transformer(nn.Module):
    """Tokens (image rows, or sequence steps) embedded, `blocks` pre-norm attention + MLP blocks, mean pool, Linear."""

    def __init__(self, num_classes, in_channels, input_size, image=True, d=32, blocks=1):
        super().__init__()
        self.image = image
        features = in_channels * input_size if image else in_channels
        self.embed = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.randn(1, input_size, d) * 0.02)
        self.blocks = nn.ModuleList([_Attention(d) for _ in range(blocks)])
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, num_classes)

    def forward(self, x):
        if self.image:  # [N, C, H, W] -> H tokens of C*W features
            x = x.permute(0, 2, 1, 3).flatten(2)
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.out(self.norm(h.mean(1)))


class _Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.scale = d ** -0.5

    def forward(self, h):
        a = self.norm1(h)
        att = torch.softmax(self.q(a) @ self.k(a).transpose(1, 2) * self.scale, dim=-1)
        h = h + self.o(att @ self.v(a))
        return h + self.fc2(torch.relu(self.fc1(self.norm2(h))))


def lenet_like(num_classes, in_channels, input_size, image=True, widths=(6, 16), hidden=(120, 84)) -> nn.Module:
    """LeNet-style: 5x5 convs (padding 2) each followed by ReLU and a 2x2 max-pool, then a ReLU MLP head; no BN."""
    layers, c, size = [], in_channels, input_size
    for w in widths:
        layers += [nn.Conv2d(c, w, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
        c, size = w, size // 2
    fan_in, head = c * size * size, [nn.Flatten()]
    for h in hidden:
        head += [nn.Linear(fan_in, h), nn.ReLU()]
        fan_in = h
    return nn.Sequential(*layers, *head, nn.Linear(fan_in, num_classes))


# name -> (factory, keyword arguments, optimizer, lr) for dense training. "family@recipe" names one family trained
# another way (SGD lr 0.05 with momentum and cosine decay, `fit`'s defaults): leave-one-architecture-out leaves out
# the whole family.
ARCHITECTURES = {
    "mlp": (mlp, {}, "adam", 3e-3),
    "mlp_bn": (mlp, {"bn": True}, "adam", 3e-3),
    "deep_mlp": (mlp, {"width": 32, "depth": 8}, "adam", 3e-3),
    "cnn": (cnn, {}, "adam", 3e-3),
    "vgg_bn": (cnn, {"widths": (16, 16, 32, 32, 32), "bn": True}, "adam", 3e-3),
    "resnet": (ResNet, {}, "adam", 3e-3),
    "dwsep": (dwsep, {}, "adam", 3e-3),
    "transformer": (Transformer, {}, "adam", 3e-3),
    **{f"{name}@sgd": (factory, kwargs, "sgd", 0.05) for name, (factory, kwargs) in {
        "mlp": (mlp, {}), "mlp_bn": (mlp, {"bn": True}), "cnn": (cnn, {}),
        "vgg_bn": (cnn, {"widths": (16, 16, 32, 32, 32), "bn": True}), "resnet": (ResNet, {}), "dwsep": (dwsep, {}),
        "mlp_wide": (mlp, {"width": 256, "depth": 1}), "cnn_narrow_bn": (cnn, {"widths": (8, 8, 16), "bn": True}),
        "lenet_like": (lenet_like, {})}.items()},
}


def create(name: str, bundle, image: bool = True) -> nn.Module:
    """Architecture `name` built for `bundle`'s shape."""
    factory, kwargs, _, _ = ARCHITECTURES[name]
    return factory(bundle.num_classes, bundle.in_channels, bundle.input_size, image, **kwargs)


def gpt2_lm(vocab_size: int, context_length: int) -> nn.Module:
    """A 3-layer GPT-2 (learned positions, GELU MLPs, LayerNorm, head tied to the token embedding), hidden 48."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=context_length, n_embd=48, n_layer=3, n_head=4,
                        bos_token_id=0, eos_token_id=0, use_cache=False)
    config._attn_implementation = "eager"
    return GPT2LMHeadModel(config)


def opt_lm(vocab_size: int, context_length: int) -> nn.Module:
    """A 2-layer OPT (ReLU MLPs, learned positions) whose 24-wide token embedding is projected in and out of 48."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=vocab_size, hidden_size=48, num_hidden_layers=2, ffn_dim=192, num_attention_heads=4,
                       max_position_embeddings=context_length, word_embed_proj_dim=24, dropout=0.0,
                       attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                       use_cache=False)
    config._attn_implementation = "eager"
    return OPTForCausalLM(config)


# Causal LMs not in the zoo (the zoo's `llama_tiny` is calibrated on beside them): name -> factory(vocab, context).
LM_ARCHITECTURES = {"gpt2_lm": gpt2_lm, "opt_lm": opt_lm}


def ln_gelu_mlp(num_classes, in_channels, input_size, width=128, depth=2) -> nn.Module:
    """Flatten, `depth` Linear + LayerNorm + GELU layers of `width`, a Linear head (a normalisation and an
    activation no calibration family has)."""
    layers, fan_in = [nn.Flatten()], in_channels * input_size * input_size
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.LayerNorm(width), nn.GELU()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, num_classes))


def conv_dropout(num_classes, in_channels, input_size) -> nn.Module:
    """Two 3x3 convs (32, 64) with ReLU and a max-pool, dropout, a 128-wide ReLU layer, dropout, a Linear head."""
    return nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
                         nn.Linear(64 * (input_size // 2) ** 2, 128), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(128, num_classes))


class _Down(nn.Module):
    """A basic block that halves the resolution and widens, its shortcut a strided 1x1 conv with BN."""

    def __init__(self, cin, cout):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def wide_resnet(num_classes, in_channels, input_size) -> nn.Module:
    """Stem conv 24, an identity block, a downsampling block to 48 (projection shortcut), GAP, Linear (no narrow
    head)."""
    return nn.Sequential(nn.Conv2d(in_channels, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                         _Block(24), _Down(24, 48), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes))


# Held out of every fit and every choice (analyses/trainability_forecast.py HELD_OUT_FRESH): families no calibration
# run has, factory(num_classes, in_channels, input_size), trained with SGD lr 0.05 like the new held-out nets.
FRESH = {"ln_gelu_mlp": ln_gelu_mlp, "conv_dropout": conv_dropout, "wide_resnet": wide_resnet}


def groupnorm_cnn(num_classes, in_channels, input_size) -> nn.Module:
    """Three 3x3 convs (16, 32, 32) each with GroupNorm (4 groups) and ReLU, a max-pool after the second, GAP,
    Linear (a per-example normalisation no calibration family has)."""
    layers, c = [], in_channels
    for i, w in enumerate((16, 32, 32)):
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.GroupNorm(4, w), nn.ReLU()]
        if i == 1:
            layers.append(nn.MaxPool2d(2))
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


class _InvertedResidual(nn.Module):
    """MobileNet-V2's block: 1x1 expand (x4) + BN + ReLU6, depthwise 3x3 + BN + ReLU6, 1x1 linear projection + BN;
    an identity shortcut where the shape is kept."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        mid = 4 * cin
        self.body = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                                  nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                  nn.ReLU6(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def inverted_residual(num_classes, in_channels, input_size) -> nn.Module:
    """Stem conv 16 + BN + ReLU6, three inverted-residual blocks (16, 24 strided, 24), a 1x1 conv to 64 + BN +
    ReLU6, GAP, Linear."""
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                         _InvertedResidual(16, 16, 1), _InvertedResidual(16, 24, 2), _InvertedResidual(24, 24, 1),
                         nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


class _Gated(nn.Module):
    """A SwiGLU layer: silu(gate(x)) * up(x), projected down to `width` (Shazeer, "GLU Variants Improve
    Transformer", 2020)."""

    def __init__(self, fan_in, width, hidden):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(fan_in, hidden), nn.Linear(fan_in, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def gated_mlp(num_classes, in_channels, input_size) -> nn.Module:
    """Flatten, two SwiGLU layers (hidden 96, out 64), a Linear head: multiplicative gating, no normalisation."""
    fan_in = in_channels * input_size * input_size
    return nn.Sequential(nn.Flatten(), _Gated(fan_in, 64, 96), _Gated(64, 64, 96), nn.Linear(64, num_classes))


# A second held-out set, written before the probe was changed for it and scored once after every choice
# (analyses/trainability_forecast.py HELD_OUT_FRESH2): factory(num_classes, in_channels, input_size), SGD lr 0.05.
FRESH2 = {"groupnorm_cnn": groupnorm_cnn, "inverted_residual": inverted_residual, "gated_mlp": gated_mlp}
