"""Lazy modules: the analysis initialises a copy (the user's model stays lazy), pruning initialises the model itself."""
import json

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis.lazy import lazy_modules
from collapsekit.cli import main
from collapsekit.errors import CollapsekitError


def lazy_net(num_classes: int = 10, in_channels: int = 1, input_size: int = 8):
    """A factory whose layers learn their input sizes on the first forward."""
    return nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(16), nn.ReLU(),
                         nn.LazyLinear(num_classes))


X = torch.randn(2, 1, 8, 8)


def test_analyze_initialises_a_copy_and_leaves_the_model_and_the_random_state_as_they_were():
    model = lazy_net()
    state = torch.get_rng_state()
    report = ck.analyze(model, X, sparsities=[0.9])
    assert [(layer.name, layer.numel) for layer in report.layers] == [
        ("0.weight", 4 * 1 * 3 * 3), ("3.weight", 16 * 4 * 6 * 6), ("5.weight", 10 * 16)]
    assert lazy_modules(model) == ["0", "3", "5"]  # Invariant 7: still uninitialised
    assert torch.equal(torch.get_rng_state(), state)


def test_prune_initialises_the_model_itself_with_the_weights_the_analysis_saw():
    model = lazy_net()
    with pytest.raises(CollapsekitError, match="lazy modules 0, 3, 5 have no weights yet: run one forward"):
        ck.prune(model, 0.9)
    predicted = ck.Analysis(model, X).masks(0.9)
    result = ck.prune(model, 0.9, example_inputs=X)
    assert lazy_modules(model) == []
    assert predicted.keys() == result.masks.keys()
    assert all(torch.equal(predicted[name], result.masks[name]) for name in predicted)
    assert sum(int(m.sum()) for m in result.masks.values()) == round(0.1 * (36 + 2304 + 160))


def test_a_forward_that_fails_is_one_line():
    with pytest.raises(CollapsekitError, match="a forward of the example input to initialise them failed"):
        ck.analyze(lazy_net(), torch.randn(2, 1, 2, 2), sparsities=[0.9])  # smaller than the 3x3 kernel


@pytest.mark.parametrize("command", ["report", "prune"])
def test_the_cli_takes_a_lazy_factory(capsys, tmp_path, command):
    out = ["--out", str(tmp_path)] if command == "prune" else []
    code = main([command, "--model", f"{__name__}:lazy_net", "--sparsity", "0.9", "--format", "json", *out])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    document = json.loads(stdout)
    assert [layer["name"] for layer in document["layers"]] == ["0.weight", "3.weight", "5.weight"]
    if command == "prune":
        assert document["macs"]["dense"] == 36 * 36 + 2304 + 160


@pytest.mark.parametrize("command", ["report", "prune"])  # report streams the file; prune loads it
def test_a_lazy_factory_takes_its_shapes_from_a_checkpoint(capsys, tmp_path, command):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = lazy_net()
    model(X)  # the user's own first forward: shapes and weights
    path = tmp_path / "lazy.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    out = ["--out", str(tmp_path / "pruned")] if command == "prune" else []
    code = main([command, "--model", f"{__name__}:lazy_net", "--checkpoint", str(path), "--sparsity", "0.9",
                 "--format", "json", *out])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    document = json.loads(stdout)
    if command == "report":
        expected = {layer.name: layer.critical_sparsity for layer in ck.analyze(model, X, sparsities=[0.9]).layers}
        assert {layer["name"]: layer["critical_sparsity"] for layer in document["layers"]} == expected
    else:
        kept = {name: int(m.sum()) for name, m in ck.prune(model, 0.9).masks.items()}
        assert {layer["name"]: layer["kept"] for layer in document["layers"]} == kept
