"""MobileNet-V1 (Howard et al. 2017) and the CIFAR MobileNet-V2 (Sandler et al. 2018) of kuangliu/pytorch-cifar."""
from __future__ import annotations

import torch
import torch.nn as nn

from collapsekit.models.registry import register
from collapsekit.models.blocks import PooledClassifier, conv_bn, init_weights

# (output channels, stride) of the 13 depthwise-separable layers (Howard et al. 2017, Table 1).
_V1_LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

# (expansion t, output channels c, repeats n, first stride s) (Sandler et al. 2018, Table 2),
# with the second stage's stride 2 -> 1 for 32x32 inputs, as in kuangliu/pytorch-cifar.
_V2_CIFAR_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

# Below this input size MobileNet-V1 drops the stem's stride (CIFAR style): the
# ImageNet net divides 224 by 32, which would leave less than one pixel of a 32x32 image.
IMAGENET_MIN_INPUT = 128


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Returns depthwise 3x3 conv-BN-ReLU -> pointwise 1x1 conv-BN-ReLU (Howard et al. 2017, Fig. 3)."""
    return nn.Sequential(conv_bn(in_channels, in_channels, 3, stride, groups=in_channels),
                         conv_bn(in_channels, out_channels, 1))


class MobileNetV1(nn.Module):
    """3x3 stem (32 alpha) -> 13 depthwise-separable layers -> pooled FC (Howard et al. 2017)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                 width_mult: float = 1.0):
        super().__init__()

        def width(c: int) -> int:
            return max(1, int(round(c * width_mult)))

        stem_stride = 2 if input_size >= IMAGENET_MIN_INPUT else 1
        self.stem = conv_bn(in_channels, width(32), 3, stem_stride)
        layers, c_in = [], width(32)
        for c, stride in _V1_LAYERS:
            layers.append(depthwise_separable(c_in, width(c), stride))
            c_in = width(c)
        self.layers = nn.Sequential(*layers)
        self.head = PooledClassifier(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, plus a shortcut when stride is 1 (Sandler et al. 2018).

    As in kuangliu/pytorch-cifar, a stride-1 block that changes the width gets a
    1x1 conv-BN shortcut (the paper has none there); ReLU replaces ReLU6.
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int):
        super().__init__()
        hidden = expansion * in_channels
        self.body = nn.Sequential(conv_bn(in_channels, hidden, 1),
                                  conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  conv_bn(hidden, out_channels, 1, relu=False))
        self.residual = stride == 1
        if self.residual and in_channels != out_channels:
            self.shortcut = conv_bn(in_channels, out_channels, 1, relu=False)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        # `residual` is fixed at construction, so this branch is static for torch.fx.
        return out + self.shortcut(x) if self.residual else out


class MobileNetV2Cifar(nn.Module):
    """3x3 stride-1 stem (32) -> 17 inverted residuals -> 1x1 conv (1280) -> pooled FC."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = conv_bn(in_channels, 32, 3)
        blocks, c_in = [], 32
        for t, c, n, s in _V2_CIFAR_STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c, t, s if i == 0 else 1))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.last = conv_bn(c_in, 1280, 1)
        self.head = PooledClassifier(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.blocks(self.stem(x))))


@register("mobilenet_v1")
def mobilenet_v1(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width_mult: float = 1.0,
                 **kw) -> nn.Module:
    """Returns MobileNet-V1 with width multiplier `width_mult` (Howard et al. 2017).

    ImageNet strides (stem stride 2, /32 overall) for input_size >= 128; below that the
    stem has stride 1 (/16 overall), the usual CIFAR adaptation. 4.23M parameters at
    width 1.0 with 1000 classes.
    """
    return init_weights(MobileNetV1(num_classes, in_channels, input_size, width_mult))


@register("mobilenet_v2")
def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kw) -> nn.Module:
    """Returns the CIFAR MobileNet-V2 of kuangliu/pytorch-cifar (Sandler et al. 2018): 2.30M parameters for 10 classes.

    Its strides (/8 overall) suit 32x32 inputs; the pooled head accepts any size >= 8.
    """
    return init_weights(MobileNetV2Cifar(num_classes, in_channels))
