"""Streamed analysis (Invariant 9): weights read from a safetensors checkpoint on demand equal the in-memory report."""
import json

import pytest
import torch
from safetensors.torch import save_file

import collapsekit as ck
from collapsekit.errors import CollapsekitError
from collapsekit.files.stream import INDEX_NAME, Checkpoint


def save(model, path, dtype=None, shards=1):
    """Writes `model`'s state dict as safetensors: one file, or `shards` files plus the HF index."""
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().clone()
             for k, v in model.state_dict().items()}
    if shards == 1:
        save_file(state, str(path))
        return path
    path.mkdir()
    names = list(state)
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(path / file))
        weight_map.update({k: file for k in part})
    (path / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def loaded(model, path):
    """`model` (float32) holding exactly the values stored at `path` (upcast from bf16 where stored so)."""
    source = Checkpoint(path)
    model.load_state_dict({k: source.read(k).to(v.dtype) for k, v in model.state_dict().items()})
    return model


def tiny_llama(device=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=32, use_cache=False,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        return LlamaForCausalLM(config).eval()


def zoo(device=None):
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        return ck.models.create("resnet20", num_classes=10, in_channels=3, input_size=16).eval()


@pytest.mark.parametrize("shards", [1, 3])
def test_streamed_zoo_report_equals_the_in_memory_one(tmp_path, shards):
    path = save(zoo(), tmp_path / ("model.safetensors" if shards == 1 else "sharded"), shards=shards)
    x = torch.randn(1, 3, 16, 16)
    memory = ck.analyze(loaded(zoo(), path), x, name="resnet20").to_dict()
    streamed = ck.analyze(zoo("meta"), x, checkpoint=path, name="resnet20").to_dict()
    assert streamed == memory
    assert 0.5 < memory["collapse_sparsity"] < 1.0 and memory["levels"][-1]["dead_channel_count"] > 0


@pytest.mark.parametrize("shards", [1, 2])
def test_streamed_bf16_llama_report_equals_the_in_memory_one(tmp_path, shards):
    path = save(tiny_llama(), tmp_path / ("model.safetensors" if shards == 1 else "sharded"), torch.bfloat16,
                shards)
    x = torch.randint(0, 97, (1, 6))
    memory = ck.analyze(loaded(tiny_llama(), path), x, name="llama")
    an = ck.Analysis(tiny_llama("meta"), x, checkpoint=path)
    streamed = an.report(name="llama")
    assert streamed.to_dict() == memory.to_dict()
    assert streamed.collapse_sparsity < 1.0
    # non-persistent buffers, not in the file: traced as zeros (the flow needs their shapes only)
    assert set(an.zero_filled) == {"model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"}
    streamed_masks = an.masks(0.9)
    memory_masks = ck.Analysis(loaded(tiny_llama(), path), x).masks(0.9)
    assert all(torch.equal(streamed_masks[n], memory_masks[n]) for n in memory_masks)


def test_streamed_analysis_leaves_the_meta_model_as_it_was(tmp_path):
    path = save(zoo(), tmp_path / "model.safetensors")
    model = zoo("meta")
    before = {k: (v.device, v.shape) for k, v in model.state_dict().items()}
    ck.analyze(model, torch.randn(1, 3, 16, 16), sparsities=[0.9], checkpoint=path)
    assert {k: (v.device, v.shape) for k, v in model.state_dict().items()} == before


def test_streamed_forecast_runs_on_the_checkpoints_values(tmp_path, dense, digits):
    # A data-needing question on a meta skeleton reads the real weights: same forecast as in memory.
    path = save(dense, tmp_path / "model.safetensors")
    with torch.device("meta"):
        skeleton = ck.models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    x = torch.randn(1, 1, 8, 8)
    streamed = ck.analyze(skeleton, x, sparsities=[0.9, 0.99], data=digits, checkpoint=path)
    memory = ck.analyze(dense, x, sparsities=[0.9, 0.99], data=digits)
    assert [lv.forecast.to_dict() for lv in streamed.levels] == [lv.forecast.to_dict() for lv in memory.levels]
    assert streamed.levels[0].forecast.evidence["signal"] > 0
    assert all(p.is_meta for p in skeleton.parameters())  # the user's skeleton stays as it was


def test_materialize_refuses_a_meta_buffer_the_checkpoint_lacks(tmp_path):
    from collapsekit.files.stream import materialize

    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    path = save(net, tmp_path / "model.safetensors")
    with torch.device("meta"):
        skeleton = torch.nn.Sequential(torch.nn.Linear(3, 2))
    skeleton.register_buffer("freqs", torch.empty(4, device="meta"), persistent=False)
    with pytest.raises(CollapsekitError, match="needs real values of freqs"):
        materialize(skeleton, Checkpoint(path))
    del skeleton._buffers["freqs"]
    real = materialize(skeleton, Checkpoint(path))
    assert torch.equal(real[0].weight, net[0].weight) and skeleton[0].weight.is_meta


def test_a_meta_model_without_checkpoint_is_a_one_line_error():
    with pytest.raises(CollapsekitError, match="meta device: pass checkpoint="):
        ck.analyze(zoo("meta"), torch.randn(1, 3, 16, 16))


def test_truncated_shard_names_the_file(tmp_path):
    path = save(zoo(), tmp_path / "sharded", shards=2)
    shard = sorted(path.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CollapsekitError, match=f"checkpoint shard {shard} is corrupt.*truncated") as err:
        ck.analyze(zoo("meta"), torch.randn(1, 3, 16, 16), checkpoint=path)
    assert "\n" not in str(err.value)


def test_corrupt_header_and_missing_shard_name_the_file(tmp_path):
    single = save(zoo(), tmp_path / "model.safetensors")
    single.write_bytes(b"\xff" * 8 + single.read_bytes()[8:])
    with pytest.raises(CollapsekitError, match=f"checkpoint shard {single} is corrupt"):
        ck.analyze(zoo("meta"), torch.randn(1, 3, 16, 16), checkpoint=single)
    path = save(zoo(), tmp_path / "sharded", shards=2)
    gone = sorted(path.glob("*.safetensors"))[0]
    gone.unlink()
    with pytest.raises(CollapsekitError, match=f"checkpoint shard {gone} named in {INDEX_NAME} not found"):
        ck.analyze(zoo("meta"), torch.randn(1, 3, 16, 16), checkpoint=path)


def test_checkpoint_of_another_model_is_refused_before_any_work(tmp_path):
    path = save(tiny_llama(), tmp_path / "model.safetensors")
    with pytest.raises(CollapsekitError, match="does not fit the model: .*missing"):
        ck.analyze(zoo("meta"), torch.randn(1, 3, 16, 16), checkpoint=path)


def test_cli_streams_a_factory_model_from_a_sharded_checkpoint(tmp_path, monkeypatch, capsys):
    from collapsekit.cli import main

    (tmp_path / "stream_factory.py").write_text(
        "from test_streaming import tiny_llama\n\ndef llama():\n    return tiny_llama()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = save(tiny_llama(), tmp_path / "sharded", torch.bfloat16, shards=2)
    from collapsekit.files import stream

    reads, read = [], stream.Checkpoint.read
    monkeypatch.setattr(stream.Checkpoint, "read", lambda self, name: reads.append(name) or read(self, name))
    code = main(["report", "--model", "stream_factory:llama", "--checkpoint", str(path), "--tokens", "6",
                 "--sparsity", "0.5", "0.9", "0.99", "--format", "json"])
    out, _ = capsys.readouterr()
    assert code == 0 and "lm_head.weight" in reads  # streamed, not loaded into the model
    doc = json.loads(out)
    x = {"input_ids": torch.randint(0, 97, (1, 6))}
    memory = ck.analyze(loaded(tiny_llama(), path), x, sparsities=[0.5, 0.9, 0.99], name="stream_factory:llama")
    assert doc == json.loads(json.dumps(memory.to_dict()))


def test_docs_streaming_example_prints_true(tmp_path, monkeypatch):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "large-models.md").read_text()
    source = doc.split("<!-- streaming-example -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    source = source.replace("/tmp/resnet20.safetensors", str(tmp_path / "resnet20.safetensors"))
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<docs/large-models.md>", "exec"), {"__name__": "__docs__"})  # noqa: S102
    assert out.getvalue().strip() == "True"


def test_read_maps_each_tensor_as_stored_and_never_writes_the_file(tmp_path):
    """Every dtype reads back as safetensors stores it; a tensor is a private view (a write changes this
    process's copy only); a bf16 tensor stored at an odd byte (a hand-written file) reads as a copy."""
    from safetensors.torch import load_file

    gen = torch.Generator().manual_seed(0)
    state = {"a_odd": torch.randint(0, 255, (3,), dtype=torch.uint8, generator=gen),
             "b_bf16": torch.randn(5, 7, generator=gen).to(torch.bfloat16),
             "c_f16": torch.randn(4, generator=gen).half(), "d_f64": torch.randn(2, 3, generator=gen).double(),
             "e_i64": torch.arange(6).view(2, 3), "f_bool": torch.tensor([True, False, True]),
             "g_empty": torch.zeros(0, 4), "h_f32": torch.randn(64, 65, generator=gen),
             "i_fp8": torch.randn(3, 5, generator=gen).to(torch.float8_e4m3fn)}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    before = path.read_bytes()
    source = Checkpoint(path)
    for name, want in state.items():
        got = source.read(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name  # bitwise (fp8 has no ==)
    big = source.read("h_f32")
    big.mul_(0)  # copy-on-write: the file keeps its bytes
    assert path.read_bytes() == before and torch.equal(load_file(str(path))["h_f32"], state["h_f32"])
    assert torch.equal(source.read("h_f32"), state["h_f32"])
    odd = tmp_path / "odd.safetensors"  # safetensors itself never writes this, other writers may
    values = torch.randn(2, 3, generator=gen).to(torch.bfloat16)
    header = json.dumps({"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                         "b": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [3, 15]}}).encode()
    header += b" " * (-len(header) % 8)
    data = bytes([1, 2, 3]) + values.view(torch.uint8).numpy().tobytes()
    odd.write_bytes(len(header).to_bytes(8, "little") + header + data)
    assert Checkpoint(odd).spans["b"][0] % 2 == 1
    assert torch.equal(Checkpoint(odd).read("b"), values) and Checkpoint(odd).read("a").tolist() == [1, 2, 3]


def test_a_shard_truncated_after_it_was_opened_is_a_one_line_error(tmp_path):
    path = save(zoo(), tmp_path / "model.safetensors")
    source = Checkpoint(path)
    name = max(source.spans, key=lambda n: source.spans[n][1])  # the tensor stored last
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(CollapsekitError, match=f"checkpoint shard {path} is corrupt: tensor {name} .*truncated"):
        source.read(name)


def test_a_streamed_report_reads_kept_positions_per_level_an_in_memory_one_once_for_all(tmp_path, monkeypatch):
    from collapsekit.analysis.magnitudes import MagnitudeIndex

    told = []
    real = MagnitudeIndex.expect_kept
    monkeypatch.setattr(MagnitudeIndex, "expect_kept", lambda self, allocs: told.append(len(allocs)) or
                        real(self, allocs))
    path = save(zoo(), tmp_path / "resnet20.safetensors")
    x = torch.randn(1, 3, 16, 16)
    ck.analyze(zoo("meta"), x, sparsities=[0.9, 0.99], checkpoint=path)
    assert told == []  # streamed: the densest level's read would be held from the first flow on (memory)
    ck.analyze(loaded(zoo(), path), x, sparsities=[0.9, 0.99])
    assert told[-1] == 2  # the report's own levels (the default 21 may have been told beside the trace)
    assert set(told[:-1]) <= {21}


def test_a_streamed_report_hands_freed_heap_back_more_often(tmp_path, monkeypatch):
    """Memory is what streaming is for: its flows trim the heap every STREAMED_STRETCH weights of work, an
    in-memory report every STRETCH, and the stretch in force is restored afterwards."""
    import collapsekit.analysis.analysis as analysis_mod
    from collapsekit.analysis import heap

    seen = []
    real = analysis_mod.run_flow

    def spy(*args, **kwargs):
        seen.append(heap._stretch[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis_mod, "run_flow", spy)
    monkeypatch.setattr(analysis_mod, "level_flows", lambda *args: None)  # every level its own flow
    path = save(zoo(), tmp_path / "model.safetensors")
    x = torch.randn(1, 3, 16, 16)
    ck.analyze(zoo("meta"), x, checkpoint=path, sparsities=[0.5, 0.9, 0.99])
    streamed, seen[:] = list(seen), []
    ck.analyze(loaded(zoo(), path), x, sparsities=[0.5, 0.9, 0.99])
    assert streamed and set(streamed) == {heap.STREAMED_STRETCH} and heap.STREAMED_STRETCH < heap.STRETCH
    assert seen and set(seen) == {heap.STRETCH}
    assert heap._stretch[0] == heap.STRETCH
