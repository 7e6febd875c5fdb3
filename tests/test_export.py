"""collapsekit.pruning.export and the format it writes (collapsekit.files.sparse): one sparse file with weights and
masks, bit-identical round trip, size, versions."""
import json
import os
import struct

import pytest
import torch
import torch.nn as nn
from conftest import TiedNet
from safetensors import safe_open
from safetensors.torch import load_file, save_file, save_model

import collapsekit as ck
from collapsekit.errors import CollapsekitError
from collapsekit.files import checkpoint
from collapsekit.pruning import masks as mask_io
from collapsekit.files.sparse import SEP, load_sparse, read_masks, read_sparse_meta
from collapsekit.pruning.export import save_sparse
from test_maskcode import entropy_bytes


def bits(t):
    return t.view({4: torch.int32, 2: torch.int16, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t


def assert_bit_identical(state, model):
    ref = model.state_dict()
    assert list(state) == list(ref)
    for k in ref:
        assert state[k].dtype == ref[k].dtype and state[k].shape == ref[k].shape, k
        assert torch.equal(bits(state[k]), bits(ref[k].contiguous())), k


def header(path) -> tuple[dict, dict]:
    """(tensor entries, metadata) of a safetensors file's header."""
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_slice(k).get_shape() for k in fh.keys()}, fh.metadata()


def test_round_trip_is_bit_identical_and_under_entropy_bound_at_90_percent(tmp_path):
    torch.manual_seed(0)
    model = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=28)
    with torch.no_grad():
        model.fc3.weight.mul_(1e-3)  # pruned to MT's 4 weights
    result = ck.prune(model, 0.9, mt=4)
    path = save_sparse(model, result.masks, tmp_path / "sparse.safetensors", meta={"model": "lenet_300_100"})
    dense = tmp_path / "dense.safetensors"
    save_model(model, str(dense))
    size = os.path.getsize(path)
    assert size <= 0.12 * os.path.getsize(dense)  # a bitmask alone made 13.1 %
    # the floor: kept values, each mask's entropy n * H(density) (Shannon), the biases as they are
    entropy = sum(entropy_bytes(m) for m in result.masks.values())
    floor = 4 * sum(int(m.sum()) for m in result.masks.values()) + entropy + 4 * (300 + 100 + 10)
    assert floor <= size <= floor + 0.03 * entropy + 2048, (size, floor)
    state, masks = load_sparse(path, with_masks=True)
    assert_bit_identical(state, model)
    assert list(masks) == list(result.masks)
    assert all(torch.equal(masks[n], result.masks[n]) for n in result.masks)
    entries, meta = header(path)
    assert meta["format"] == "collapsekit-sparse" and meta["format_version"] == "2"
    layout = json.loads(meta["layout"])
    shape, dtype, code, _k, kept, _size = layout["sparse"]["fc3.weight"]
    assert (shape, dtype, code, kept) == ([10, 100], "float32", "rice", 4)
    assert layout["sparse"]["fc1.weight"][2] == "rice"  # near-random positions: the gap code wins
    # one values tensor per dtype and one of mask codes, not two entries per layer
    assert sorted(k for k in entries if k.startswith(SEP)) == [SEP + "masks", SEP + "values.float32"]
    assert entries[SEP + "values.float32"] == [sum(int(m.sum()) for m in result.masks.values())]
    assert "fc1.bias" in entries and "fc1.bias" not in layout["sparse"]  # dense, as it is
    assert read_sparse_meta(path) == {"model": "lenet_300_100"}
    fresh = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=28)
    fresh.load_state_dict(ck.load_sparse(path))  # the public name: a plain state_dict
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(fresh(x), model(x))


def test_batch_norm_buffers_negative_zero_and_other_dtypes(tmp_path):
    torch.manual_seed(0)
    model = ck.models.create("resnet20", num_classes=10, in_channels=3, input_size=8)
    result = ck.prune(model, 0.8)
    with torch.no_grad():  # what a mul_ by the mask leaves on negative pruned weights
        w = model.get_parameter("stem.0.weight")
        w[~result.masks["stem.0.weight"]] = -0.0
    assert bool((bits(w) == bits(torch.tensor(-0.0))).any())
    state = load_sparse(save_sparse(model, result.masks, tmp_path / "r.safetensors"))
    for k, ref in model.state_dict().items():
        if k == "stem.0.weight":
            assert torch.equal(state[k], ref)  # equal as numbers; pruned entries come back +0.0
            assert bool((bits(state[k][~result.masks[k]]) == 0).all())
        else:
            assert torch.equal(bits(state[k]), bits(ref)), k
    assert state["stem.1.num_batches_tracked"].dtype == torch.int64
    # half precision and an emptied layer (no kept value, an empty code) round-trip too
    net = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 5), nn.Linear(5, 3)).to(torch.bfloat16)
    net[2].to(torch.float16)
    keep = {"0.weight": torch.rand(20, 30) < 0.2, "1.weight": torch.zeros(5, 20, dtype=torch.bool),
            "2.weight": torch.ones(3, 5, dtype=torch.bool)}
    with torch.no_grad():
        for name, m in keep.items():
            net.get_parameter(name).mul_(m).add_(0.0)
    path = save_sparse(net, keep, tmp_path / "h.safetensors")
    state, masks = load_sparse(path, with_masks=True)
    assert_bit_identical(state, net)
    assert all(torch.equal(masks[n], keep[n]) for n in keep)
    entries, _ = header(path)
    assert {SEP + "values.bfloat16", SEP + "values.float16"} <= set(entries)


def test_tied_weights_are_stored_once_and_come_back_as_aliases(tmp_path):
    torch.manual_seed(0)
    tied = TiedNet(width=20)
    r = ck.prune(tied, 0.5)
    assert list(r.masks) == ["a.weight"]  # a shared tensor counts once
    path = save_sparse(tied, r.masks, tmp_path / "t.safetensors")
    entries, meta = header(path)
    assert json.loads(meta["layout"])["alias"] == {"b.weight": "a.weight"} and "b.weight" not in entries
    state = load_sparse(path)
    assert list(state) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert state["b.weight"] is state["a.weight"]
    assert torch.equal(bits(state["b.weight"]), bits(tied.a.weight.detach()))
    fresh = TiedNet(width=20)
    checkpoint.load_into(fresh, path)
    assert fresh.b.weight is fresh.a.weight and torch.equal(fresh.a.weight, tied.a.weight)


def test_masks_load_reads_the_sparse_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    result = ck.prune(model, 0.95)
    path = save_sparse(model, result.masks, tmp_path / "p.safetensors")
    for masks in (read_masks(path), mask_io.load(path), ck.masks.load(path)):
        assert list(masks) == list(result.masks)
        assert all(torch.equal(masks[n], result.masks[n]) for n in masks)


def test_checkpoint_loader_and_meta_take_the_sparse_file(tmp_path):
    torch.manual_seed(0)
    model = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    result = ck.prune(model, 0.9)
    meta = {"model": "lenet_300_100", "num_classes": 10, "in_channels": 1, "input_size": 8,
            checkpoint.SHA_KEY: "0" * 64}  # a dense parent's hash must not be checked against this file
    path = save_sparse(model, result.masks, tmp_path / "p.safetensors", meta=meta)
    assert checkpoint.read_meta(path) == meta  # no sidecar: the header's meta
    fresh = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    checkpoint.load_into(fresh, path)
    assert_bit_identical(fresh.state_dict(), model)
    wrong = ck.models.create("lenet_300_100", num_classes=7, in_channels=1, input_size=8)
    with pytest.raises(CollapsekitError, match="does not fit"):
        checkpoint.load_into(wrong, path)


def test_refuses_unmasked_weights_and_foreign_files(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    keep = {"0.weight": torch.rand(8, 8) > 0.5}
    with pytest.raises(CollapsekitError, match="apply the masks"):
        save_sparse(model, keep, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left
    with pytest.raises(CollapsekitError, match="do not fit"):
        save_sparse(model, {"0.weight": torch.ones(8, 9, dtype=torch.bool)}, tmp_path / "x.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_model(model, str(plain))
    with pytest.raises(CollapsekitError, match="not a collapsekit sparse checkpoint"):
        load_sparse(plain)


def _one_line(exc_info, path) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_truncated_file_and_newer_version_give_one_line_naming_the_file(tmp_path):
    torch.manual_seed(0)
    model = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    result = ck.prune(model, 0.9)
    good = save_sparse(model, result.masks, tmp_path / "g.safetensors").read_bytes()
    header_end = 8 + struct.unpack("<Q", good[:8])[0]
    cut = tmp_path / "cut.safetensors"
    for size in (3, 100, header_end - 10, header_end + 10, len(good) - 1):
        cut.write_bytes(good[:size])
        for read in (load_sparse, read_masks, mask_io.load, read_sparse_meta):
            with pytest.raises(CollapsekitError) as exc_info:
                read(cut)
            assert "corrupt" in _one_line(exc_info, cut) or "not a collapsekit" in str(exc_info.value)
        with pytest.raises(CollapsekitError) as exc_info:
            checkpoint.load_into(ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8), cut)
        assert "corrupt" in _one_line(exc_info, cut)
    # a newer format_version is refused, not misread
    with safe_open(str(tmp_path / "g.safetensors"), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = fh.metadata()
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={**meta, "format_version": "3"})
    for read in (load_sparse, read_masks, mask_io.load, read_sparse_meta):
        with pytest.raises(CollapsekitError, match="format_version 3, newer than the 2") as exc_info:
            read(newer)
        _one_line(exc_info, newer)
    # a code whose bytes were damaged (here: swapped for another layer's size) fails on its own line too
    layout = json.loads(meta["layout"])
    layout["sparse"]["fc1.weight"][4] += 1  # one more kept entry than the code holds
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "layout": json.dumps(layout)})
    with pytest.raises(CollapsekitError, match="corrupt") as exc_info:
        load_sparse(bad)
    _one_line(exc_info, bad)


def test_format_version_1_files_still_load(tmp_path):
    from collapsekit.pruning.masks import pack

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 2))
    result = ck.prune(model, 0.9)
    w0, w1 = (model.get_parameter(n).detach() for n in ("0.weight", "1.weight"))
    m0, m1 = result.masks["0.weight"], result.masks["1.weight"]
    tensors = {"0.weight::values": w0[m0], "0.weight::bitmask": pack(m0),
               "1.weight::values": w1[m1], "1.weight::index": torch.nonzero(m1.reshape(-1)).reshape(-1).to(torch.int32),
               "0.bias": model[0].bias.detach(), "1.bias": model[1].bias.detach()}
    layout = {"order": list(model.state_dict()), "alias": {},
              "sparse": {"0.weight": ["bitmask", [30, 40], "float32"], "1.weight": ["index", [2, 30], "float32"]}}
    old = tmp_path / "v1.safetensors"
    save_file(tensors, str(old), metadata={"format": "collapsekit-sparse", "version": "1",
                                           "layout": json.dumps(layout), "meta": "{}"})
    state, masks = load_sparse(old, with_masks=True)
    assert_bit_identical(state, model)
    assert torch.equal(masks["0.weight"], m0) and torch.equal(masks["1.weight"], m1)


def test_cli_prune_writes_one_file_and_export_makes_it_plain(tmp_path, capsys):
    from collapsekit.cli import main

    out = tmp_path / "run"
    assert main(["prune", "--model", "resnet20", "--input-size", "8", "--sparsity", "0.9", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["prune.json", "pruned.safetensors"]
    pruned = out / "pruned.safetensors"
    masks = mask_io.load(pruned)
    assert read_sparse_meta(pruned)["prune"]["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert main(["prune", "--model", "resnet20", "--input-size", "8", "--sparsity", "0.9", "--out",
                 str(tmp_path / "again"), "--masks-file", str(tmp_path / "m.safetensors")]) == 0
    again = mask_io.load(tmp_path / "again" / "pruned.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(mask_io.load(tmp_path / "m.safetensors").values(), again.values()))
    capsys.readouterr()
    dense = tmp_path / "plain" / "dense.safetensors"
    assert main(["export", "--checkpoint", str(pruned), "--dense", str(dense),
                 "--masks-file", str(tmp_path / "m2.safetensors")]) == 0
    printed = capsys.readouterr().out.splitlines()  # every file written, the sidecar too
    assert printed == [f"wrote {dense}", f"wrote {dense.with_suffix('.json')}", f"wrote {tmp_path / 'm2.safetensors'}"]
    plain = load_file(str(dense))  # any safetensors reader
    state = load_sparse(pruned)
    assert sorted(plain) == sorted(state)
    assert all(torch.equal(bits(plain[k]), bits(state[k])) for k in state)
    assert all(torch.equal(a, b) for a, b in zip(mask_io.load(tmp_path / "m2.safetensors").values(), masks.values()))
    # the sidecar names the model, so collapsekit reads the plain file back as a checkpoint
    assert checkpoint.read_meta(dense)["model"] == "resnet20"
    assert main(["prune", "--checkpoint", str(dense), "--sparsity", "0.9", "--out", str(tmp_path / "re")]) == 0
    assert all(torch.equal(a, b) for a, b in zip(mask_io.load(tmp_path / "re" / "pruned.safetensors").values(),
                                                 masks.values()))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(pruned.read_bytes()[:-7])
    assert main(["export", "--checkpoint", str(cut), "--dense", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(cut) in err and "corrupt" in err
    assert main(["export", "--checkpoint", str(pruned)]) == 2
    assert "nothing to write" in capsys.readouterr().err


@pytest.mark.parametrize("name, bound", [("resnet20", 0.15), ("wrn_16_2", 0.125)])
def test_everything_prune_writes_is_small_at_90_percent(tmp_path, name, bound):
    """Random-init weights (near-random masks, the hard case for a mask code): pruned.safetensors + prune.json."""
    from collapsekit.cli import main

    torch.manual_seed(0)
    dense = tmp_path / "dense.safetensors"
    save_model(ck.models.create(name, num_classes=10, in_channels=3, input_size=32), str(dense))
    out = tmp_path / "out"
    assert main(["prune", "--model", name, "--input-size", "32", "--sparsity", "0.9", "--out", str(out),
                 "--format", "json"]) == 0
    written = sum(os.path.getsize(p) for p in out.iterdir())
    assert written <= bound * os.path.getsize(dense), written / os.path.getsize(dense)


def test_finetune_from_the_pruned_file_keeps_its_masks_and_writes_one_file(tmp_path):
    from collapsekit.cli import main

    out, ft = tmp_path / "p", tmp_path / "ft"
    assert main(["prune", "--model", "lenet_300_100", "--num-classes", "10", "--in-channels", "1", "--input-size",
                 "8", "--sparsity", "0.9", "--out", str(out), "--format", "json"]) == 0
    pruned = out / "pruned.safetensors"
    assert main(["finetune", "--checkpoint", str(pruned), "--data", "digits", "--sparsity", "0.9", "--epochs", "1",
                 "--device", "cpu", "--no-progress", "--out", str(ft), "--format", "json"]) == 0
    assert not (ft / "masks.safetensors").exists()  # the masks travel inside the model file
    before, after = mask_io.load(pruned), mask_io.load(ft / "model.safetensors")
    assert list(after) == list(before) and all(torch.equal(after[n], before[n]) for n in before)
    tuned, start = load_sparse(ft / "model.safetensors"), load_sparse(pruned)
    assert not torch.equal(tuned["fc1.weight"], start["fc1.weight"])  # the kept weights moved
    assert all(bool((tuned[n][~before[n]] == 0).all()) for n in before)
