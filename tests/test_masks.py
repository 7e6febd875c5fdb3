"""collapsekit.pruning.masks: bit-packed mask files and torch.nn.utils.prune interop (Invariant 6: no pickles)."""
import os
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune

import collapsekit as ck
from collapsekit.pruning import masks as mask_io
from collapsekit.errors import CollapsekitError


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 7), nn.ReLU(),
                         nn.Linear(7, 3))


def test_save_load_round_trip_is_exact_and_below_one_bit(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"a.weight": torch.rand(5, 3, 3, 3, generator=g) > 0.5,  # 135: not a multiple of 8
             "b.weight": torch.zeros(7, 1, dtype=torch.bool),
             "c.weight": torch.ones(1000, 10, dtype=torch.bool),
             "d.weight": torch.rand(300, 100, generator=g) < 0.1}
    path = mask_io.save(masks, tmp_path / "m.safetensors")
    back = mask_io.load(path)
    assert list(back) == list(masks)
    for name in masks:
        assert back[name].dtype == torch.bool and torch.equal(back[name], masks[name])
    # a: ~1 bit per weight (density 0.5); b, c: nothing; d: Rice near H(0.1) = 0.47 bit, not 1
    payload = (135 + 7) // 8 + 0.5 * 30_000 / 8
    assert (135 + 7) // 8 + 0.47 * 30_000 / 8 <= os.path.getsize(path) <= payload + 1024


def test_version_1_mask_files_load_and_newer_ones_are_refused(tmp_path):
    import json

    from safetensors.torch import save_file

    masks = {"w": torch.rand(9, 4) > 0.5}
    old = tmp_path / "v1.safetensors"
    save_file({"w": mask_io.pack(masks["w"])}, str(old),
              metadata={"format": "collapsekit-masks", "version": "1", "shapes": json.dumps({"w": [9, 4]})})
    assert torch.equal(mask_io.load(old)["w"], masks["w"])
    newer = tmp_path / "v9.safetensors"
    save_file({"w": mask_io.pack(masks["w"])}, str(newer),
              metadata={"format": "collapsekit-masks", "format_version": "9", "shapes": "{}"})
    with pytest.raises(CollapsekitError, match=r"v9.safetensors has format_version 9, newer") as exc_info:
        mask_io.load(newer)
    assert "\n" not in str(exc_info.value)


def test_load_rejects_other_files_and_never_unpickles(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    with pytest.raises(CollapsekitError, match="not a collapsekit mask file"):
        mask_io.load(other)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CollapsekitError):
        mask_io.load(evil)
    assert not marker.exists()
    truncated = tmp_path / "t.safetensors"
    good = mask_io.save({"w": torch.ones(100, dtype=torch.bool)}, tmp_path / "g.safetensors")
    truncated.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(CollapsekitError, match="corrupt"):
        mask_io.load(truncated)
    with pytest.raises(CollapsekitError, match="not found"):
        mask_io.load(tmp_path / "missing.safetensors")


def test_torch_prune_round_trip():
    model = small_net()
    result = ck.prune(model, 0.8)
    x = torch.randn(4, 3, 8, 8)
    expected = model(x).detach()
    pruned_state = {k: v.clone() for k, v in model.state_dict().items()}
    twin = small_net()
    mask_io.to_torch_prune(twin, result.masks)
    # torch's form: weight_orig parameter + weight_mask buffer, weight recomputed on forward
    assert hasattr(twin[0], "weight_orig") and torch.equal(twin[0].weight_mask.bool(), result.masks["0.weight"])
    assert torch.allclose(twin(x), expected)
    back = mask_io.from_torch_prune(twin)
    assert list(back) == list(result.masks)
    assert all(torch.equal(back[n], result.masks[n]) for n in back)
    assert not any(name.endswith(("_orig", "_mask")) for name, _ in twin.named_parameters())
    assert not any(name.endswith("_mask") for name, _ in twin.named_buffers())
    assert not twin[0]._forward_pre_hooks
    for name, value in twin.state_dict().items():  # plain pruned weights, +0.0 where pruned
        assert torch.equal(value.view(torch.int32), pruned_state[name].view(torch.int32)), name


def test_from_torch_prune_reads_torch_global_pruning():
    model = small_net()
    params = [(model[0], "weight"), (model[3], "weight"), (model[5], "weight")]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.75)
    masks = mask_io.from_torch_prune(model)
    assert sorted(masks) == ["0.weight", "3.weight", "5.weight"]
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.75 * total)
    for name, keep in masks.items():
        assert bool((model.get_parameter(name)[~keep] == 0).all())
    with pytest.raises(CollapsekitError, match="no torch.nn.utils.prune"):
        mask_io.from_torch_prune(model)


def test_to_torch_prune_checks_masks_first():
    model = small_net()
    with pytest.raises(CollapsekitError, match="do not fit"):
        mask_io.to_torch_prune(model, {"0.weight": torch.ones(5, 3, 2, 2, dtype=torch.bool)})
    assert not hasattr(model[0], "weight_orig")
