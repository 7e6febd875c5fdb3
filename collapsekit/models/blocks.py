"""Building blocks shared by the zoo: conv-BN(-ReLU) units, the pooled classifier head, weight init."""
from __future__ import annotations

import torch
import torch.nn as nn


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
            groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Returns Conv2d (no bias, "same" padding) -> BatchNorm2d [-> ReLU] as one Sequential."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                  padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def bn_relu(channels: int) -> nn.Sequential:
    """Returns BatchNorm2d -> ReLU, the pre-activation unit of He et al. (2016b) and WideResNets."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())


class PooledClassifier(nn.Module):
    """Global average pool -> flatten -> Linear; any spatial size works (AdaptiveAvgPool2d(1))."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


def init_weights(model: nn.Module) -> nn.Module:
    """Returns `model` after Kaiming-normal init of convs (fan_out, relu; He et al. 2015), BN to (1, 0).

    Linear layers keep PyTorch's default init. Deterministic under torch.manual_seed.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
