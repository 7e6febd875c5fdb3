"""LeNet-300-100 and LeNet-5 (LeCun et al. 1998), the small baselines of the pruning literature."""
from __future__ import annotations

import torch
import torch.nn as nn

from collapsekit.models.registry import register
from collapsekit.models.blocks import init_weights


class LeNet300100(nn.Module):
    """Fully connected in -> 300 -> 100 -> classes on the flattened image (LeCun et al. 1998)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * input_size * input_size, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(torch.flatten(x, 1)))
        return self.fc3(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    """Two 5x5 conv + max-pool stages, then FC 120 -> 84 -> classes (LeCun et al. 1998).

    conv1 has padding 2 (the MNIST convention: 28x28 behaves like the original 32x32,
    61,706 parameters). conv2 is unpadded, as in the original, for inputs >= 16; smaller
    inputs (8x8 digits) give it padding 2 too, else it would have no valid output position.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28):
        super().__init__()
        pad2 = 0 if input_size >= 16 else 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = (input_size // 2 + 2 * pad2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register("lenet_300_100")
def lenet_300_100(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kw) -> nn.Module:
    """Returns LeNet-300-100 (LeCun et al. 1998); 266,610 parameters on 1x28x28 with 10 classes."""
    return init_weights(LeNet300100(num_classes, in_channels, input_size))


@register("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kw) -> nn.Module:
    """Returns LeNet-5 (LeCun et al. 1998), padded to work from 8x8 up; 61,706 parameters on 1x28x28."""
    return init_weights(LeNet5(num_classes, in_channels, input_size))
