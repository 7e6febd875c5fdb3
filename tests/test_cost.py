"""count_macs: every weight applied as a matrix product counts (modules, F.linear, x @ w, addmm), dense and kept."""
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis.cost import count_macs, forward_macs
from collapsekit.analysis.trace import trace


class MatrixProducts(nn.Module):
    """Bare weight matrices: x @ w ([in, out], as Hugging Face's Conv1D stores it) and x @ v.t() ([out, in])."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 5))
        self.v_weight = nn.Parameter(torch.randn(4, 5))

    def forward(self, x):
        return torch.relu(x @ self.w) @ self.v_weight.t()


def test_a_hand_written_matrix_product_counts_its_output_times_the_contracted_axis():
    torch.manual_seed(0)
    model = MatrixProducts()
    traced = trace(model, torch.randn(1, 3, 6))  # 3 positions of 6 features
    macs = count_macs(traced)
    assert macs["w"] == {"weight": "w", "dense": 3 * 6 * 5, "kept": 3 * 6 * 5}
    assert macs["v_weight"] == {"weight": "v_weight", "dense": 3 * 5 * 4, "kept": 3 * 5 * 4}
    assert forward_macs(traced) == 90 + 60
    masks = {"w": torch.zeros(6, 5, dtype=torch.bool), "v_weight": torch.ones(4, 5, dtype=torch.bool)}
    masks["w"][:2] = True  # 10 of 30 kept: each of the 3 positions multiplies 10 weights
    kept = count_macs(traced, masks)
    assert kept["w"]["kept"] == 3 * 10 and kept["v_weight"]["kept"] == 60


class LowRank(nn.Module):
    """a @ b, two parameters in one product: 6 x 5 outputs of 2 products each, counted once (not once per operand)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(6, 2))
        self.b = nn.Parameter(torch.randn(2, 5))

    def forward(self, x):
        return x + (self.a @ self.b).sum()


def test_a_product_of_two_parameters_counts_once():
    traced = trace(LowRank(), torch.randn(1, 6))
    assert count_macs(traced) == {"b": {"weight": "b", "dense": 6 * 5 * 2, "kept": 6 * 5 * 2}}


def test_gpt2_conv1d_and_tied_head_are_counted():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=32))
    tokens = 8
    traced = trace(model, torch.randint(0, 100, (1, tokens)))
    result = ck.prune(model, 0.9)
    macs = count_macs(traced, result.masks)
    conv1d = {f"transformer.h.{i}.{m}": shape for i in range(2) for m, shape in
              [("attn.c_attn", (32, 96)), ("attn.c_proj", (32, 32)), ("mlp.c_fc", (32, 128)), ("mlp.c_proj", (128, 32))]}
    assert set(conv1d) < set(macs)
    for module, (fan_in, fan_out) in conv1d.items():
        entry = macs[module]
        assert entry["dense"] == tokens * fan_in * fan_out
        assert entry["kept"] == tokens * int(result.masks[entry["weight"]].sum())
    # The head is the embedding's tensor (not prunable): 8 tokens x 100 x 32, all kept.
    assert macs["lm_head"] == {"weight": "lm_head.weight", "dense": tokens * 100 * 32, "kept": tokens * 100 * 32}
    dense = sum(e["dense"] for e in macs.values())
    assert dense == tokens * 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + tokens * 100 * 32
    assert 0 < sum(e["kept"] for e in macs.values()) < dense
