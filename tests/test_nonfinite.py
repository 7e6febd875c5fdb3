"""nonfinite.py: a division by a pruned norm is predicted from the masks, and a real prune + forward agrees."""
import copy

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.analysis.analysis import Analysis
from collapsekit.views.render import report_to_text
from invariants import assert_unchanged, snapshot


class WeightNormed(nn.Module):
    """A conv whose weight is normalised per output filter (dim=0) between two plain layers."""

    def __init__(self, legacy: bool = False):
        super().__init__()
        self.a = nn.Conv1d(4, 8, 3, padding=1)
        conv = nn.Conv1d(8, 8, 5, padding=2)
        self.b = nn.utils.weight_norm(conv, dim=0) if legacy else nn.utils.parametrizations.weight_norm(conv, dim=0)
        self.fc = nn.Linear(8 * 16, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).flatten(1))


class DividesByNorm(nn.Module):
    """x / ||w_row|| written in forward (a cosine-style head), and a guarded twin that never divides by 0."""

    def __init__(self, guarded: bool = False):
        super().__init__()
        self.guarded = guarded
        self.a = nn.Linear(6, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        norm = self.a.weight.norm(dim=1)
        if self.guarded:
            scale = torch.where(norm > 0, 1 / norm, torch.zeros_like(norm))
            return self.fc(self.a(x) * scale)
        return self.fc(self.a(x) / norm)


def observed_non_finite(model, example, sparsity) -> bool:
    """Really prune a copy and run it: does any output element come out NaN or inf?"""
    pruned = copy.deepcopy(model)
    ck.prune(pruned, sparsity=sparsity)
    with torch.no_grad():
        out = pruned(**example) if isinstance(example, dict) else pruned(example)
    out = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
    return not bool(out.isfinite().all())


def check_both_sides(model, example, sparsities):
    """The report's non_finite at each level equals a real prune + forward; both answers occur."""
    snap = snapshot(model)
    report = ck.analyze(model, example, sparsities=sparsities)
    assert_unchanged(model, snap)  # the probes read the weights, never write them (Invariant 7)
    seen = []
    for level in report.levels:
        assert level.non_finite == observed_non_finite(model, example, level.sparsity), level.sparsity
        assert level.non_finite == bool(level.non_finite_layers)
        seen.append(level.non_finite)
    assert any(seen) and not all(seen), seen  # sparsities on both sides of the boundary
    return report


SPARSITIES = [0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95]


def test_weight_norm_parametrization_predicts_nan_on_both_sides_of_the_boundary():
    torch.manual_seed(0)
    model = WeightNormed().eval()
    report = check_both_sides(model, torch.randn(1, 4, 16), SPARSITIES)
    broken = [lv for lv in report.levels if lv.non_finite]
    assert broken[0].non_finite_layers == ("b.parametrizations.weight.original1",)
    assert "computes NaN (layer b: pruned norm)" in report_to_text(report)
    assert report.to_dict()["levels"][-1]["non_finite_layers"] == ["b.parametrizations.weight.original1"]


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
def test_legacy_weight_norm_hook_names_the_direction_not_the_scale():
    torch.manual_seed(0)
    model = WeightNormed(legacy=True).eval()
    report = check_both_sides(model, torch.randn(1, 4, 16), SPARSITIES)
    assert {n for lv in report.levels for n in lv.non_finite_layers} == {"b.weight_v"}


def test_a_division_by_a_weight_norm_in_forward_is_predicted():
    torch.manual_seed(0)
    model = DividesByNorm().eval()
    check_both_sides(model, torch.randn(1, 6), [0.3, 0.6, 0.8, 0.9, 0.97])


def test_a_guarded_division_is_never_flagged():
    torch.manual_seed(0)
    model = DividesByNorm(guarded=True).eval()
    an = Analysis(model, torch.randn(1, 6))
    report = an.report([0.5, 0.9, 0.97])
    assert not any(lv.non_finite for lv in report.levels)
    assert not any(observed_non_finite(model, torch.randn(1, 6), s) for s in (0.5, 0.9, 0.97))


def test_models_without_a_norm_division_have_no_source():
    torch.manual_seed(0)
    model = ck.models.create("resnet20", num_classes=10, in_channels=1, input_size=8)
    an = Analysis(model, torch.randn(1, 1, 8, 8))
    assert an.non_finite.sources == ()
    assert not any(lv.non_finite for lv in an.report([0.5, 0.999]).levels)


@pytest.mark.slow
def test_hubert_positional_conv_nan_is_predicted_before_pruning():
    """HuBERT's positional conv is weight-normalised over each kernel tap (dim=2): once Global MP empties a
    tap, the model computes NaN. Predicted from the masks; a real prune + forward agrees on both sides."""
    transformers = pytest.importorskip("transformers")
    config = transformers.HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                                       conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                                       num_conv_pos_embedding_groups=4)
    torch.manual_seed(0)
    model = transformers.HubertModel(config).eval()
    report = check_both_sides(model, torch.randn(1, 400), [0.5, 0.9, 0.97, 0.99, 0.995])
    names = {n for lv in report.levels for n in lv.non_finite_layers}
    assert names == {"encoder.pos_conv_embed.conv.parametrizations.weight.original1"}


def test_non_finite_sparsity_is_exact_to_the_weight():
    torch.manual_seed(0)
    model = WeightNormed().eval()
    an = Analysis(model, torch.randn(1, 4, 16))
    report = an.report([0.5, 0.95])
    k = round(report.non_finite_sparsity * an.total)
    assert 0.5 < report.non_finite_sparsity <= 0.95
    assert an.non_finite_at(an.level(k)) and not an.non_finite_at(an.level(k - 1))
    assert observed_non_finite_at(model, an, k) and not observed_non_finite_at(model, an, k - 1)
    assert "computes NaN" in report_to_text(report).splitlines()[2]


def observed_non_finite_at(model, an, k) -> bool:
    from collapsekit.validation import probe

    with torch.no_grad():
        return not bool(probe.masked_copy(model, an.masks(k=k))(torch.randn(1, 4, 16)).isfinite().all())
