"""collapsekit.pruning.export: one-file sparse checkpoints, bit-identical round trip, size at 90 % sparsity."""
import json
import os

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_model

import collapsekit as ck
from collapsekit.errors import CollapsekitError
from collapsekit.pruning.export import load_sparse, read_sparse_meta, save_sparse


def bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def assert_bit_identical(state, model):
    ref = model.state_dict()
    assert list(state) == list(ref)
    for k in ref:
        assert state[k].dtype == ref[k].dtype and state[k].shape == ref[k].shape, k
        assert torch.equal(bits(state[k]), bits(ref[k].contiguous())), k


def test_round_trip_is_bit_identical_and_small_at_90_percent(tmp_path):
    torch.manual_seed(0)
    model = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=28)
    with torch.no_grad():
        model.fc3.weight.mul_(1e-3)  # pruned to ~0 %: stored as an index, not a bitmask
    result = ck.prune(model, 0.9, mt=4)
    path = save_sparse(model, result.masks, tmp_path / "sparse.safetensors", meta={"model": "lenet_300_100"})
    dense = tmp_path / "dense.safetensors"
    save_model(model, str(dense))
    ratio = os.path.getsize(path) / os.path.getsize(dense)
    assert ratio <= 0.15, ratio
    # 10 % of the values (4 bytes) + 1 bit per weight = 13.1 % of dense float32, plus biases
    assert ratio >= 0.10
    state, masks = load_sparse(path, with_masks=True)
    assert_bit_identical(state, model)
    assert all(torch.equal(masks[n], result.masks[n]) for n in result.masks)
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        layout = json.loads(fh.metadata()["layout"])
    assert layout["sparse"]["fc3.weight"] == ["index", [10, 100], "float32"] and "fc3.weight::index" in keys
    assert layout["sparse"]["fc1.weight"][0] == "bitmask" and "fc1.weight::bitmask" in keys
    assert "fc1.bias" not in layout["sparse"] and "fc1.bias" in keys  # dense
    assert read_sparse_meta(path) == {"model": "lenet_300_100"}
    fresh = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=28)
    fresh.load_state_dict(state)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(fresh(x), model(x))


def test_batch_norm_buffers_tied_weights_and_negative_zero(tmp_path):
    torch.manual_seed(0)
    model = ck.models.create("resnet20", num_classes=10, in_channels=3, input_size=8)
    result = ck.prune(model, 0.8)
    with torch.no_grad():  # a mul_-style mask step leaves -0.0 on negative pruned weights
        w = model.get_parameter("stem.0.weight")
        w.mul_(result.masks["stem.0.weight"])
    state = load_sparse(save_sparse(model, result.masks, tmp_path / "r.safetensors"))
    for k, ref in model.state_dict().items():
        if k == "stem.0.weight":
            assert torch.equal(state[k], ref)  # equal as numbers; the zero's sign is not stored
        else:
            assert torch.equal(bits(state[k]), bits(ref)), k
    assert state["stem.1.num_batches_tracked"].dtype == torch.int64

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(20, 20)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x))

    tied = Tied()
    r = ck.prune(tied, 0.5)
    state = load_sparse(save_sparse(tied, r.masks, tmp_path / "t.safetensors"))
    assert list(state) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert torch.equal(bits(state["b.weight"]), bits(tied.a.weight.detach()))


def test_refuses_unmasked_weights_and_foreign_files(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    keep = {"0.weight": torch.rand(8, 8) > 0.5}
    with pytest.raises(CollapsekitError, match="apply the masks"):
        save_sparse(model, keep, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(CollapsekitError, match="do not fit"):
        save_sparse(model, {"0.weight": torch.ones(8, 9, dtype=torch.bool)}, tmp_path / "x.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_model(model, str(plain))
    with pytest.raises(CollapsekitError, match="not a collapsekit sparse checkpoint"):
        load_sparse(plain)
    good = save_sparse(model, {"0.weight": torch.ones(8, 8, dtype=torch.bool)}, tmp_path / "g.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(CollapsekitError, match="corrupt"):
        load_sparse(cut)
