"""collapsekit.data: shapes, splits and normalisation of each data set; safe CIFAR unpickling; clear errors."""
from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch

from collapsekit import data
from collapsekit.data import cifar10, har
from collapsekit.errors import CollapsekitError


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_names_lists_every_loader():
    assert data.names() == ["cifar10", "digits", "har", "har2", "synthetic", "synthetic_seq", "text"]
    with pytest.raises(CollapsekitError, match="unknown data set 'mnist'; known: cifar10, digits"):
        data.load("mnist")


# ---------------------------------------------------------------- digits

def test_digits_split_shapes_and_types(digits):
    x_train, y_train = digits.train.tensors
    x_test, y_test = digits.test.tensors
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert (digits.num_classes, digits.in_channels, digits.input_size) == (10, 1, 8)
    assert digits.example_input().shape == (1, 1, 8, 8)
    assert torch.equal(digits.example_input()[0], x_test[0])
    # Stratified: 1797 digits hold 174..183 per class, so each class gets 35 or 36 test images.
    counts = torch.bincount(y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37 and counts.sum() == 360


def test_digits_standardised_with_train_statistics(digits):
    x_train, x_test = digits.train.tensors[0], digits.test.tensors[0]
    assert abs(x_train.mean().item()) < 1e-5
    assert abs(x_train.std(unbiased=False).item() - 1.0) < 1e-4
    # Undoing the scaling gives back the raw 0..16 pixel counts: the scale was /16, then (x - mean) / std.
    from sklearn.datasets import load_digits

    raw = load_digits().images / 16.0
    mean, std = raw.mean(), raw.std()  # not the train statistics: only close
    assert abs(mean - 0.3) < 0.05 and abs(std - 0.4) < 0.1
    x = torch.cat([x_train, x_test]).flatten(1).numpy()
    lo = x.min()  # the standardised value of a blank pixel
    pixels = (x - lo) / (np.sort(np.unique(x))[1] - lo)  # in units of 1/16
    assert np.allclose(pixels, np.round(pixels), atol=1e-3) and pixels.max() == pytest.approx(16, abs=1e-3)


def test_digits_split_ignores_seed_and_resizes():
    a, b = data.load("digits", seed=0), data.load("digits", seed=7)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.test.tensors[1], b.test.tensors[1])
    big = data.load("digits", input_size=32, channels=3)
    assert big.train.tensors[0].shape == (1437, 3, 32, 32)
    assert (big.in_channels, big.input_size) == (3, 32)
    x = big.test.tensors[0]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # gray repeated
    # Bilinear upsampling keeps the image mean to within the border effect.
    assert torch.allclose(x[:, 0].mean((1, 2)), a.test.tensors[0][:, 0].mean((1, 2)), atol=0.05)
    assert torch.equal(big.test.tensors[1], a.test.tensors[1])


# ---------------------------------------------------------------- cifar10

def _write_batch(file, images: np.ndarray, labels: list[int], protocol: int = 2) -> None:
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": images.reshape(len(labels), -1),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    with open(file, "wb") as fh:
        pickle.dump(batch, fh, protocol=protocol)


def _write_cifar(root, n: int = 4, protocol: int = 2):
    """Tiny CIFAR-10 python batches in `root`; returns (train images, train labels, test images, test labels)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        _write_batch(root / f"data_batch_{i}", x, y, protocol)
        xs.append(x)
        ys += y
    xt = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    xt[0] = 255
    _write_batch(root / "test_batch", xt, [9, 0, 5], protocol)
    return np.concatenate(xs), ys, xt, [9, 0, 5]


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_reads_python_batches(tmp_path, protocol):
    x, y, xt, yt = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    bundle = data.load("cifar10", path=tmp_path)  # the parent folder works...
    assert bundle.train.tensors[0].shape == (20, 3, 32, 32) and bundle.test.tensors[0].shape == (3, 3, 32, 32)
    assert bundle.train.tensors[1].tolist() == y and bundle.test.tensors[1].tolist() == yt
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 3, 32)
    white = bundle.test.tensors[0][0]
    for c in range(3):
        assert torch.allclose(white[c], torch.full((32, 32), (1 - cifar10.MEAN[c]) / cifar10.STD[c]))
    expected = (torch.from_numpy(x[7]).float() / 255 - torch.tensor(cifar10.MEAN).view(3, 1, 1)) \
        / torch.tensor(cifar10.STD).view(3, 1, 1)
    assert torch.allclose(bundle.train.tensors[0][7], expected, atol=1e-6)
    same = data.load("cifar10", path=tmp_path / "cifar-10-batches-py")  # ...and so does the folder itself
    assert torch.equal(same.train.tensors[0], bundle.train.tensors[0])
    small = data.load("cifar10", path=tmp_path, input_size=16, channels=1)
    assert small.train.tensors[0].shape == (20, 1, 16, 16)


class _Evil:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("call", [os.system, eval])
def test_cifar10_refuses_pickled_code(tmp_path, call):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar(root)
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w')"
    with open(root / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": _Evil(call, arg), b"labels": [1]}, fh, protocol=2)
    with pytest.raises(CollapsekitError) as exc:
        data.load("cifar10", path=tmp_path)
    msg = _one_line(exc)
    assert "data_batch_3" in msg and "refusing to load" in msg
    # protocol 2 names them posix.system / __builtin__.eval
    assert re.search(rf"refusing to load \w+\.{call.__name__}: a CIFAR-10 batch holds only numpy arrays", msg)
    assert not marker.exists()


def test_cifar10_refuses_codecs_with_other_encodings(tmp_path):
    # _codecs.encode is allowed only for the latin1 strings Python 3 uses to pickle bytes.
    file = tmp_path / "batch"
    with open(file, "wb") as fh:
        pickle.dump(_Evil(__import__("_codecs").encode, "x", "utf-16"), fh, protocol=2)
    raw = file.read_bytes()
    assert b"_codecs" in raw
    with pytest.raises(CollapsekitError, match="latin1"):
        cifar10.read_batch(file)


def test_cifar10_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CollapsekitError) as exc:
        data.load("cifar10", path=tmp_path / "nowhere")
    msg = _one_line(exc)
    assert msg == (f"cifar10: expected data_batch_1 in {tmp_path / 'nowhere'} or "
                   f"{tmp_path / 'nowhere' / 'cifar-10-batches-py'} "
                   "(download the CIFAR-10 python version and pass --data-path)")
    with pytest.raises(CollapsekitError, match="no data path given"):
        data.load("cifar10")
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar(root)
    (root / "test_batch").unlink()
    with pytest.raises(CollapsekitError, match=f"expected test_batch in {root}"):
        data.load("cifar10", path=tmp_path)
    raw = (root / "data_batch_2").read_bytes()
    (root / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CollapsekitError) as exc:
        data.load("cifar10", path=tmp_path)
    assert "data_batch_2 is corrupt or not a CIFAR-10 python batch" in _one_line(exc)
    with open(root / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(CollapsekitError, match=r"expected b'data' uint8 \[n, 3072\]"):
        data.load("cifar10", path=tmp_path)


# ---------------------------------------------------------------- har

def _write_har(parent, n_train: int = 12, n_test: int = 6, steps: int = 128):
    """Tiny UCI HAR layout under parent/'UCI HAR Dataset'; returns {split: (signals [N, T, 9], labels 1..6)}."""
    rng = np.random.default_rng(1)
    root = parent / har.FOLDER
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split / "Inertial Signals").mkdir(parents=True)
        signals = []
        for k, name in enumerate(har.SIGNALS):
            values = rng.normal(k, k + 1, (n, steps)).astype(np.float32)  # signal k: mean k, std k + 1
            np.savetxt(root / split / "Inertial Signals" / f"{name}_{split}.txt", values, fmt="%.7e")
            signals.append(values)
        labels = np.arange(n) % 6 + 1
        np.savetxt(root / split / f"y_{split}.txt", labels, fmt="%d")
        out[split] = (np.stack(signals, -1), labels)
    return root, out


def test_har_reads_inertial_signals(tmp_path):
    root, raw = _write_har(tmp_path)
    bundle = data.load("har", path=tmp_path)
    x_train, y_train = bundle.train.tensors
    assert x_train.shape == (12, 128, 9) and bundle.test.tensors[0].shape == (6, 128, 9)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (6, 9, 128)
    assert y_train.tolist() == (raw["train"][1] - 1).tolist()
    # Each signal standardised with its train mean and std, in SIGNALS order.
    train = raw["train"][0]
    mean, std = train.mean((0, 1)), train.std((0, 1))
    assert np.allclose(x_train.numpy(), (train - mean) / std, atol=1e-4)
    assert np.allclose(bundle.test.tensors[0].numpy(), (raw["test"][0] - mean) / std, atol=1e-4)
    assert bundle.example_input().shape == (1, 128, 9)
    assert torch.equal(data.load("har", path=root).train.tensors[0], x_train)


def test_har2_maps_moving_to_0_and_stationary_to_1(tmp_path):
    _write_har(tmp_path)
    bundle = data.load("har2", path=tmp_path)
    assert bundle.num_classes == 2 and bundle.name == "har2"
    # labels 1..6 repeat: walking, upstairs, downstairs -> 0; sitting, standing, laying -> 1
    assert bundle.train.tensors[1].tolist() == [0, 0, 0, 1, 1, 1] * 2


def test_har_errors(tmp_path):
    with pytest.raises(CollapsekitError) as exc:
        data.load("har", path=tmp_path)
    assert _one_line(exc) == (f"har: expected train/y_train.txt in {tmp_path} or {tmp_path / 'UCI HAR Dataset'} "
                              "(download the UCI HAR Dataset and pass --data-path)")
    root, _ = _write_har(tmp_path)
    with pytest.raises(CollapsekitError, match="sequences have 128 steps"):
        data.load("har", path=tmp_path, input_size=32)
    (root / "test" / "Inertial Signals" / "body_gyro_y_test.txt").unlink()
    with pytest.raises(CollapsekitError) as exc:
        data.load("har2", path=tmp_path)
    assert "har2: expected test/Inertial Signals/body_gyro_y_test.txt in" in _one_line(exc)


# ---------------------------------------------------------------- synthetic

def test_synthetic_shapes_and_seeds():
    a = data.load("synthetic", input_size=5, channels=2, seed=3)
    assert a.train.tensors[0].shape == (512, 2, 5, 5) and a.test.tensors[0].shape == (256, 2, 5, 5)
    assert torch.bincount(a.train.tensors[1]).tolist() == [52] * 2 + [51] * 8
    assert torch.equal(a.train.tensors[0], data.load("synthetic", input_size=5, channels=2, seed=3).train.tensors[0])
    other = data.load("synthetic", input_size=5, channels=2, seed=4)
    assert not torch.equal(a.train.tensors[0], other.train.tensors[0])
    seq = data.load("synthetic_seq", input_size=20, channels=4)
    assert seq.train.tensors[0].shape == (512, 20, 4) and (seq.in_channels, seq.input_size) == (4, 20)
    assert data.native_shape("synthetic_seq") == (10, 3, 16)


def test_own_loader_by_spec_trains_through_the_cli(tmp_path, capsys):
    from collapsekit.cli import main

    bundle = data.load("conftest:tiny_loader")
    assert bundle.num_classes == 4 and int(bundle.train.tensors[1].max()) == 3
    code = main(["train", "--model", "conftest:tiny_mlp", "--data", "conftest:tiny_loader", "--num-classes", "4",
                 "--in-channels", "1", "--input-size", "8", "--epochs", "2", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    assert code == 0 and (tmp_path / "run" / "model.safetensors").is_file()
    with pytest.raises(CollapsekitError, match="not a collapsekit.data.DataBundle"):
        data.load("conftest:tiny_mlp", input_size=8, channels=1)
    with pytest.raises(CollapsekitError, match="data loader 'conftest:tiny_mlp' failed: TypeError"):
        data.load("conftest:tiny_mlp")
    with pytest.raises(CollapsekitError, match="cannot import module"):
        data.load("no_such_module:loader")
