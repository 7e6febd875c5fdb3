"""CIFAR-10 from the standard python batches, read by an unpickler that can only rebuild numpy arrays."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from collapsekit.data import DataBundle, bundle, fit_images
from collapsekit.errors import CollapsekitError

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
FOLDER = "cifar-10-batches-py"
# Per-channel mean and std of the 50,000 training images (pixel values in [0, 1]).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
_HINT = "download the CIFAR-10 python version and pass --data-path"


def _reconstruct():
    try:  # numpy >= 2 renamed numpy.core to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(text, encoding="latin1"):
    # Python 3 pickles (protocol <= 2) store bytes as _codecs.encode(str, 'latin1');
    # only that exact, harmless call is honoured.
    if encoding != "latin1" or not isinstance(text, str):
        raise CollapsekitError("refusing _codecs.encode with anything but a latin1 string")
    return text.encode("latin1")


# Every global the real batches need; find_class refuses anything else, so a
# crafted file cannot reach os.system, eval, builtins.getattr and the like.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals in _ALLOWED."""

    def find_class(self, module, name):
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise CollapsekitError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only numpy arrays")
        return factory()


def read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 3, 32, 32], labels int64 [n]) from one CIFAR-10 python batch, executing no pickled code."""
    try:
        with open(file, "rb") as fh:
            # The batches were pickled by Python 2: str keys arrive as bytes.
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except CollapsekitError as exc:
        raise CollapsekitError(f"cifar10: {file}: {exc}") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise CollapsekitError(f"cifar10: {file} is corrupt or not a CIFAR-10 python batch "
                               f"({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise CollapsekitError(f"cifar10: {file} is not a CIFAR-10 python batch (holds {type(batch).__name__})")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or labels is None:
        raise CollapsekitError(f"cifar10: {file} is not a CIFAR-10 python batch "
                               "(expected b'data' uint8 [n, 3072] and b'labels')")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise CollapsekitError(f"cifar10: {file} has {labels.size} labels for {data.shape[0]} images "
                               "or labels outside 0..9")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels


def _root(path: Path | None) -> Path:
    if path is None:
        raise CollapsekitError(f"cifar10: no data path given ({_HINT})")
    for root in (path, path / FOLDER):
        if (root / TRAIN_FILES[0]).is_file():
            return root
    raise CollapsekitError(f"cifar10: expected {TRAIN_FILES[0]} in {path} or {path / FOLDER} ({_HINT})")


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def load(path=None, input_size: int | None = None, channels: int | None = None, seed: int = 0) -> DataBundle:
    """CIFAR-10 (50,000 train / 10,000 test, 3x32x32) normalised with the standard per-channel mean and std."""
    root = _root(path)
    parts = {}
    for split, files in (("train", TRAIN_FILES), ("test", [TEST_FILE])):
        xs, ys = [], []
        for name in files:
            file = root / name
            if not file.is_file():
                raise CollapsekitError(f"cifar10: expected {name} in {root} ({_HINT})")
            x, y = read_batch(file)
            xs.append(x)
            ys.append(y)
        parts[split] = (fit_images(_normalise(np.concatenate(xs)), "cifar10", input_size, channels),
                        np.concatenate(ys))
    x_train, y_train = parts["train"]
    x_test, y_test = parts["test"]
    return bundle("cifar10", x_train, y_train, x_test, y_test, num_classes=10,
                  in_channels=x_train.shape[1], input_size=x_train.shape[-1])
