"""collapsekit.analysis.boolops: numpy's path gives torch's results, on views, scalars and every dtype."""
import pytest
import torch

from collapsekit.analysis import boolops


def operands():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    yield base
    yield base.t()  # non-contiguous
    yield base[:, :1].expand(6, 5)  # zero strides
    yield base[2, 3]  # 0-d
    yield base.to(torch.float64)
    yield base.to(torch.bfloat16)  # numpy has no bf16: torch's path
    yield (base * 100).to(torch.int32)
    yield base.requires_grad_(True)


@pytest.mark.parametrize("t", list(operands()), ids=lambda t: f"{t.dtype}-{tuple(t.shape)}-{t.stride()}")
def test_numpy_path_equals_torch(t):
    got = boolops.greater(t, 0.25)
    assert got.dtype == torch.bool and torch.equal(got, t.detach() > 0.25)
    mask = t.detach() > 0
    assert boolops.all_true(mask) == bool(mask.all()) and boolops.any_true(mask) == bool(mask.any())
    assert boolops.count_true(mask) == int(mask.sum())
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        f = boolops.as_float(mask, dtype)
        assert f.dtype == dtype and torch.equal(f, mask.to(dtype))
    if t.is_floating_point():
        p = boolops.positive(t.detach())
        assert p.dtype == t.dtype and torch.equal(p, (t.detach() > 0).to(t.dtype))


def test_greater_writes_into_out():
    t = torch.arange(10, dtype=torch.int32)
    out = torch.empty(10, dtype=torch.bool)
    assert boolops.greater(t, 6, out=out) is out and out.tolist() == [False] * 7 + [True] * 3
    assert torch.equal(boolops.greater(t[::2], 3), torch.tensor([False, False, True, True, True]))
    assert boolops.all_true(torch.ones(0, dtype=torch.bool)) and not boolops.any_true(torch.ones(0, dtype=torch.bool))


def test_outer_and_row_counts_equal_torch():
    gen = torch.Generator().manual_seed(1)
    rows, cols = torch.rand(9, generator=gen) > 0.4, torch.rand(13, generator=gen) > 0.5
    assert torch.equal(boolops.outer(rows, cols), rows[:, None] & cols[None, :])
    assert torch.equal(boolops.outer(rows[::2], cols), rows[::2, None] & cols[None, :])  # strided view
    mask = torch.rand(6, 4, 3, generator=gen) > 0.5
    assert torch.equal(boolops.count_rows(mask), mask.reshape(6, -1).sum(1))
    assert boolops.count_rows(mask).dtype == torch.int64
    assert torch.equal(boolops.count_rows(mask.transpose(0, 1)), mask.transpose(0, 1).reshape(4, -1).sum(1))


def test_flat_true_positions_equal_torch_nonzero():
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(5, 7, generator=gen) > 0.6
    for m in (mask, mask.t(), mask[:, ::2], torch.zeros(0, 3, dtype=torch.bool)):
        assert torch.equal(boolops.flat_true(m), torch.nonzero(m.reshape(-1)).flatten())


def test_any_along_equals_torch():
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(6, 9, generator=gen) > 0.85
    for m in (mask, mask.t(), mask[::2], torch.zeros(0, 4, dtype=torch.bool)):
        for dim in (0, 1):
            assert torch.equal(boolops.any_along(m, dim), m.any(dim))


def test_any_along_several_dims_and_rows_alike_equal_torch():
    gen = torch.Generator().manual_seed(4)
    mask = torch.rand(2, 5, 3, 4, generator=gen) > 0.9
    for dims in ((0, 2, 3), (0, 1), (3,)):
        assert torch.equal(boolops.any_along(mask, dims), mask.any(dim=dims))
    rows = torch.rand(1, 6, generator=gen) > 0.5
    alike = rows.expand(4, 6)
    assert boolops.rows_alike(alike) and boolops.rows_alike(alike.clone())
    changed = alike.clone()
    changed[3, 2] = ~changed[3, 2]
    assert not boolops.rows_alike(changed) and not boolops.rows_alike(changed.t())
