"""Wide Residual Networks WRN-d-k (Zagoruyko & Komodakis 2016, "Wide Residual Networks")."""
from __future__ import annotations

import torch
import torch.nn as nn

from collapsekit.models.registry import register
from collapsekit.models.blocks import PooledClassifier, bn_relu, init_weights


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus a shortcut (Zagoruyko & Komodakis 2016, Fig. 1c).

    The shortcut is the identity when the shape is kept, else a 1x1 conv reading the
    block's pre-activated input, as in the authors' code.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.pre = bn_relu(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.mid = bn_relu(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.projects = stride != 1 or in_channels != out_channels
        if self.projects:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        residual = self.conv2(self.dropout(self.mid(self.conv1(a))))
        # `projects` is fixed at construction, so this branch is static for torch.fx.
        return residual + (self.shortcut(a) if self.projects else x)


class WideResNet(nn.Module):
    """3x3 stem (16) -> three groups of (d-4)/6 pre-act blocks (16k, 32k, 64k; strides 1, 2, 2) -> BN-ReLU -> pooled FC."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        groups, c_in = [], 16
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1, dropout=dropout))
                c_in = width
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.final = bn_relu(c_in)
        self.head = PooledClassifier(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final(self.groups(self.stem(x))))


def wrn(depth: int, widen_factor: int, num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
        dropout: float = 0.0) -> nn.Module:
    """Returns WRN-`depth`-`widen_factor` (depth = 6n+4; Zagoruyko & Komodakis 2016).

    `input_size` is accepted for the zoo's signature; the pooled head makes any size >= 4 work.
    """
    return init_weights(WideResNet(depth, widen_factor, num_classes, in_channels, dropout))


def _register_wrn(depth: int, widen_factor: int, params: str) -> None:
    """Adds WRN-`depth`-`widen_factor` to the zoo as `wrn_<depth>_<widen_factor>`."""

    def factory(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kw) -> nn.Module:
        return wrn(depth, widen_factor, num_classes, in_channels, input_size, dropout=kw.get("dropout", 0.0))

    factory.__name__ = f"wrn_{depth}_{widen_factor}"
    factory.__doc__ = f"Returns WRN-{depth}-{widen_factor} (Zagoruyko & Komodakis 2016): {params} parameters for 10 classes."
    register(factory.__name__)(factory)


# The zoo's WideResNets, with the parameter counts the paper reports.
for _depth, _widen, _params in ((16, 2, "0.69M"), (16, 4, "2.7M"), (28, 8, "23.4M"), (28, 10, "36.5M")):
    _register_wrn(_depth, _widen, _params)
