"""The digits data set bundled with scikit-learn: 1797 real 8x8 handwritten digits, no download."""
from __future__ import annotations

import numpy as np
import torch

from collapsekit.data import DataBundle, bundle, fit_images

TEST_SIZE = 360  # 1437 train / 360 test, stratified
SPLIT_SEED = 0  # the split never depends on the run's seed, so accuracies stay comparable


def load(path=None, input_size: int | None = None, channels: int | None = None, seed: int = 0) -> DataBundle:
    """Digits as 1x8x8 images in [0, 1], standardised with the train split's mean and std.

    `input_size` (e.g. 32 for CIFAR-shaped nets) upsamples bilinearly after
    standardising; `channels=3` repeats the gray channel. `path` and `seed` are unused.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # pixel values are 0..16
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED)
    # One scalar mean/std (like per-channel image normalisation): per-pixel
    # statistics would divide the always-blank border pixels by ~0.
    mean, std = float(x_train.mean()), float(x_train.std())
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    x_train = fit_images(torch.from_numpy(x_train), "digits", input_size, channels)
    x_test = fit_images(torch.from_numpy(x_test), "digits", input_size, channels)
    return bundle("digits", x_train, y_train, x_test, y_test, num_classes=10,
                  in_channels=x_train.shape[1], input_size=x_train.shape[-1])
