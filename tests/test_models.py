"""Tests for collapsekit.models: the zoo's names, shapes, parameter counts, fx-traceability, resolve()."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.fx
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.models import create, names, resolve
from collapsekit.models.resnet import resnet
from collapsekit.models.wrn import wrn

ZOO = ["fastgrnn", "lenet5", "lenet_300_100", "llama_tiny", "mobilenet_v1", "mobilenet_v2", "resnet20", "resnet32",
       "resnet56", "wrn_16_2", "wrn_16_4", "wrn_28_10", "wrn_28_8"]
CLASSIFIERS = [name for name in ZOO if name != "llama_tiny"]  # llama_tiny takes token ids (its own test below)
# (in_channels, input_size, num_classes): sklearn digits, CIFAR-10.
SHAPES = {"digits": (1, 8, 10), "cifar": (3, 32, 10)}
BATCH = 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def zoo_model(name: str, shape: str) -> nn.Module:
    """One seeded eval-mode model per (name, shape), shared by the tests that only read it."""
    in_channels, input_size, num_classes = SHAPES[shape]
    torch.manual_seed(0)
    return create(name, num_classes=num_classes, in_channels=in_channels, input_size=input_size).eval()


@pytest.fixture(autouse=True, scope="module")
def _free_cached_models():
    yield
    zoo_model.cache_clear()  # the WRN-28s alone hold ~60M parameters


def example_input(name: str, shape: str) -> torch.Tensor:
    in_channels, input_size, _ = SHAPES[shape]
    gen = torch.Generator().manual_seed(1)
    if name == "fastgrnn":  # [B, T, F] with T = input_size, F = in_channels
        return torch.randn(BATCH, input_size, in_channels, generator=gen)
    return torch.randn(BATCH, in_channels, input_size, input_size, generator=gen)


def tiny_factory(num_classes):
    """A user factory that takes only num_classes, for resolve("module:factory")."""
    return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))


def test_names_lists_the_whole_zoo():
    assert names() == sorted(ZOO)


def test_unknown_name_raises_with_the_zoo_listed():
    with pytest.raises(CollapsekitError) as info:
        create("resnet1000")
    for name in ZOO:
        assert name in str(info.value)


# ---- parameter counts, pinned exactly and against the papers' figures (within 2 %) ----

@pytest.mark.parametrize("name, kwargs, exact, paper", [
    ("wrn_28_8", {}, 23_354_842, 23.4e6),
    ("wrn_28_10", {}, 36_479_194, 36.5e6),
    ("mobilenet_v1", dict(num_classes=1000, input_size=224), 4_231_976, 4.2e6),
    ("mobilenet_v2", {}, 2_296_922, 2.3e6),     # kuangliu/pytorch-cifar count
    # Option-B projections add 2,752 weights over option A's 269,722 (both "0.27M").
    ("resnet20", {}, 272_474, 0.27e6),
    ("resnet56", {}, 855_770, 0.85e6),          # option A: 853,018
    ("lenet_300_100", dict(in_channels=1, input_size=28), 266_610, 266_610),
    ("lenet5", dict(in_channels=1, input_size=28), 61_706, 61_706),
])
def test_parameter_counts_match_the_papers(name, kwargs, exact, paper):
    count = n_params(create(name, **kwargs))
    assert count == exact
    assert abs(count - paper) / paper < 0.02


def test_smaller_variants_and_plain_functions_agree_with_the_zoo():
    assert n_params(create("resnet32")) == 466_906
    assert n_params(create("wrn_16_2")) == 691_674
    assert n_params(create("wrn_16_4")) == 2_748_890
    assert n_params(wrn(16, 2)) == n_params(create("wrn_16_2"))
    assert n_params(resnet(20)) == n_params(create("resnet20"))
    assert n_params(resnet(110)) == 1_730_714  # option A: 1,727,962 (He et al.: 1.7M)
    with pytest.raises(ValueError):
        wrn(27, 2)


def test_mobilenet_v1_strides_and_width_multiplier():
    small, large = create("mobilenet_v1", input_size=32), create("mobilenet_v1", input_size=224)
    assert small.stem[0].stride == (1, 1) and large.stem[0].stride == (2, 2)
    half = create("mobilenet_v1", num_classes=1000, input_size=224, width_mult=0.5)
    assert half.stem[0].out_channels == 16 and half.head.fc.in_features == 512
    assert n_params(half) == 1_331_592  # Howard et al. Table 6: 1.3M


# ---- forward shapes and fx traces for every zoo model ----

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_gives_one_logit_per_class(name, shape):
    with torch.no_grad():
        out = zoo_model(name, shape)(example_input(name, shape))
    assert out.shape == (BATCH, SHAPES[shape][2])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_fx_trace_matches_eager(name, shape):
    model = zoo_model(name, shape)
    traced = torch.fx.symbolic_trace(model)
    x = example_input(name, shape)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


def test_prunable_layers_are_traced_as_modules():
    """Every Conv2d/Linear appears as a call_module node, so the graph sees each prunable weight."""
    for name in ("resnet20", "wrn_16_2", "mobilenet_v2", "fastgrnn"):
        model = zoo_model(name, "cifar")
        traced = torch.fx.symbolic_trace(model)
        called = {n.target for n in traced.graph.nodes if n.op == "call_module"}
        prunable = {k for k, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        assert prunable <= called


# ---- init ----

def test_init_is_deterministic_and_follows_the_recipe():
    torch.manual_seed(3)
    a = create("resnet20")
    torch.manual_seed(3)
    b = create("resnet20")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    bn = a.stem[1]
    assert torch.equal(bn.weight, torch.ones(16)) and torch.equal(bn.bias, torch.zeros(16))
    # Kaiming normal, fan_out, relu: std = sqrt(2 / (out_channels * k * k)).
    w = create("wrn_16_4").groups[2][0].conv2.weight  # 256 x 256 x 3 x 3
    expected_std = (2 / (256 * 9)) ** 0.5
    assert abs(w.std().item() - expected_std) < 0.02 * expected_std


# ---- FastGRNN ----

def test_fastgrnn_classifies_fixed_length_sequences():
    model = create("fastgrnn", num_classes=6, in_channels=9, input_size=128, hidden_size=16)
    # W 9x16, U 16x16, two biases, zeta, nu, classifier 16x6 + 6.
    assert n_params(model) == 144 + 256 + 32 + 2 + 102
    x = torch.randn(5, 128, 9)
    out = model(x)
    assert out.shape == (5, 6)
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), out, rtol=0, atol=0)
    # U is applied once per step after the first, each a call to the same prunable module.
    traced = torch.fx.symbolic_trace(model)
    assert sum(n.op == "call_module" and n.target == "U" for n in traced.graph.nodes) == 127


# ---- resolve ----

def test_resolve_takes_zoo_names_and_user_factories():
    assert n_params(resolve("wrn_16_2")) == 691_674
    model = resolve(f"{__name__}:tiny_factory", num_classes=3, in_channels=1, input_size=2)
    assert model(torch.randn(2, 1, 2, 2)).shape == (2, 3)


@pytest.mark.parametrize("spec", ["collapsekit_no_such_module:factory", f"{__name__}:no_such_factory",
                                  f"{__name__}:BATCH"])
def test_resolve_bad_spec_raises(spec):
    with pytest.raises(CollapsekitError):
        resolve(spec)


def test_llama_tiny_is_a_small_causal_lm_that_takes_the_text_bundles_vocabulary():
    pytest.importorskip("transformers")
    from collapsekit.data.tasks import model_logits

    torch.manual_seed(0)
    # A text bundle offers vocab_size and context_length; the factory takes both.
    model = resolve("llama_tiny", num_classes=300, in_channels=1, input_size=16,
                    offered={"vocab_size": 300, "context_length": 16}).eval()
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert (config.vocab_size, config.max_position_embeddings) == (300, 16)
    ids = torch.randint(0, 300, (2, 16))
    logits = model_logits(model(ids))
    assert logits.shape == (2, 16, 300)
    # Causal: the logits at step t do not change when a later token does.
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 300
    assert torch.allclose(model_logits(model(changed))[:, :10], logits[:, :10], atol=1e-5)
    assert not torch.allclose(model_logits(model(changed))[:, 10], logits[:, 10])
