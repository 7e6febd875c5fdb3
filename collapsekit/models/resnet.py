"""CIFAR ResNets of depth 6n+2 (He et al. 2016, "Deep Residual Learning", Sec. 4.2)."""
from __future__ import annotations

import torch
import torch.nn as nn

from collapsekit.models.registry import register
from collapsekit.models.blocks import PooledClassifier, conv_bn, init_weights


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN units plus a shortcut, ReLU after the sum (He et al. 2016).

    The shortcut is the identity when the shape is kept, else a 1x1 conv + BN
    projection (option B). Option A's zero-padding shortcut has no weights; B
    makes every shortcut a prunable layer, as the Global MP reference code sees it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, 3, stride)
        self.conv2 = conv_bn(out_channels, out_channels, 3, relu=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn(in_channels, out_channels, 1, stride, relu=False)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stem (16) -> three stages of n BasicBlocks (16, 32, 64; strides 1, 2, 2) -> pooled FC."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, base_width: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        widths = [base_width, 2 * base_width, 4 * base_width]
        self.stem = conv_bn(in_channels, widths[0], 3)
        stages, c_in = [], widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = PooledClassifier(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def resnet(depth: int, num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
           base_width: int = 16) -> nn.Module:
    """Returns a CIFAR ResNet-`depth` (depth = 6n+2; He et al. 2016) with option-B projection shortcuts.

    `input_size` is accepted for the zoo's signature; the pooled head makes any size >= 4 work.
    """
    return init_weights(CifarResNet(depth, num_classes, in_channels, base_width))


@register("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kw) -> nn.Module:
    """Returns CIFAR ResNet-20 (He et al. 2016), option B: 0.27M parameters for 10 classes."""
    return resnet(20, num_classes, in_channels, input_size)


@register("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kw) -> nn.Module:
    """Returns CIFAR ResNet-32 (He et al. 2016), option B: 0.47M parameters for 10 classes."""
    return resnet(32, num_classes, in_channels, input_size)


@register("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kw) -> nn.Module:
    """Returns CIFAR ResNet-56 (He et al. 2016), option B: 0.86M parameters for 10 classes."""
    return resnet(56, num_classes, in_channels, input_size)
