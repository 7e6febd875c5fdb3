"""Build a model on the meta device without running its initialisers.

A model built under `torch.device("meta")` still runs its initialisers
(`nn.init.kaiming_normal_`, `weight.data.normal_()`, ...) on tensors that hold
no values. Several of those ops have no C++ meta kernel: torch runs a Python
decomposition whose first call imports torch._dynamo and sympy (~800 modules,
over a second in a fresh process), which every streamed `collapsekit report`
paid before reading a single weight. An op that only writes values into its
first operand means nothing on the meta device, so `on_meta()` skips exactly
those: in-place ops whose first argument is a meta tensor they write to and
return, except the ones torch tags `inplace_view` (`resize_`, `squeeze_`,
`transpose_`, ...: they change the tensor's shape or strides, so they run).
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _SkipValueWrites(TorchDispatchMode):
    """Returns a meta tensor's in-place value writes (normal_, fill_, copy_, mul_, ...) unchanged."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in dynamo's `disable` unless told not to; the
        # wrapper imports torch._dynamo on the first op, the very import this mode avoids. The mode
        # lives only while a model is built, never under torch.compile.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if args and isinstance(args[0], torch.Tensor) and args[0].is_meta and _writes_values_only(func):
            return args[0]
        return func(*args, **(kwargs or {}))


def _writes_values_only(func) -> bool:
    """An in-place op on its first argument that keeps its shape: it writes that argument and returns it."""
    schema = func._schema
    if not schema.arguments or len(schema.returns) != 1 or torch.Tag.inplace_view in func.tags:
        return False
    written, returned = schema.arguments[0].alias_info, schema.returns[0].alias_info
    return written is not None and written.is_write and returned is not None and \
        returned.before_set == written.before_set


@contextlib.contextmanager
def on_meta():
    """`torch.device("meta")` for building a skeleton: parameters and buffers get shapes, dtypes and
    flags (requires_grad) as usual, and initialisers that would only write values are skipped."""
    with torch.device("meta"), _SkipValueWrites():
        yield
