"""Comparisons that make bool tensors, and reductions of bool tensors, at numpy's speed on the CPU.

The analysis spends much of a flow on `[O, I]`-sized bool work per conv, and
torch's CPU kernels that produce or reduce bool tensors are several times slower
than numpy's on the same memory. On the 2-core CI box (torch 2.13 CPU build, one
thread), for a 512 x 512 operand: `a > v` 117 us against 16 us, `m.to(float32)`
152 us against 23 us, `m.all()` 124 us against 5 us; on 4 M weights an int32
`gt` 1.9 ms against 0.37 ms. These helpers take numpy's path on CPU tensors of
numpy dtypes (views, no copies) and torch's anywhere else (GPU, bf16), with the
same results.
"""
from __future__ import annotations

import numpy as np
import torch

_NUMPY_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                 torch.float32, torch.float64}


def _np(t: torch.Tensor) -> np.ndarray | None:
    """`t`'s memory as a numpy array (no copy), or None where numpy cannot see it."""
    if t.device.type != "cpu" or t.dtype not in _NUMPY_DTYPES or t.is_conj() or t.is_neg():
        return None
    return t.detach().numpy()


def greater(t: torch.Tensor, value, out: torch.Tensor | None = None) -> torch.Tensor:
    """Bool `t > value` (a Python scalar), into `out` when given."""
    a = _np(t)
    if a is None or (out is not None and _np(out) is None):
        return torch.gt(t, value, out=out) if out is not None else t > value
    if out is None:
        return torch.from_numpy(np.greater(a, value, out=np.empty(a.shape, dtype=bool)))
    np.greater(a, value, out=_np(out))
    return out


def as_float(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A bool tensor as 0/1 of `dtype`."""
    if mask.dtype == dtype:
        return mask
    a = _np(mask)
    if a is None or dtype not in (torch.float32, torch.float64):
        return mask.to(dtype)
    return torch.from_numpy(a.astype(np.float32 if dtype == torch.float32 else np.float64))


def positive(t: torch.Tensor) -> torch.Tensor:
    """0/1 in `t`'s (floating) dtype: 1 where `t > 0`."""
    a = _np(t)
    if a is None or t.dtype not in (torch.float32, torch.float64):
        return (t > 0).to(t.dtype)
    return torch.from_numpy(np.greater(a, 0, out=np.empty(a.shape, dtype=a.dtype)))  # bool cast on the way


def outer(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bool [len(rows), len(cols)]: rows[o] and cols[i] (1-D bool operands)."""
    a, b = _np(rows), _np(cols)
    if a is None or b is None:
        return rows[:, None] & cols[None, :]
    return torch.from_numpy(np.logical_and.outer(a, b))


def count_rows(mask: torch.Tensor) -> torch.Tensor:
    """int64 per row (dim 0) of a bool tensor: how many of its entries hold."""
    a = _np(mask)
    if a is None or mask.ndim == 0:
        return mask.reshape(mask.shape[0] if mask.ndim else 1, -1).sum(1)
    return torch.from_numpy(np.count_nonzero(a.reshape(a.shape[0], -1), axis=1).astype(np.int64))


def flat_true(mask: torch.Tensor) -> torch.Tensor:
    """int64 positions in the flattened (row-major) bool tensor where it holds."""
    a = _np(mask)
    if a is None:
        return torch.nonzero(mask.reshape(-1)).flatten()
    return torch.from_numpy(np.flatnonzero(a).astype(np.int64))


def any_along(mask: torch.Tensor, dim) -> torch.Tensor:
    """Bool `mask.any(dim)` (`dim`: an axis or a tuple of them)."""
    a = _np(mask)
    if a is None:
        return mask.any(dim)
    return torch.from_numpy(np.asarray(np.logical_or.reduce(a, axis=dim)))


def rows_alike(mask: torch.Tensor) -> bool:
    """Whether every row (along dim 0) of `mask` equals its first."""
    a = _np(mask)
    if a is None:
        return bool((mask == mask[:1]).all())
    return bool((a == a[:1]).all())


def all_true(mask: torch.Tensor) -> bool:
    a = _np(mask)
    return bool(a.all()) if a is not None else bool(mask.all())


def any_true(mask: torch.Tensor) -> bool:
    a = _np(mask)
    return bool(a.any()) if a is not None else bool(mask.any())


def count_true(mask: torch.Tensor) -> int:
    a = _np(mask)
    return int(np.count_nonzero(a)) if a is not None else int(torch.count_nonzero(mask))


def pack_bits(mask: torch.Tensor):
    """A bool tensor's entries (C order) packed eight to a byte, as a numpy uint8 array; a tensor on
    another device stays as it is (numpy cannot see it)."""
    if mask.device.type != "cpu":
        return mask
    return np.packbits(mask.detach().reshape(-1).numpy())


def unpack_bits(packed, shape) -> torch.Tensor:
    """The bool tensor of `shape` that `pack_bits` packed."""
    if isinstance(packed, torch.Tensor):
        return packed
    n = int(np.prod(shape, dtype=np.int64))
    return torch.from_numpy(np.unpackbits(packed, count=n).view(np.bool_)).view(tuple(shape))


def count_bits(packed) -> int:
    """How many entries hold in what `pack_bits` gave."""
    return int(np.bitwise_count(packed).sum()) if not isinstance(packed, torch.Tensor) else \
        int(torch.count_nonzero(packed))
