"""UCI HAR (Human Activity Recognition Using Smartphones) raw inertial windows, and its binary HAR-2 variant."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from collapsekit.data import DataBundle, bundle, check_sequence_shape
from collapsekit.errors import CollapsekitError

FOLDER = "UCI HAR Dataset"
# The 9 raw signals in the usual order (body acc, body gyro, total acc; x, y, z).
SIGNALS = [f"{kind}_{axis}" for kind in ("body_acc", "body_gyro", "total_acc") for axis in "xyz"]
STEPS = 128  # 2.56 s windows at 50 Hz
# UCI labels: 1 WALKING, 2 WALKING_UPSTAIRS, 3 WALKING_DOWNSTAIRS, 4 SITTING, 5 STANDING, 6 LAYING.
# HAR-2 asks "is the person moving?": labels 1-3 -> 0 (moving), 4-6 -> 1 (stationary).
HAR2_CLASSES = ("moving", "stationary")
_HINT = "download the UCI HAR Dataset and pass --data-path"


def _root(path: Path | None, name: str) -> Path:
    if path is None:
        raise CollapsekitError(f"{name}: no data path given ({_HINT})")
    for root in (path, path / FOLDER):
        if (root / "train" / "y_train.txt").is_file():
            return root
    raise CollapsekitError(f"{name}: expected train/y_train.txt in {path} or {path / FOLDER} ({_HINT})")


def _read(file: Path, name: str, root: Path) -> np.ndarray:
    if not file.is_file():
        raise CollapsekitError(f"{name}: expected {file.relative_to(root)} in {root} ({_HINT})")
    try:
        return np.loadtxt(file, dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise CollapsekitError(f"{name}: {file} is not a table of numbers ({exc})") from None


def read_split(root: Path, split: str, name: str = "har") -> tuple[np.ndarray, np.ndarray]:
    """(inputs float32 [N, 128, 9], labels int64 [N] in 0..5) of the `train` or `test` split."""
    signals = [_read(root / split / "Inertial Signals" / f"{s}_{split}.txt", name, root) for s in SIGNALS]
    labels = _read(root / split / f"y_{split}.txt", name, root).reshape(-1).astype(np.int64)
    shapes = {s.shape for s in signals}
    if len(shapes) != 1 or signals[0].shape[0] != labels.shape[0]:
        raise CollapsekitError(f"{name}: {split} signal files and y_{split}.txt disagree on the number of windows "
                               f"({sorted(shapes)} vs {labels.shape[0]} labels)")
    if labels.size and (labels.min() < 1 or labels.max() > 6):
        raise CollapsekitError(f"{name}: y_{split}.txt holds labels outside 1..6")
    return np.stack(signals, axis=-1), labels - 1


def _load(path, input_size, channels, name: str, binary: bool) -> DataBundle:
    check_sequence_shape(name, STEPS, len(SIGNALS), input_size, channels)
    root = _root(path, name)
    x_train, y_train = read_split(root, "train", name)
    x_test, y_test = read_split(root, "test", name)
    # Standardise each signal with train statistics over all windows and steps.
    mean = x_train.mean(axis=(0, 1), keepdims=True)
    std = x_train.std(axis=(0, 1), keepdims=True) + 1e-8
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    num_classes = 6
    if binary:
        y_train, y_test = (y_train >= 3).astype(np.int64), (y_test >= 3).astype(np.int64)
        num_classes = 2
    return bundle(name, x_train, y_train, x_test, y_test, num_classes=num_classes,
                  in_channels=x_train.shape[2], input_size=x_train.shape[1])


def load(path=None, input_size: int | None = None, channels: int | None = None, seed: int = 0) -> DataBundle:
    """UCI HAR: 6 activities, inputs [N, 128 steps, 9 signals] standardised per signal (7352 train / 2947 test)."""
    return _load(path, input_size, channels, "har", binary=False)


def load_har2(path=None, input_size: int | None = None, channels: int | None = None, seed: int = 0) -> DataBundle:
    """HAR-2: UCI HAR as moving (walking, upstairs, downstairs) -> 0 vs stationary (sitting, standing, laying) -> 1."""
    return _load(path, input_size, channels, "har2", binary=True)
