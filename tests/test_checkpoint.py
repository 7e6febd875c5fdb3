"""collapsekit.files.checkpoint and collapsekit.training.device: exact round trips, sidecars, and one-line errors for bad files."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn
from conftest import TiedNet, tiny_bn_cnn, tiny_mlp, zoo_names

from collapsekit.files import checkpoint
from collapsekit.training.device import resolve_device
from collapsekit.errors import CollapsekitError


def _trained_bn_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = tiny_bn_cnn()
    model.train()
    for _ in range(3):  # moves running_mean/var and num_batches_tracked off their defaults
        model(torch.randn(16, 1, 8, 8) * 3 + 1)
    return model.eval()


def _message(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_round_trip_is_bit_identical_with_bn_buffers(tmp_path):
    model = _trained_bn_cnn()
    assert model[1].num_batches_tracked.item() == 3
    meta = {"model": "conftest:tiny_bn_cnn", "num_classes": 10, "accuracy": 0.5, "path": tmp_path}
    path = checkpoint.save(model, tmp_path / "run" / "model.safetensors", meta)
    assert path == tmp_path / "run" / "model.safetensors" and path.is_file()
    fresh = tiny_bn_cnn()
    assert not torch.equal(fresh[1].running_mean, model[1].running_mean)
    checkpoint.load_into(fresh.eval(), path)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), fresh(x))
    side = json.loads((tmp_path / "run" / "model.json").read_text())
    assert side["accuracy"] == 0.5 and side["path"] == str(tmp_path) and len(side["weights_sha256"]) == 64
    assert checkpoint.read_meta(path) == side
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_read_meta_without_sidecar_and_with_a_bad_one(tmp_path):
    path = checkpoint.save(tiny_mlp(), tmp_path / "m.safetensors", {})
    os.remove(tmp_path / "m.json")
    assert checkpoint.read_meta(path) == {}
    checkpoint.load_into(tiny_mlp(), path)  # weights alone still load
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CollapsekitError, match=r"checkpoint metadata .*m.json is not valid JSON"):
        checkpoint.read_meta(path)


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = TiedNet()
    path = checkpoint.save(model, tmp_path / "tied.safetensors", {})
    fresh = TiedNet()
    checkpoint.load_into(fresh, path)
    assert fresh.a.weight is fresh.b.weight
    assert torch.equal(fresh.a.weight, model.a.weight) and torch.equal(fresh.b.bias, model.b.bias)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        assert sorted(fh.keys()) == ["a.bias", "a.weight", "b.bias"]


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_corrupt_or_truncated_file(tmp_path, damage):
    path = checkpoint.save(tiny_mlp(), tmp_path / "model.safetensors", {})
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) - 100], "empty": b"", "garbage": b"\x07" * 500}[damage])
    model = tiny_mlp()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(CollapsekitError) as exc:
        checkpoint.load_into(model, path)
    assert _message(exc).startswith(f"checkpoint {path} is corrupt or truncated: ")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_flipped_payload_byte_is_caught_by_the_sidecar_hash(tmp_path):
    path = checkpoint.save(tiny_mlp(), tmp_path / "model.safetensors", {})
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # inside the last tensor: the header still parses
    path.write_bytes(bytes(raw))
    with pytest.raises(CollapsekitError, match="corrupt or truncated: its sha256 differs"):
        checkpoint.load_into(tiny_mlp(), path)


def test_weights_that_do_not_fit(tmp_path):
    path = checkpoint.save(tiny_mlp(num_classes=10), tmp_path / "model.safetensors", {})
    model = tiny_mlp(num_classes=5)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(CollapsekitError) as exc:
        checkpoint.load_into(model, path)
    assert _message(exc) == (f"checkpoint {path} does not fit the model (Sequential): shape mismatch: "
                             "3.weight [10, 32] vs model [5, 32], 3.bias [10] vs model [5]")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # untouched
    with pytest.raises(CollapsekitError, match=r"shape mismatch: 1.weight \[32, 64\] vs model \[8\], 1.bias .*; "
                                               r"missing: 0.weight, 0.bias, 1.running_mean and 4 more; "
                                               r"unexpected: 3.bias, 3.weight$"):
        checkpoint.load_into(tiny_bn_cnn(), path)
    with pytest.raises(CollapsekitError, match=f"checkpoint {tmp_path / 'nope.safetensors'} not found"):
        checkpoint.load_into(model, tmp_path / "nope.safetensors")


def test_plain_torch_state_dict_loads_with_weights_only(tmp_path):
    model = _trained_bn_cnn(seed=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "m.pt")
    fresh = checkpoint.load_into(tiny_bn_cnn(), tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"w": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CollapsekitError, match="holds pickled .*, not a state_dict of tensors, and collapsekit never unpickles"):
        checkpoint.load_into(tiny_bn_cnn(), tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "bad.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:300])
    with pytest.raises(CollapsekitError, match="is corrupt or truncated"):
        checkpoint.load_into(tiny_bn_cnn(), tmp_path / "bad.pt")


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1", "fastgrnn"])
def test_zoo_round_trip(tmp_path, name):
    if name not in zoo_names():
        pytest.skip(f"zoo model {name} not available yet")
    from collapsekit.models import create

    torch.manual_seed(0)
    model = create(name, num_classes=10, in_channels=1, input_size=8)
    path = checkpoint.save(model, tmp_path / "m.safetensors", {"model": name})
    torch.manual_seed(1)
    fresh = checkpoint.load_into(create(name, num_classes=10, in_channels=1, input_size=8), path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else resolve_device("auto").type)
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(CollapsekitError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(CollapsekitError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_save_state_writes_a_plain_file_with_tied_names_each_written_out(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = TiedNet()
    state = model.state_dict()
    assert state["a.weight"].data_ptr() == state["b.weight"].data_ptr()
    path = checkpoint.save_state(state, tmp_path / "plain.safetensors", {"model": "conftest:TiedNet"})
    plain = load_file(str(path))  # no aliases in a plain file: both names, equal values
    assert sorted(plain) == sorted(state) and all(torch.equal(plain[k], state[k]) for k in state)
    assert checkpoint.read_meta(path)["model"] == "conftest:TiedNet"
    fresh = TiedNet()
    checkpoint.load_into(fresh, path)
    assert fresh.b.weight is fresh.a.weight and torch.equal(fresh.a.weight, model.a.weight)


def test_views_of_one_buffer_are_saved_each_with_its_own_values(tmp_path):
    from safetensors.torch import load_file

    from collapsekit.files.safefile import separate_storages

    base = torch.arange(12.0).reshape(3, 4)
    state = {"whole": base, "row": base[1], "columns": base[:, 1:3], "empty": torch.zeros(0), "again": torch.zeros(0)}
    separate = separate_storages(state)
    assert separate["whole"] is base and separate["empty"] is state["empty"] and separate["again"] is state["again"]
    assert separate["row"].data_ptr() != base.data_ptr() and separate["columns"].is_contiguous()
    plain = load_file(str(checkpoint.save_state(state, tmp_path / "views.safetensors", {})))
    assert all(torch.equal(plain[k], v) for k, v in state.items())
