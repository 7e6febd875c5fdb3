"""collapsekit.spec: the one reader of numbers a user may type as a percent (sparsity, MT), and the public names."""
import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.errors import CollapsekitError
from collapsekit.spec import fraction, read_number


@pytest.mark.parametrize("value,expected", [(0.95, 0.95), ("0.95", 0.95), ("95%", 0.95), (" 99.9 % ", 0.999),
                                            ("0", 0.0), (0, 0.0), ("1e-1", 0.1)])
def test_fraction_reads_numbers_and_percents(value, expected):
    assert fraction(value) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("value,fragment", [("abc", "sparsity 'abc' is neither a fraction (0.95) nor a percent (95%)"),
                                            ("%", "neither"), (None, "must be a fraction (0.95) or a percent"),
                                            (True, "got bool")])
def test_fraction_refuses_other_things_in_one_line(value, fragment):
    with pytest.raises(CollapsekitError, match=None) as err:
        fraction(value)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_read_number_keeps_counts_integers():
    assert read_number("96", "MT", "") == (96, False)
    assert read_number("0.05", "MT", "") == (0.05, False)
    assert read_number("0.05%", "MT", "") == (0.05, True)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_percent_sparsity_is_taken_by_the_python_api():
    x = torch.randn(1, 8)
    report = ck.analyze(_mlp(), x, sparsities=["95%", 0.5])
    assert [lv.sparsity for lv in report.levels] == [0.5, 0.95]
    a, b = _mlp(), _mlp()
    masks_percent, masks_fraction = ck.prune(a, "95%").masks, ck.prune(b, 0.95).masks
    assert all(torch.equal(masks_percent[k], masks_fraction[k]) for k in masks_fraction)
    assert ck.suggest_mt(_mlp(), x, sparsity="99%").mt == ck.suggest_mt(_mlp(), x, sparsity=0.99).mt


def test_a_percent_outside_the_range_says_how_to_write_it():
    with pytest.raises(CollapsekitError, match=r"sparsity must lie in \[0, 1\), got 95(\.0)? \(for 95 percent write 95%\)"):
        ck.prune(_mlp(), 95)


def test_documented_public_names_exist(tmp_path):
    assert callable(ck.search_mt) and callable(ck.save_sparse) and "search_mt" in ck.__all__
    model = _mlp()
    masks = ck.prune(model, 0.9).masks
    path = ck.save_sparse(model, masks, tmp_path / "pruned.safetensors")
    state = ck.load_sparse(path)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
