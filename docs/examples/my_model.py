"""A model and a data set of your own, as collapsekit takes them (docs/own-model.md runs both).

`factory` is what `--model my_model:factory` calls: collapsekit passes the
keywords it accepts among num_classes, in_channels and input_size. `make_data`
builds a DataBundle from plain tensors, for the Python API (`ck.validate`,
`ck.finetune`, `collapsekit.validation.mtsearch.search_mt`).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class TinyResNet(nn.Module):
    """conv stem -> one residual block (bypassable) -> 1x1 expansion conv (a bottleneck) -> pooled linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(width))
        self.expand = nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width),
                                    nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.branch(h))  # the identity shortcut: the branch's convs are bypassable
        h = self.expand(h)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def factory(num_classes: int = 10, in_channels: int = 1, input_size: int = 8) -> nn.Module:
    """Returns a TinyResNet for [B, in_channels, S, S] images (any S: the head pools globally)."""
    torch.manual_seed(0)  # the same weights every call, so the docs' output repeats
    return TinyResNet(num_classes, in_channels)


def make_data(n_train: int = 512, n_test: int = 128, input_size: int = 8, seed: int = 0):
    """DataBundle: 4 classes of 1 x S x S noise images, the class being the brightest quadrant."""
    from torch.utils.data import TensorDataset

    from collapsekit.data import DataBundle

    g = torch.Generator().manual_seed(seed)
    half = input_size // 2

    def split(n: int):
        y = torch.randint(0, 4, (n,), generator=g)
        x = torch.randn(n, 1, input_size, input_size, generator=g) * 0.5
        for i, label in enumerate(y.tolist()):
            r, c = divmod(label, 2)
            x[i, 0, r * half:(r + 1) * half, c * half:(c + 1) * half] += 1.5
        return TensorDataset(x, y)

    return DataBundle(name="quadrants", train=split(n_train), test=split(n_test), num_classes=4, in_channels=1,
                      input_size=input_size)
