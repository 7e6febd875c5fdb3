"""Seeded Gaussian class clusters in any image or sequence shape, for quick tests."""
from __future__ import annotations

import numpy as np

from collapsekit.data import DataBundle, bundle

NUM_CLASSES = 10
TRAIN_SIZE = 512
TEST_SIZE = 256
NOISE = 1.0  # per-element std around each class mean; class means are N(0, 1)


def _clusters(shape: tuple[int, ...], seed: int):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((NUM_CLASSES, *shape)).astype(np.float32)

    def draw(n):
        y = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)  # balanced classes
        x = means[y] + NOISE * rng.standard_normal((n, *shape)).astype(np.float32)
        return x, y

    x_train, y_train = draw(TRAIN_SIZE)
    x_test, y_test = draw(TEST_SIZE)
    return x_train, y_train, x_test, y_test


def load(path=None, input_size: int | None = None, channels: int | None = None, seed: int = 0) -> DataBundle:
    """Images [N, channels, input_size, input_size] (default 1x8x8) drawn around 10 seeded class means."""
    c, s = channels or 1, input_size or 8
    return bundle("synthetic", *_clusters((c, s, s), seed), num_classes=NUM_CLASSES, in_channels=c, input_size=s)


def load_seq(path=None, input_size: int | None = None, channels: int | None = None, seed: int = 0) -> DataBundle:
    """Sequences [N, input_size steps, channels features] (default 16x3) around 10 seeded class means."""
    f, t = channels or 3, input_size or 16
    return bundle("synthetic_seq", *_clusters((t, f), seed), num_classes=NUM_CLASSES, in_channels=f, input_size=t)
