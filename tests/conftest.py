"""Shared fixtures: the tiniest models that show checkpoint and training behaviour, importable as `conftest:NAME`."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    # The test models are tiny: on 2 cores one intra-op thread is faster than two,
    # and subprocess tests (torchrun, resume) do not oversubscribe the machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_mlp(num_classes: int = 10, in_channels: int = 1, input_size: int = 8) -> nn.Module:
    """Flatten -> Linear(32) -> ReLU -> Linear(num_classes)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


def tiny_bn_cnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 8) -> nn.Module:
    """Conv -> BatchNorm (running stats are buffers) -> ReLU -> global pool -> Linear."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


class TiedNet(nn.Module):
    """Two Linear layers sharing one weight tensor (like tied embeddings)."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x).relu())


def tiny_loader(input_size=None, channels=None, seed=0):
    """A user's own data loader (`--data conftest:tiny_loader`): 4 classes of 1x8x8 blobs."""
    from collapsekit.data import DataBundle, load

    base = load("synthetic", seed=seed)
    keep = lambda ds: TensorDataset(*(t[ds.tensors[1] < 4] for t in ds.tensors))  # noqa: E731
    return DataBundle("tiny", keep(base.train), keep(base.test), 4, base.in_channels, base.input_size)


def zoo_names() -> list[str]:
    """The zoo's model names, or [] while `collapsekit.models` has no zoo yet."""
    try:
        from collapsekit.models import names

        return names()
    except Exception:  # noqa: BLE001 - the zoo is written in parallel
        return []


@pytest.fixture(scope="session")
def digits():
    """The digits DataBundle at its native 1x8x8, loaded once."""
    from collapsekit import data

    return data.load("digits")


@pytest.fixture(scope="module")
def dense(digits):
    """LeNet-300-100 trained two epochs on digits (about 0.9 test accuracy); one per test module."""
    from collapsekit import models
    from collapsekit.training.train import fit, seed_everything

    seed_everything(0)
    model = models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    fit(model, digits, epochs=2, lr=0.05, batch_size=64, device="cpu", seed=0, progress=False)
    return model
