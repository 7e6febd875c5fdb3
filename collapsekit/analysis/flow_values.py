"""The channel flow's abstract values: liveness tensors, constants, and the trees that hold them.

An activation's abstract value is a float tensor of its real shape holding 1.0
where some kept path from the input reaches the element and 0.0 where it is a
constant of the masks alone (docs/design.md, structural death); `Boolean` resets
values to 0/1 after every node, forward and backward. A value computed from
weights and buffers alone is a `Constant`: where it may be non-zero, and its
real value where known, so ops over constants alone run on the real values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

from collapsekit.analysis.boolops import positive


class Boolean(torch.autograd.Function):
    """0/1 in both directions: liveness forward, usedness backward."""

    @staticmethod
    def forward(ctx, x):
        return positive(x)

    @staticmethod
    def backward(ctx, g):
        return positive(g)


def boolean(x):
    """`x` reset to 0/1 (liveness forward, usedness backward) if it is a float tensor, else as it is."""
    return Boolean.apply(x) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


@dataclass
class Constant:
    """Abstract value of a constant: a weight, a buffer, or anything computed from constants alone.

    `mask` is 1.0 where the entry may be non-zero (a prunable weight's keep-mask;
    dense for others). `real` is the constant's value where known (None: unknown):
    ops over constants alone run on the *witness*, the value with pruned entries
    zeroed, so a transform inside `forward` is judged by what it does to a pruned
    zero (docs/design.md, invariant 8: mean subtraction makes the whole weight live).
    """

    mask: torch.Tensor
    name: str | None = None  # the prunable weight it is, if any
    real: torch.Tensor | None = None
    origin: str | None = None  # the one prunable weight a derived constant was computed from

    def witness(self) -> torch.Tensor | None:
        if self.real is None or self.name is None:
            return self.real
        # Kept entries that happen to be exactly zero stand in as 1: only pruning makes a structural zero.
        kept = torch.where(self.real == 0, torch.ones((), dtype=self.real.dtype), self.real)
        return torch.where(self.mask.detach() > 0, kept, torch.zeros((), dtype=self.real.dtype))


def liveness(x):
    """The liveness tensor of an activation, or None for a constant."""
    return x if isinstance(x, torch.Tensor) else None


class PrunableConstant(Constant):
    """A prunable weight read through get_attr (torch.export graphs). Linear applies its bool mask
    through `ChannelFlow.layer`, which holds one layer's float mask at a time; any other rule that
    asks for `.mask` gets the float leaf (`make_mask()`) whose gradient records reached positions."""

    def __init__(self, make_mask: Callable[[], torch.Tensor], name: str, real: torch.Tensor):
        self._make, self.name, self.real, self._float = make_mask, name, real.detach(), None
        self.origin = None

    @property
    def mask(self) -> torch.Tensor:
        if self._float is None:
            self._float = self._make()
        return self._float

    @property
    def mask_made(self) -> bool:
        """True once some rule asked for the float mask (then its gradient records the reached positions)."""
        return self._float is not None


def support(x):
    """Where `x` may be non-zero: a constant's mask, an activation's liveness."""
    return x.mask if isinstance(x, Constant) else x


def ones_like_meta(meta, total, dtype):
    """Every element alive iff any input element is, in the shape(s) ShapeProp (or export) recorded."""
    if isinstance(meta, (TensorMetadata, torch.Tensor)):
        return torch.ones(tuple(meta.shape), dtype=dtype) * total
    if isinstance(meta, (tuple, list)):
        return type(meta)(ones_like_meta(m, total, dtype) for m in meta)
    if isinstance(meta, dict):
        return {k: ones_like_meta(m, total, dtype) for k, m in meta.items()}
    return meta


def tree_boolean(out):
    """`out` with every float tensor (in nested tuples and lists) reset to 0/1 by `Boolean`."""
    if isinstance(out, torch.Tensor):
        return boolean(out)
    if isinstance(out, (tuple, list)):
        return type(out)(tree_boolean(o) for o in out)
    return out


def output_tensors(value) -> list[torch.Tensor]:
    """The tensors of a value: nested tuples, lists, dicts and dataclasses (a Constant is no output)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Constant):
        return []
    if isinstance(value, dict):
        value = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in output_tensors(v)]
    return []


def has_live(value) -> bool:
    """True if a liveness tensor (an activation, not a constant) is anywhere in `value` (as output_tensors
    finds them; stops at the first: every node asks this of its operands)."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(has_live(v) for v in value)
    if isinstance(value, dict):
        return any(has_live(v) for v in value.values())
    if isinstance(value, Constant) or value is None or isinstance(value, (int, float, bool, str)):
        return False
    return bool(output_tensors(value))


def constants_in(value) -> list[Constant]:
    """Every Constant in `value` (nested tuples, lists, dicts)."""
    found = []
    fx.node.map_aggregate(value, lambda v: found.append(v) if isinstance(v, Constant) else None)
    return found


def has_constant(value) -> bool:
    return bool(constants_in(value))


def map_constants(value, fn):
    """`value` with every Constant replaced by fn(constant); None if fn gives None for one."""
    missing = []

    def one(v):
        if not isinstance(v, Constant):
            return v
        out = fn(v)
        if out is None:
            missing.append(v)
        return out

    out = tree_map(value, one)
    return None if missing else out


def moved_form(w: Constant):
    """What a rearranging op over constants alone moves: a float constant's mask, an index's value."""
    return w.real if w.real is not None and not w.real.is_floating_point() else w.mask


def operand_form(w: Constant):
    """What a constant is next to live values: a float one dead (zeros), an index its value."""
    if w.real is not None and not w.real.is_floating_point():
        return w.real
    return torch.zeros(w.mask.shape, dtype=w.mask.dtype)


def as_constant(out, dtype, known: bool = True):
    """Real values computed from constants alone, as Constants (mask: where non-zero)."""
    def one(t):
        if not isinstance(t, torch.Tensor):
            return t
        if not known:
            return Constant(torch.ones(t.shape, dtype=dtype))
        nonzero = (t != 0) if t.is_floating_point() or t.is_complex() else torch.ones(t.shape, dtype=torch.bool)
        return Constant(nonzero.to(dtype), None, t.detach())

    if isinstance(out, torch.Tensor):
        return one(out)
    if isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
        return type(out)(as_constant(o, dtype, known) for o in out)
    return out


def tree_map(value, fn):
    """fn on every leaf of nested tuples (named ones and torch's return types kept), lists and dicts."""
    if isinstance(value, (tuple, list)):
        items = [tree_map(v, fn) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: tree_map(v, fn) for k, v in value.items()}
    return fn(value)


def tree_map_tensors(value, fn):
    return tree_map(value, lambda v: fn(v) if isinstance(v, torch.Tensor) else v)


def with_origin(value, origin: str | None):
    if origin is None:
        return value
    return fx.node.map_aggregate(value, lambda v: dataclasses.replace(v, origin=origin) if isinstance(v, Constant) else v)


def is_container(target) -> bool:
    return isinstance(target, type) and (dataclasses.is_dataclass(target) or issubclass(target, (tuple, dict)))

