"""Structural channel flow: abstract interpretation of the fx graph on 0/1 liveness tensors.

Every node's abstract value has the shape of its real value (batch of one) and
holds 1.0 where the element is reached by some kept path from the input and 0.0
where it is a constant of the masks alone (docs/design.md, structural death). Each
op has a transfer rule that keeps values non-negative, so nothing cancels, and a
`_Bool` step after every node resets them to 0/1 (so nothing overflows either).

`_Bool`'s backward does the same to gradients, which makes one backward pass
from the output the "used" analysis: an element whose gradient is positive
feeds some kept path to the output, and a kept weight whose gradient is positive
lies on an input-to-output path (Vysogorets & Kempe's effective sparsity).

Transfer rules live in one `rules.RuleTable` keyed by module type, function or
method name, each with its properties as flags (docs/design.md, Style 1-2). Rules read the
module's name from the node being run (`flow.target`); nothing is written on
the modules, which the traced graph shares with the user's model (Invariant 7).
Unknown ops get the conservative rule: the whole output is alive if any input
element is, so a prediction of death is never wrong.
"""
from __future__ import annotations

import builtins
import dataclasses
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import TensorMetadata

from collapsekit.analysis.averages import RowUniformity, averaged_values, constant_values, row_uniform
from collapsekit.analysis.boolops import all_true, any_along, as_float, count_true, outer, positive
from collapsekit.analysis.heap import release_after
from collapsekit.analysis.prunable import PrunableWeight
from collapsekit.analysis.rules import Rule, RuleTable, aten
from collapsekit.analysis.rules import op_name as _op_name
from collapsekit.analysis.trace import TracedModel, aliases_of, mutates_first_operand


class _Bool(torch.autograd.Function):
    """0/1 in both directions: liveness forward, usedness backward."""

    @staticmethod
    def forward(ctx, x):
        return positive(x)

    @staticmethod
    def backward(ctx, g):
        return positive(g)


def _bool(x):
    return _Bool.apply(x) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


class _Layer(torch.autograd.Function):
    """A weighted layer on a bool keep-mask: the float mask and its gradient exist only
    while this layer runs, so the flow's peak memory stays near one layer's worth."""

    @staticmethod
    def forward(ctx, x, keep, op, record, lines=None):
        ctx.op, ctx.record, ctx.shape, ctx.lines = op, record, keep.shape, lines
        ctx.save_for_backward(x)
        if isinstance(op, _ChannelConv):  # a small [O, I] connectivity: kept as is, in both dtypes
            ctx.conn, ctx.weights = keep, as_float(keep, x.dtype)
            return op(x, ctx.weights)
        out = _apply(op, x, keep, lines)
        # 1 bit per weight until backward: every layer's mask waits there (a lazy one only if it was built)
        built = keep.built if isinstance(keep, LazyKeep) else keep
        ctx.packed = pack_bits(built) if built is not None else None
        ctx.make = keep.make if isinstance(keep, LazyKeep) else None
        return out

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if isinstance(ctx.op, _ChannelConv):
            gx, reached = ctx.op.backward(x, ctx.weights, g)
            ctx.record(reached, ctx.conn)
            return gx, None, None, None, None
        keep = unpack_bits(ctx.packed, ctx.shape) if ctx.packed is not None else LazyKeep(ctx.make, ctx.shape)
        if ctx.op is F.linear and len(ctx.shape) == 2:
            gx, reached = _linear_backward(x, keep, g, ctx.lines)
            ctx.record(reached, keep)
        else:
            with torch.enable_grad():
                xx = x.detach().requires_grad_(True)
                w = as_float(keep, x.dtype).requires_grad_(True)
                gx, gw = torch.autograd.grad(ctx.op(xx, w), (xx, w), g)
            ctx.record(gw > 0, keep)
        del keep
        release_after(int(np.prod(ctx.shape)))
        return gx, None, None, None, None


class LazyKeep:
    """A linear layer's keep-mask, built on first use: where its input is live and its output used
    everywhere, the row and column maxima (connectivity.KeptLines) answer and no mask is read."""

    def __init__(self, make, shape):
        self.make, self.shape, self.built = make, tuple(shape), None

    @property
    def mask(self) -> torch.Tensor:
        if self.built is None:
            self.built = self.make()
        return self.built


def _mask_of(keep) -> torch.Tensor:
    return keep.mask if isinstance(keep, LazyKeep) else keep


def _transposed_record(record, shape: tuple[int, ...]):
    """`record(name, kept, reached)` for a weight of `shape` applied as F.linear on its transpose: the
    transposed keep-mask and reached positions turned back to the weight's own orientation (views)."""
    def back(name, kept_t, reached):
        kept = LazyKeep(lambda: _mask_of(kept_t).t(), shape) if isinstance(kept_t, LazyKeep) else kept_t.t()
        record(name, kept, reached if reached is EVERYWHERE else reached.t())

    return back


_BLOCK = 1 << 22  # weights per float block of a large linear layer's mask


def _row_blocks(keep: torch.Tensor):
    rows = max(1, _BLOCK // max(keep.shape[1], 1))
    return [(start, start + rows) for start in range(0, keep.shape[0], rows)]


def _apply(op, x, keep: torch.Tensor, lines=None) -> torch.Tensor:
    """`op(x, keep as 0/1 floats)`, up to positive scaling (only positivity carries meaning).

    A linear layer whose input has one liveness pattern at every position (the usual
    case) needs no matmul: output o is live iff a kept weight of row o reads a live
    input, the same at every position. Otherwise it goes a block of output rows at a
    time, so its float mask never exists whole (a vocabulary-sized head would need
    gigabytes). `lines` (connectivity.KeptLines), where given, answers "which rows keep a
    weight" without reading the mask."""
    if op is not F.linear or len(keep.shape) != 2 or not isinstance(x, torch.Tensor):
        return op(x, as_float(_mask_of(keep), x.dtype))
    xl = x.reshape(-1, x.shape[-1]) > 0
    if xl.shape[0] > 0 and bool((xl == xl[:1]).all()):
        live = _any_kept(keep, xl[0], dim=1, lines=lines)
        return live.to(x.dtype).expand(*x.shape[:-1], keep.shape[0]).clone()
    mask = _mask_of(keep)
    if mask.numel() <= _BLOCK:
        return op(x, as_float(mask, x.dtype))
    return torch.cat([F.linear(x, as_float(mask[a:b], x.dtype)) for a, b in _row_blocks(mask)], -1)


def _any_kept(keep: torch.Tensor, along: torch.Tensor, dim: int, lines=None) -> torch.Tensor:
    """Bool per row (dim=1: some kept weight of the row lies in a column where `along` holds) or per
    column (dim=0: some kept weight of the column lies in a row where `along` holds), by row blocks;
    from `lines` alone where `along` holds everywhere."""
    everywhere = bool(along.all())
    if everywhere and lines is not None:
        return (lines.rows if dim == 1 else lines.cols).clone()
    keep = _mask_of(keep)
    out = torch.zeros(keep.shape[0] if dim == 1 else keep.shape[1], dtype=torch.bool)
    for a, b in _row_blocks(keep):
        block = keep[a:b]
        if dim == 1:
            out[a:b] = any_along(block if everywhere else block & along, 1)
        elif everywhere or bool(along[a:b].any()):
            out |= any_along(block if everywhere else block & along[a:b, None], 0)
    return out


EVERYWHERE = object()  # "every weight position reached": spares building an all-True [O, I] mask
ALL_KEPT = object()  # a layer's effective weights: every kept one


def _linear_backward(x: torch.Tensor, keep: torch.Tensor, g: torch.Tensor,
                     lines=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient for x, reached [O, I]) of `F.linear(x, keep)` without autograd, a block of output
    rows at a time: reached[o, i] holds when some position has g[., o] > 0 and x[., i] > 0 (both
    non-negative). Where every position shares one liveness (or one usedness) pattern, that is an
    outer product of two bool vectors, which spares the [O, I] matmul."""
    xs, gs = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    xl, gl = xs > 0, gs > 0
    if gl.shape[0] > 0 and bool((gl == gl[:1]).all()):  # one usedness pattern: no matmul (up to scale)
        gx = _any_kept(keep, gl[0], dim=0, lines=lines).to(x.dtype).expand(xs.shape).clone()
    else:
        gx = torch.zeros(xs.shape, dtype=x.dtype)
        mask = _mask_of(keep)
        for a, b in _row_blocks(mask):
            gx += torch.matmul(gs[:, a:b], as_float(mask[a:b], x.dtype))
    if bool((xl == xl[:1]).all()) or bool((gl == gl[:1]).all()):
        used, live = gl.any(0), xl.any(0)  # one pattern on a side: reached = used x live
        if all_true(used) and all_true(live):
            return gx.view(x.shape), EVERYWHERE
        reached = outer(used, live)
    else:
        reached = torch.cat([torch.matmul(gs[:, a:b].t(), xs) > 0 for a, b in _row_blocks(keep)], 0)
    return gx.view(x.shape), reached


def pack_bits(mask: torch.Tensor):
    """A bool tensor packed 8 to a byte (CPU), or the tensor itself on another device."""
    if mask.device.type != "cpu":
        return mask
    return np.packbits(mask.detach().reshape(-1).numpy())


def unpack_bits(packed, shape) -> torch.Tensor:
    if isinstance(packed, torch.Tensor):
        return packed
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(packed, count=n).view(np.bool_)).view(shape)


def count_bits(packed) -> int:
    return int(np.bitwise_count(packed).sum()) if not isinstance(packed, torch.Tensor) else \
        int(torch.count_nonzero(packed))


@dataclass
class Weight:
    """Abstract value of a constant: a weight, a buffer, or anything computed from constants alone.

    `mask` is 1.0 where the entry may be non-zero (a prunable weight's keep-mask;
    dense for others). `real` is the constant's value where known (None: unknown):
    ops over constants alone run on the *witness*, the value with pruned entries
    zeroed, so a transform inside `forward` is judged by what it does to a pruned
    zero (docs/design.md Invariant 8: mean subtraction makes the whole weight live).
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


def _live(x):
    """The liveness tensor of an activation, or None for constants and weights."""
    return x if isinstance(x, torch.Tensor) else None


class _LazyWeight(Weight):
    """A prunable weight read through get_attr (torch.export graphs). Linear applies its bool mask
    through `ChannelFlow.layer`, which holds one layer's float mask at a time; any other rule that
    asks for `.mask` gets the float leaf whose gradient records reached positions."""

    def __init__(self, flow, target: str, name: str, real: torch.Tensor):
        self._flow, self._target, self.name, self.real, self._float = flow, target, name, real.detach(), None
        self.origin = None

    @property
    def mask(self) -> torch.Tensor:
        if self._float is None:
            self._float = self._flow._attr_mask(self._target, self.name, self.real)
        return self._float


def _mask(x):
    return x.mask if isinstance(x, Weight) else x


# -- the registry ------------------------------------------------------------------------
RULES = RuleTable()
module_rule = RULES.module  # keyed by module type (looked up along the MRO)
function_rule = RULES.function  # keyed by the called function or aten overload
method_rule = RULES.method  # keyed by tensor method name


# Structure-preserving ops: the abstract value goes through the op itself.
# Activations, dropout and eval-mode batch norm are per-element bijections or
# per-channel affine maps: they never join or cut a path structurally.
_IDENTITY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
                     nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
                     nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Identity, nn.Dropout, nn.Dropout1d,
                     nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.modules.batchnorm._BatchNorm)


@module_rule(*_IDENTITY_MODULES, reduced_ok=True)
def _identity_module(flow, module, x, *args, **kwargs):
    return x


_IDENTITY_FUNCTIONS = [F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
                       F.hardsigmoid, F.hardtanh, F.softplus, F.dropout, F.dropout2d, F.batch_norm,
                       torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.neg, torch.abs,
                       torch.sqrt, torch.rsqrt, torch.square, torch.clamp, torch.clip, torch.sign, F.sigmoid,
                       F.tanh, torch.nn.functional.dropout1d, operator.neg, operator.pos]
_IDENTITY_FUNCTIONS += aten("relu.default", "sigmoid.default", "tanh.default", "gelu.default", "silu.default",
                            "hardtanh.default", "dropout.default", "clone.default", "neg.default",
                            "batch_norm.default",
                            "alias.default", "contiguous.default", "hardswish.default", "relu6.default",
                            "dropout_.default", "relu_.default", "gelu_.default", "silu_.default",
                            "hardtanh_.default", "hardswish_.default", "detach.default", "lift_fresh_copy.default",
                            "_to_copy.default", "to.dtype", "to.dtype_layout", "type_as.default",
                            "rsqrt.default", "sqrt.default", "exp.default", "log.default", "abs.default",
                            "clamp.default", "clamp_min.default", "clamp_max.default", "sign.default",
                            "square.default", "reciprocal.default", "erf.default", "sin.default", "cos.default",
                            "softplus.default", "mish.default", "leaky_relu.default", "elu.default",
                            "log_sigmoid.default", "hardsigmoid.default", "silu_.default")


@function_rule(*_IDENTITY_FUNCTIONS, reduced_ok=True)
def _identity_function(flow, x, *args, **kwargs):
    return x


@function_rule(*aten("_native_batch_norm_legit_no_training.default"))
def _native_batch_norm(flow, x, *args, **kwargs):
    return (x, None, None)  # (output, saved mean, saved invstd): only the output flows on


@method_rule("relu", "relu_", "sigmoid", "tanh", "exp", "log", "neg", "abs", "sqrt", "rsqrt", "clamp", "clamp_",
             "clip", "contiguous", "clone", "float", "double", "half", "bfloat16", "to", "type_as", "pow",
             "square", "sign", "detach_", "requires_grad_", reduced_ok=True)
def _identity_method(flow, x, *args, **kwargs):
    return x


# Shape and permutation ops: applied to the abstract value as they are.
_SHAPE_FUNCTIONS = [torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.cat, torch.concat,
                    torch.stack, torch.chunk, torch.split, torch.squeeze, torch.unsqueeze, torch.narrow,
                    torch.roll, torch.t, torch.movedim, torch.swapaxes, torch.unbind, torch.tile, torch.flip,
                    F.interpolate, F.pixel_shuffle, F.pixel_unshuffle, torch.channel_shuffle, operator.getitem,
                    builtins.getattr, torch.broadcast_to]
_SHAPE_FUNCTIONS += aten("view.default", "reshape.default", "flatten.using_ints", "permute.default",
                         "transpose.int", "cat.default", "unsqueeze.default", "squeeze.dim", "t.default",
                         "_unsafe_view.default", "expand.default", "slice.Tensor", "select.int",
                         "split.Tensor", "chunk.default", "channel_shuffle.default", "pixel_shuffle.default",
                         "upsample_nearest2d.vec", "upsample_bilinear2d.vec", "expand_as.default",
                         "reshape_as.default", "split_with_sizes.default", "unflatten.int", "repeat.default",
                         "roll.default", "flip.default", "movedim.int", "unbind.int", "stack.default",
                         "squeeze.dims", "squeeze.default", "narrow.default", "select.int", "tile.default",
                         "view_as.default", "im2col.default", "col2im.default", "pixel_unshuffle.default")
_SHAPE_FUNCTIONS += [F.unfold, F.fold]  # patches: copies (unfold) and sums of copies (fold) of elements


@function_rule(*_SHAPE_FUNCTIONS, passes_target=True, rearranges=True)
def _shape_function(flow, fn, *args, **kwargs):
    return flow.apply_real(fn, args, kwargs)


@method_rule("view", "reshape", "flatten", "permute", "transpose", "unsqueeze", "squeeze", "expand", "expand_as",
             "repeat", "chunk", "split", "narrow", "size", "dim", "t", "movedim", "unbind", "roll", "flip",
             "view_as", "reshape_as", "unflatten", "numel", "tile", "swapaxes", "__getitem__",
             passes_target=True, rearranges=True)
def _shape_method(flow, name, *args, **kwargs):
    return flow.apply_real(lambda obj, *a, **k: getattr(obj, name)(*a, **k), args, kwargs)


@module_rule(nn.Flatten, nn.Unflatten, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
             nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.modules.padding._ReflectionPadNd,
             nn.modules.padding._ReplicationPadNd, nn.CircularPad2d, rearranges=True)
def _shape_module(flow, module, x, *args, **kwargs):
    return module(x)


# `view` reads a liveness tensor in the element order of the real (contiguous) one;
# liveness tensors may be strided differently (expanded, permuted), so reshape.
@method_rule("view", passes_target=True, rearranges=True)
def _view_method(flow, name, x, *shape):
    if len(shape) == 1 and isinstance(shape[0], torch.dtype):
        raise TypeError("a view as another dtype has no structural reading")
    return flow.apply_real(lambda t, *s: t.reshape(*s), (x, *shape), {})


@function_rule(*aten("view.default", "_unsafe_view.default"), rearranges=True)
def _aten_view(flow, x, shape):
    return flow.apply_real(torch.reshape, (x, shape), {})


# Selections by index: the index is a constant (its real values select), the source moves as it is.
@function_rule(torch.gather, torch.index_select, torch.take_along_dim, torch.masked_select,
               *aten("gather.default", "index_select.default", "index.Tensor"), passes_target=True,
               rearranges=True)
def _select_function(flow, fn, *args, **kwargs):
    return flow.apply_real(fn, args, kwargs)


@method_rule("gather", "index_select", "take_along_dim", passes_target=True, rearranges=True)
def _select_method(flow, name, *args, **kwargs):
    return flow.apply_real(lambda obj, *a, **k: getattr(obj, name)(*a, **k), args, kwargs)


# Embedding lookups: every feature of a looked-up row is live iff its index is.
@function_rule(F.embedding)
def _embedding_function(flow, ids, weight, *args, **kwargs):
    return _lookup(ids, _mask(weight).shape[-1])


@function_rule(*aten("embedding.default"))
def _aten_embedding(flow, weight, ids, *args, **kwargs):
    return _lookup(ids, _mask(weight).shape[-1])


@module_rule(nn.Embedding)
def _embedding_module(flow, module, ids, *args, **kwargs):
    return _lookup(ids, module.embedding_dim)


def _lookup(ids, dim: int):
    return ids.unsqueeze(-1).expand(*ids.shape, dim)


@module_rule(nn.modules.padding._ConstantPadNd)
def _constant_pad(flow, module, x):
    return F.pad(x, module.padding, value=0.0)  # the pad value is a constant, not input


@function_rule(F.pad, *aten("constant_pad_nd.default", "pad.default"))
def _pad_function(flow, x, pad, mode="constant", value=None):
    return F.pad(x, pad, mode=mode, value=0.0) if mode == "constant" else F.pad(x, pad, mode=mode)


# Elementwise joins: an output element is alive if any of its operands is. `x * c`
# with a dead constant c is still input-dependent structurally (c == 0 is value-level).
_JOIN_FUNCTIONS = [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
                   operator.iadd, operator.imul, operator.isub, torch.add, torch.sub, torch.mul, torch.div,
                   torch.maximum, torch.minimum, torch.where, torch.addcmul, torch.lerp, torch.pow,
                   torch.true_divide, torch.max, torch.min]
_JOIN_FUNCTIONS += aten("add.Tensor", "sub.Tensor", "mul.Tensor", "div.Tensor", "add_.Tensor", "mul.Scalar",
                        "add.Scalar", "div.Scalar", "maximum.default", "minimum.default", "where.self",
                        "masked_fill.Scalar", "masked_fill.Tensor", "sub.Scalar", "rsub.Scalar", "pow.Tensor_Scalar")
_JOIN_FUNCTIONS += aten("__and__.Tensor", "__or__.Tensor", "bitwise_and.Tensor", "bitwise_or.Tensor",
                        "logical_and.default", "logical_or.default", "where.ScalarOther", "where.ScalarSelf",
                        "where.Scalar", "add_.Tensor", "mul_.Tensor")
_JOIN_FUNCTIONS += aten("multiply.Tensor", "multiply.Scalar", "true_divide.Tensor", "subtract.Tensor")
_JOIN_FUNCTIONS += [torch.masked_fill, operator.itruediv, operator.and_, operator.or_, torch.multiply,
                    torch.eq, torch.ne, torch.ge, torch.gt, torch.le, torch.lt,
                    operator.eq, operator.ne, operator.ge, operator.gt, operator.le, operator.lt]
# Comparisons are joins too: the result depends on every operand element it reads.
_JOIN_FUNCTIONS += aten("eq.Scalar", "eq.Tensor", "ne.Scalar", "ne.Tensor", "ge.Scalar", "ge.Tensor", "gt.Scalar",
                        "gt.Tensor", "le.Scalar", "le.Tensor", "lt.Scalar", "lt.Tensor")


@function_rule(*_JOIN_FUNCTIONS, reduced_ok=True)
def _join_function(flow, *args, **kwargs):
    return flow.join(*args, *kwargs.values())


@method_rule("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "__add__", "__mul__", "__sub__",
             "maximum", "minimum", "masked_fill", "addcmul", reduced_ok=True)
def _join_method(flow, *args, **kwargs):
    return flow.join(*args, *kwargs.values())


# Layers with weights: conv and linear on the keep-mask (non-negative, so any kept
# tap that reads a live element makes the output element live).
@module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, reduced_ok=True)
def _conv_module(flow, module, x):
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    else:
        padding = module.padding
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x.ndim - 2]
    return flow.layer(f"{flow.target}.weight", module.weight, x,
                      lambda x, w: conv(x, w, None, module.stride, padding, module.dilation, module.groups),
                      channel_op=_ChannelConv(module.groups, flow.output_shape()))


class _ChannelConv:
    """Conv at channel level: output channel o is live iff a connected input channel is.

    The result is *reduced*: size 1 in every spatial dim. Rules that only
    broadcast (registered with reduced_ok=True) take reduced values as they are; every other
    rule sees them expanded to the node's recorded shape first. Its backward is written out
    (`backward`): a nested autograd pass per conv cost more than the rest of the flow.
    """

    def __init__(self, groups: int, out_shape):
        self.groups, self.out_ndim = groups, len(out_shape)

    def __call__(self, x, conn):
        per_channel = x.sum(dim=tuple(range(2, x.ndim)))  # [1, I]; sum, not max, so gradients reach all
        o, ig = conn.shape
        out = torch.bmm(conn.view(self.groups, o // self.groups, ig), per_channel.view(self.groups, ig, 1))
        # Spatially uniform by construction: keep the [1, O, 1, ...] view; it broadcasts.
        return out.view(1, o, *([1] * (self.out_ndim - 2)))

    def backward(self, x: torch.Tensor, conn: torch.Tensor, g: torch.Tensor):
        """(gradient for x, reached [O, I/groups]) of __call__: what autograd gives, without its graph."""
        o, ig = conn.shape
        per_channel = x.sum(dim=tuple(range(2, x.ndim))).view(self.groups, 1, ig)
        gv = g.reshape(self.groups, 1, o // self.groups)
        gin = torch.bmm(gv, conn.view(self.groups, o // self.groups, ig).to(g.dtype))  # [groups, 1, ig]
        # (conn: bool or its 0/1 floats; `to` is free when it already has g's dtype)
        gx = gin.view(1, self.groups * ig, *([1] * (x.ndim - 2))).expand(x.shape)
        used, live = gv.transpose(1, 2) > 0, per_channel > 0
        if all_true(used) and all_true(live):
            return gx, EVERYWHERE  # every pair reached: spares the [O, I] outer product
        return gx, (used & live).view(o, ig)


@module_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose_module(flow, module, x, output_size=None):
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[x.ndim - 2]
    out_pad = module._output_padding(x, output_size, module.stride, module.padding, module.kernel_size,
                                     x.ndim - 2, module.dilation)
    return flow.layer(f"{flow.target}.weight", module.weight, x,
                      lambda x, w: conv(x, w, None, module.stride, module.padding, out_pad, module.groups,
                                        module.dilation))


@module_rule(nn.Linear)
def _linear_module(flow, module, x):
    return flow.layer(f"{flow.target}.weight", module.weight, x, F.linear)


@function_rule(F.linear, *aten("linear.default"), weighted=True)
def _linear_function(flow, x, weight, bias=None):
    if isinstance(weight, _LazyWeight) and weight._float is None and isinstance(x, torch.Tensor):
        return flow.layer(weight.name, weight.real, x, F.linear)
    mask = _mask(weight)
    if isinstance(x, torch.Tensor) and mask.ndim == 2 and _all_ones_view(mask):
        return _dense_linear(x, mask.shape[0])
    return F.linear(x, mask)


def _all_ones_view(mask: torch.Tensor) -> bool:
    """A weight that is not pruned reads as a broadcast view of one 1 (ChannelFlow._attr_mask)."""
    return all(s == 0 for s in mask.stride()) and mask.numel() > 0 and float(mask.reshape(-1)[0]) == 1.0


def _dense_linear(x: torch.Tensor, out_features: int) -> torch.Tensor:
    """F.linear with every weight kept, up to positive scaling: each output live iff some input of its
    row is (a tied vocabulary head costs a sum, not a [tokens, vocab] matmul)."""
    return x.sum(-1, keepdim=True).expand(*x.shape[:-1], out_features)


@function_rule(F.conv1d, F.conv2d, F.conv3d, *aten("conv1d.default", "conv2d.default", "conv3d.default",
                                                  "conv1d.padding", "conv2d.padding", "conv3d.padding"),
               weighted=True)
def _conv_function(flow, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.ndim]
    return conv(x, _mask(weight), None, stride, padding, dilation, groups)


@function_rule(*aten("convolution.default"), weighted=True)
def _aten_convolution(flow, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    return torch.ops.aten.convolution.default(x, _mask(weight), None, stride, padding, dilation, transposed,
                                               output_padding, groups)


@function_rule(torch.matmul, operator.matmul, torch.mm, torch.bmm, *aten("matmul.default", "mm.default",
                                                                         "bmm.default"))
def _matmul_function(flow, a, b):
    return flow.constant_average(flow.matmul(a, b), b)


@method_rule("matmul", "mm", "bmm", "__matmul__")
def _matmul_method(flow, a, b):
    return flow.constant_average(flow.matmul(a, b), b)


@function_rule(*aten("copy_.default"))
def _copy(flow, dst, src, *args, **kwargs):
    """dst.copy_(src): dst takes src's liveness (a constant src leaves it dead)."""
    live = _live(src)
    return (live if live is not None else torch.zeros(())).expand(_mask(dst).shape).clone()


@method_rule("copy_")
def _copy_method(flow, dst, src, *args, **kwargs):
    return _copy(flow, dst, src)


@function_rule(operator.setitem)
def _setitem(flow, x, index, value):
    """`x[index] = value` (in place): the assigned elements take the value's liveness."""
    out = x.clone()
    index = _unwrap(index, _as_operand)
    out[index] = value if _live(value) is not None else 0.0
    return out


@function_rule(torch.einsum, *aten("einsum.default"))
def _einsum(flow, equation, *operands):
    """A sum of products: an output element is live iff one of its terms has a live factor whose
    other factors are not structural zeros (the +1 keeps a live factor's partners non-zero)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    live = [i for i, x in enumerate(operands) if _live(x) is not None]
    partner = [x.mask if isinstance(x, Weight) else x + 1 for x in operands]
    out = None
    for i in live:
        term = torch.einsum(equation, *[operands[j] if j == i else partner[j] for j in range(len(operands))])
        out = term if out is None else out + term
    return out


@function_rule(torch.baddbmm, *aten("baddbmm.default"))
def _baddbmm(flow, bias, a, b, **kwargs):
    return flow.join(bias, flow.matmul(a, b))


@function_rule(torch.cumsum, *aten("cumsum.default"))
def _cumsum(flow, x, dim, **kwargs):
    return x.cumsum(dim)  # element i sums elements up to i: exactly their support


@method_rule("cumsum")
def _cumsum_method(flow, x, dim, **kwargs):
    return x.cumsum(dim)


# Tensors built from another's shape and dtype alone are constants.
@function_rule(torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like,
               *aten("zeros_like.default", "ones_like.default", "full_like.default", "new_ones.default",
                     "new_zeros.default", "new_full.default", "new_empty.default", "empty_like.default"),
               passes_target=True)
def _like(flow, fn, x, *args, **kwargs):
    meta = flow.current_node.meta.get("tensor_meta")
    real = torch.zeros(x.shape, dtype=meta.dtype if meta is not None else x.dtype)
    return _as_constant(fn(real, *args, **kwargs), flow._dtype)


@method_rule("new_ones", "new_zeros", "new_full", "new_empty", "new_tensor", passes_target=True)
def _like_method(flow, name, x, *args, **kwargs):
    meta = flow.current_node.meta.get("tensor_meta")
    real = torch.zeros(x.shape, dtype=meta.dtype if meta is not None else x.dtype)
    return _as_constant(getattr(real, name)(*args, **kwargs), flow._dtype)


@function_rule(torch.addmm, *aten("addmm.default"))
def _addmm(flow, bias, a, b, **kwargs):
    return flow.join(bias, flow.matmul(a, b))


# Pooling: max pooling becomes average pooling over the same windows. Both make a
# window's output live iff some element of it is, but only averaging sends the
# backward pass to every element a max could pick under other weights.
@module_rule(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, reduced_ok=True)
def _max_pool_module(flow, module, x):
    return flow.window_any(x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)


@function_rule(F.max_pool1d, F.max_pool2d, F.max_pool3d, *aten("max_pool2d.default"), reduced_ok=True)
def _max_pool_function(flow, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, **kwargs):
    return flow.window_any(x, kernel_size, stride or kernel_size, padding, dilation, ceil_mode)


@module_rule(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
             nn.AdaptiveAvgPool3d, reduced_ok=True)
def _avg_pool_module(flow, module, x):
    return x if flow.is_reduced(x) else module(x)


@module_rule(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, reduced_ok=True)
def _adaptive_max_module(flow, module, x):
    if flow.is_reduced(x):
        return x
    pool = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}[x.ndim]
    return pool(x, module.output_size)


@function_rule(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
               F.adaptive_avg_pool3d, *aten("avg_pool2d.default", "adaptive_avg_pool2d.default",
                                            "_adaptive_avg_pool2d.default", "adaptive_avg_pool1d.default",
                                            "avg_pool1d.default", "avg_pool3d.default",
                                            "adaptive_avg_pool3d.default"), reduced_ok=True, passes_target=True)
def _avg_pool_function(flow, fn, x, *args, **kwargs):
    return x if flow.is_reduced(x) else fn(x, *args, **kwargs)


@function_rule(F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, reduced_ok=True)
def _adaptive_max_function(flow, x, output_size, return_indices=False):
    if flow.is_reduced(x):
        return x
    pool = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}[x.ndim]
    return pool(x, output_size)


# Reductions and normalisations that mix elements: live if any mixed element is.
@function_rule(torch.mean, torch.sum, torch.amax, torch.amin, torch.logsumexp, torch.std, torch.var,
               *aten("mean.dim", "sum.dim_IntList", "amax.default", "amin.default", "var.correction",
                     "std.correction", "logsumexp.default", "sum.default", "mean.default"), reduced_ok=True)
def _reduce_function(flow, x, dim=None, keepdim=False, *args, **kwargs):
    return flow.any_over(x, dim, keepdim)


@method_rule("mean", "sum", "amax", "amin", "std", "var", "logsumexp", "norm", reduced_ok=True)
def _reduce_method(flow, x, dim=None, keepdim=False, *args, **kwargs):
    if isinstance(dim, str):  # "fro" of norm
        dim = None
    return flow.any_over(x, dim, keepdim)


@function_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, *aten("_softmax.default",
                                                                                  "softmax.int"))
def _softmax_function(flow, x, dim=None, *args, **kwargs):
    return flow.normalise_over(x, dim)


@function_rule(torch.linalg.vector_norm, *aten("linalg_vector_norm.default"), reduced_ok=True)
def _vector_norm(flow, x, ord=2, dim=None, keepdim=False, **kwargs):
    return flow.any_over(x, dim, keepdim)


@function_rule(F.group_norm, *aten("group_norm.default"))
def _group_norm(flow, x, num_groups, *args, **kwargs):
    return flow.group_mix(x, num_groups)


@method_rule("softmax", "log_softmax")
def _softmax_method(flow, x, dim=None, *args, **kwargs):
    return flow.normalise_over(x, dim)


@module_rule(nn.Softmax, nn.LogSoftmax, nn.Softmin)
def _softmax_module(flow, module, x):
    return flow.normalise_over(x, module.dim)


@module_rule(nn.LayerNorm)
def _layer_norm_module(flow, module, x):
    return flow.normalise_over(x, tuple(range(x.ndim - len(module.normalized_shape), x.ndim)))


@function_rule(F.layer_norm, *aten("layer_norm.default"))
def _layer_norm_function(flow, x, normalized_shape, *args, **kwargs):
    return flow.normalise_over(x, tuple(range(x.ndim - len(normalized_shape), x.ndim)))


@module_rule(nn.LocalResponseNorm, reduced_ok=True)
def _mixing_norm_module(flow, module, x):
    # Local response norm mixes neighbouring channels; mixing over every non-batch
    # dim is coarser and therefore still sound.
    return flow.any_over(x, tuple(range(1, x.ndim)), keepdim=True).expand_as(x)


@module_rule(nn.GroupNorm)
def _group_norm_module(flow, module, x):
    return flow.group_mix(x, module.num_groups)


@module_rule(nn.modules.instancenorm._InstanceNorm)
def _instance_norm_module(flow, module, x):
    return flow.group_mix(x, x.shape[1])  # each channel over its positions


@function_rule(F.scaled_dot_product_attention, *aten("scaled_dot_product_attention.default"))
def _sdpa(flow, q, k, v, *args, **kwargs):
    q_live = flow.any_over(q, -1, keepdim=True)
    k_live = flow.any_over(k, (-2, -1), keepdim=True)
    v_live = flow.any_over(v, -2, keepdim=True)
    return flow.constant_average(flow.join(q_live, k_live, v_live, torch.zeros(*q.shape[:-1], v.shape[-1])), v)


@module_rule(nn.MultiheadAttention)
def _multihead_attention(flow, module, query, key, value, *args, **kwargs):
    # Conservative over heads: a context feature is live if any projected query or
    # key element is (they steer the attention weights) or its value feature is.
    name, e = flow.target, module.embed_dim
    if module._qkv_same_embed_dim:
        projections = [(f"{name}.in_proj_weight", module.in_proj_weight, slice(i * e, (i + 1) * e))
                       for i in range(3)]
    else:
        projections = [(f"{name}.{p}_proj_weight", getattr(module, f"{p}_proj_weight"), slice(None))
                       for p in "qkv"]
    q, k, v = (_bool(flow.layer(n, t, x, lambda x, w, rows=rows: F.linear(x, w[rows])))
               for (n, t, rows), x in zip(projections, (query, key, value)))
    seq = 1 if module.batch_first else 0
    steer = flow.join(flow.any_over(q, -1, keepdim=True), flow.any_over(k, (seq, -1), keepdim=True))
    context = _bool(flow.join(steer, flow.any_over(v, seq, keepdim=True), torch.zeros_like(q)))
    return flow.layer(f"{name}.out_proj.weight", module.out_proj.weight, context, F.linear), None


# -- the interpreter ---------------------------------------------------------------------
@dataclass(frozen=True)
class FlowResult:
    """Structural verdict at one set of masks (docs/design.md terms)."""

    collapsed: bool
    dead_channels: dict[str, list[int]]
    unused_channels: dict[str, list[int]]
    effective: np.ndarray | None  # kept weights on an input-to-output path, per prunable layer
    output_alive: float = 0.0  # fraction of output elements some kept path reaches
    conservative_ops: dict[str, int] = field(default_factory=dict)  # op -> nodes interpreted conservatively


FLOW_META = "collapsekit_flow"  # node.meta key of the latest flow's per-node result


@dataclass(frozen=True)
class FlowMeta:
    """A node's forward liveness under the masks of the latest flow run on its graph."""

    live: int  # elements (channels, at channel level) some kept input path reaches
    size: int  # elements of the node's abstract value


class ChannelFlow(fx.Interpreter):
    """Runs the transfer rules over a traced graph for one set of keep-masks."""

    def __init__(self, traced: TracedModel, weights: list[PrunableWeight], masks, backward: bool,
                 channel_level: bool = False, cuts: dict[str, torch.Tensor] | None = None):
        super().__init__(traced.gm, garbage_collect_values=True)
        self.cuts = cuts or {}
        self.reached: dict[str, torch.Tensor] | None = None  # see _note_reached
        self.traced = traced
        self.backward = backward
        self.channel_level = channel_level
        self._dtype = torch.float32
        self._canonical = {alias: w.name for w in weights for alias in (w.name, *w.aliases)}
        self.masks = masks  # .keep(name) -> bool mask; .channel_conn(name) -> bool [O, I/groups] or None
        self.effective: dict[str, torch.Tensor] = {}  # name -> bool: kept and on an input-output path
        self.reached_pairs: dict[str, torch.Tensor] = {}  # channel level: name -> bool [O, I/groups]
        self.interpreted: set[str] = set()  # weights some rule applied (others hide in opaque modules)
        self.outputs_of: dict[str, list[torch.Tensor]] = {}
        self._attr_masks: list[tuple[str, torch.Tensor]] = []  # bare matrices read through get_attr
        self._applied: dict[str, int] = {}  # weight -> times `layer` applied it in this forward pass
        self._layer_of_module = {alias.rpartition(".")[0]: w.name for w in weights if w.kind in ("conv", "linear")
                                 for alias in (w.name, *w.aliases)}
        self._layer_names = set(self._layer_of_module.values())
        self.weights = weights
        self._averages = averaged_values(traced.gm)  # softmax averages: their rows' constants matter
        self._constants: dict[str, torch.Tensor] | None = None
        self.conservative: dict[str, set[str]] = {}  # op -> names of the nodes the conservative rule ran
        self.transformed: set[str] = set()  # weights transformed before use: paths unknown, all kept effective

    # helpers the rules call ------------------------------------------------------------
    def layer(self, name: str, tensor: torch.Tensor, x, op, channel_op=None, transposed: bool = False):
        """`op(x, w)` on the keep-mask of weight `name` (dense ones for a non-prunable one).

        At channel level, `channel_op(x, conn)` on the layer's channel connectivity
        replaces it where the masks offer one: spatially coarser (a channel live
        anywhere counts as live everywhere), hence sound, and far cheaper.
        `transposed`: a 2-D weight stored [in, out] and applied as `x @ w` (Hugging
        Face's Conv1D, exported as addmm/mm), run as `F.linear` on its transpose.
        """
        name = self._canonical.get(name, name)
        if name not in self.masks:
            if op is F.linear and len(tensor.shape) == 2 and isinstance(x, torch.Tensor):
                return _dense_linear(x, tensor.shape[1] if transposed else tensor.shape[0])
            return op(x, torch.ones(tensor.shape, dtype=self._dtype))
        self.interpreted.add(name)
        self._applied[name] = self._applied.get(name, 0) + 1
        record, conn, lines = self._record, None, None
        if self.channel_level and channel_op is not None:
            conn = self.masks.channel_conn(name)
        if conn is not None:
            keep, op, record = conn, channel_op, self._record_pairs
            if getattr(self.masks, "full_taps", False) and x.ndim > 2:
                # Under-approximation (LevelMasks.full_taps_only): only a channel live at every position
                # counts, so through full taps each live channel stays live everywhere, as per element.
                x = x.amin(dim=tuple(range(2, x.ndim)), keepdim=True)
        else:
            if op is F.linear and len(tensor.shape) == 2 and hasattr(self.masks, "kept_lines"):
                lines = self.masks.kept_lines(name)
            make = (lambda: self.masks.keep(name).t()) if transposed else (lambda: self.masks.keep(name))
            shape = tuple(tensor.shape)[::-1] if transposed else tuple(tensor.shape)
            keep = LazyKeep(make, shape) if lines is not None else make()
            if transposed:  # as F.linear on w's transpose: rows and columns swap, and reached ones swap back
                lines = None if lines is None else type(lines)(lines.cols, lines.rows)
                record = _transposed_record(self._record, tuple(tensor.shape))
            if self.is_reduced(x):
                x = x.expand(self._arg_shape(x))
        if not (self.backward and torch.is_grad_enabled()):
            out = _apply(op, x, keep, lines)
        else:
            out = _Layer.apply(x, keep, op, lambda reached, kept: record(name, kept, reached), lines)
        del keep
        release_after(int(np.prod(tensor.shape)))
        return out

    def _record(self, name, keep, reached):
        self._note_reached(name, reached)
        if reached is EVERYWHERE or self.effective.get(name) is ALL_KEPT:
            self.effective[name] = ALL_KEPT  # every kept weight: counted from the allocation, no mask read
            return
        if self._applied.get(name) == 1 and all(n != name for n, _ in self._attr_masks):
            # applied once (the forward is complete): its count is final, no bits need keeping for an OR
            self.effective[name] = count_true(reached & _mask_of(keep))
            return
        # kept on a path; packed, as every layer's waits for the count
        hit = pack_bits(reached & _mask_of(keep))
        self.effective[name] = hit if name not in self.effective else self.effective[name] | hit

    def _note_reached(self, name, reached):
        # Only when asked (cover.py): whether a use of the layer reached every weight position.
        if self.reached is not None:
            self.reached[name] = self.reached.get(name, False) or reached is EVERYWHERE or all_true(reached)

    def _record_pairs(self, name, conn, reached):
        self._note_reached(name, reached)
        before = self.reached_pairs.get(name)
        if reached is EVERYWHERE or before is EVERYWHERE:
            self.reached_pairs[name] = EVERYWHERE  # every kept pair (LevelMasks.effective_count)
            return
        hit = reached & conn
        self.reached_pairs[name] = hit if before is None else before | hit

    def weight_of(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        name = self._canonical.get(name, name)
        if name not in self.masks:
            return torch.ones(tensor.shape, dtype=self._dtype)
        return as_float(self.masks.keep(name), self._dtype)

    def output_shape_of(self, value: torch.Tensor) -> tuple[int, ...]:
        """The real shape of an output value (channel-level values may be reduced)."""
        for node in self.traced.gm.graph.nodes:
            if node.op == "output":
                metas = []
                fx.node.map_aggregate(node.args, lambda a: metas.append(a.meta.get("tensor_meta"))
                                      if isinstance(a, fx.Node) else None)
                for meta in metas:
                    if hasattr(meta, "shape") and len(meta.shape) == value.ndim and all(
                            m == v or v == 1 for m, v in zip(meta.shape, value.shape)):
                        return tuple(meta.shape)
        return tuple(value.shape)

    def output_shape(self) -> torch.Size:
        return self.current_node.meta["tensor_meta"].shape

    def join(self, *operands):
        live = [x for x in operands if isinstance(x, torch.Tensor)]
        shapes = [tuple(x.shape) for x in live]
        if not live:
            return operands[0]
        out = None
        for x in live:
            out = x if out is None else out + x
        return out.expand(torch.broadcast_shapes(*shapes)) if out.shape != torch.broadcast_shapes(*shapes) else out

    def matmul(self, a, b):
        if isinstance(b, _LazyWeight) and b._float is None and isinstance(a, torch.Tensor) and b.real.ndim == 2:
            return self.layer(b.name, b.real, a, F.linear, transposed=True)  # a prunable [in, out] weight
        if isinstance(b, Weight) and isinstance(a, torch.Tensor):
            return torch.matmul(a, b.mask)
        if isinstance(a, Weight) and isinstance(b, torch.Tensor):
            return torch.matmul(a.mask, b)
        a_t, b_t = _live(a), _live(b)
        if a_t is None and b_t is None:
            return a
        # out[i, j] needs some live a[i, :] or some live b[:, j]; the +1 keeps each
        # term's support exactly that without ever cancelling.
        if a_t is None:
            return torch.matmul(torch.ones_like(_mask(a)), b_t)
        if b_t is None:
            return torch.matmul(a_t, torch.ones_like(_mask(b)))
        return torch.matmul(a_t, b_t + 1) + torch.matmul(a_t + 1, b_t)

    def constant_average(self, out, values):
        """`out` with the features dead that average a constant equal in every row (averages.py)."""
        source = self._averages.get(self.current_node.name)
        if source is None or not isinstance(out, torch.Tensor):
            return out
        live = _live(values)
        if live is not None and bool((live > 0).all()):
            return out  # no dead feature to be constant: spares the generic network's run (O(weights))
        meta = source.meta.get("tensor_meta")
        shape = tuple(live.shape) if live is not None else tuple(getattr(meta, "shape", ()))
        if len(shape) < 2:
            return out
        dead = (live.detach().sum(-2, keepdim=True) == 0) if live is not None else torch.ones(
            (*shape[:-2], 1, shape[-1]), dtype=torch.bool)
        constant = self._uniform_constants(source.name, dead)
        return out if constant is None else out * (~constant).to(out.dtype)

    def _uniform_constants(self, source: str, dead: torch.Tensor) -> torch.Tensor | None:
        """The `dead` features of averaged operand `source` whose constant is equal in every row, or None
        where the generic network cannot tell. Value-level flows (cuts) ask per mask set with the real
        inputs' pattern: a cut feature is constant only at the current weights, which no nested run covers."""
        counts = None if self.cuts else getattr(self.masks, "pruned_counts", lambda: None)()
        uniformity = RowUniformity.of(self.traced)
        if counts is not None and uniformity.proven(counts, source, dead):
            return dead
        if self._constants is None:
            wanted = {n.name for n in self._averages.values()}
            values = constant_values(self.traced, self.weights, self.masks, wanted, uniform_inputs=counts is not None)
            self._constants = (uniformity.record(counts, values) if counts is not None
                               else {name: row_uniform(v) for name, v in values.items()})
        same = self._constants.get(source)
        if same is None or same.shape != dead.shape:
            return None
        return dead & same

    def window_any(self, x, kernel_size, stride, padding, dilation, ceil_mode):
        if self.is_reduced(x):
            return x
        nd = x.ndim - 2
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        dil = dilation if isinstance(dilation, (tuple, list)) else (dilation,) * nd
        if any(d != 1 for d in dil):
            return self._conservative_like(x, (x,))
        return pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad=True)

    def normalise_over(self, x, dims):
        """Softmax or normalisation over `dims`: every element live iff one of the mixed ones is;
        over a single element the result is a constant (softmax 1, a layer norm's bias)."""
        dims = tuple(range(x.ndim)) if dims is None else (dims,) if isinstance(dims, int) else tuple(dims)
        if all(x.shape[d] == 1 for d in dims) and not self.is_reduced(x):
            return torch.zeros_like(x)
        return self.any_over(x, dims, keepdim=True).expand_as(x)

    def group_mix(self, x, groups: int):
        """A group norm: every element live iff one of its group (channels x positions) is."""
        n = x.shape[0]
        mixed = x.reshape(n, groups, -1)
        if mixed.shape[-1] == 1:
            return torch.zeros_like(x)  # one element per group: a constant
        return mixed.sum(-1, keepdim=True).expand_as(mixed).reshape(x.shape)

    def any_over(self, x, dim=None, keepdim=False):
        if not isinstance(x, torch.Tensor):
            return x
        if dim is None:
            return x.sum() if not keepdim else x.sum(dim=tuple(range(x.ndim)), keepdim=True)
        return x.sum(dim=dim, keepdim=keepdim)

    def _conservative_like(self, example, inputs):
        total = sum(t.sum() for t in inputs if isinstance(t, torch.Tensor))
        return torch.ones_like(example) * total

    # fx.Interpreter hooks --------------------------------------------------------------
    def placeholder(self, target, args, kwargs):
        real = super().placeholder(target, args, kwargs)
        if not isinstance(real, torch.Tensor):
            return real
        return torch.ones(real.shape, dtype=self._dtype).requires_grad_(self.backward)

    def get_attr(self, target, args, kwargs):
        real = super().get_attr(target, args, kwargs)
        if not isinstance(real, torch.Tensor):
            return real
        name = self._canonical.get(target)
        if name is not None:
            self.interpreted.add(name)
            if name in self.masks:
                return _LazyWeight(self, target, name, real)
        return Weight(self._attr_mask(target, name, real), name, real.detach())

    def _attr_mask(self, target, name, real) -> torch.Tensor:
        """The float 0/1 mask of a weight read through get_attr; its gradient records reached positions.
        A tensor that is not pruned (an embedding table, a position table) is all ones: a broadcast
        view, not a table-sized tensor per flow, and nothing records its gradient."""
        if name is None:
            return torch.ones((), dtype=self._dtype).expand(real.shape)
        mask = self.weight_of(target, real).requires_grad_(self.backward and torch.is_grad_enabled())
        if name is not None and mask.requires_grad:
            self._attr_masks.append((name, mask))
        return mask

    def is_reduced(self, x) -> bool:
        """A channel-level value kept at size 1 in its spatial dims (see _ChannelConv)."""
        return self.channel_level and isinstance(x, torch.Tensor) and x.ndim > 2 and all(d == 1 for d in x.shape[2:])\
            and x.shape != self._arg_shape(x)

    def _arg_shape(self, x):
        for arg in self.current_node.all_input_nodes:
            if self.env.get(arg) is x:
                meta = arg.meta.get("tensor_meta")
                return getattr(meta, "shape", None)
        return None

    def _expand_args(self, reduced_ok: bool, args, kwargs):
        # Reduced values broadcast through the rules that only broadcast; any
        # other rule gets them at their real shape.
        if not self.channel_level or reduced_ok:
            return args, kwargs
        node = self.current_node
        shapes = {}
        for arg in node.all_input_nodes:
            meta = arg.meta.get("tensor_meta")
            if hasattr(meta, "shape"):
                shapes[id(self.env[arg])] = meta.shape

        def widen(v):
            if isinstance(v, torch.Tensor) and id(v) in shapes and v.shape != shapes[id(v)]:
                return v.expand(shapes[id(v)])
            return v

        return fx.node.map_aggregate(args, widen), fx.node.map_aggregate(kwargs, widen)

    def _apply_rule(self, rule: Rule | None, lead: tuple, args, kwargs):
        """The node's abstract value by its rule (`lead`: operands before the node's own,
        the module for module rules); over constants alone, the op itself on their witnesses;
        by the conservative fallback where there is no rule or the rule cannot handle the node."""
        if not _has_live((args, kwargs)) and not (rule is not None and rule.rearranges and _has_weight(args)):
            return self._constant(rule, lead, args, kwargs)
        if rule is None:
            return self._conservative(args, kwargs)
        args, kwargs = self._expand_args(rule.reduced_ok, args, kwargs)
        if rule.passes_target:
            lead = (self.current_node.target, *lead)
        try:
            return _tree_bool(rule.fn(self, *lead, *args, **kwargs))
        except Exception:  # noqa: BLE001 - a rule that cannot read this node loses precision, never soundness
            return self._conservative(args, kwargs)

    def _conservative(self, args, kwargs):
        """Every output element live iff any input element is, in the node's recorded shape.
        Containers (dataclasses, named tuples, dicts) are built as they are."""
        node = self.current_node
        if node.op == "call_function" and _is_container(node.target):
            return node.target(*args, **kwargs)
        self.conservative.setdefault(_op_name(node, self), set()).add(node.name)
        args, kwargs = self._expand_args(False, args, kwargs)
        return _tree_bool(self._fallback(node, args, kwargs))

    def _constant(self, rule: Rule | None, lead: tuple, args, kwargs):
        """A node over constants alone is a constant: the op itself on the witnesses gives its
        value and where it is non-zero; an unknown witness or a failing op gives a dense constant."""
        node = self.current_node
        operands = _weights((args, kwargs))
        names = {w.name or w.origin for w in operands} - {None}
        origin = next(iter(names)) if len(names) == 1 else None
        witness = _unwrap((args, kwargs), Weight.witness)
        if witness is not None and mutates_first_operand(node):  # never write into the model's own tensors
            witness = fx.node.map_aggregate(witness, lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
        try:
            if witness is None:
                raise ValueError("a constant of unknown value")
            if node.op == "call_module":
                out = self._module_on_constants(node.target, *witness[0], **witness[1])
            elif node.op == "call_method":
                obj, *rest = witness[0]
                out = getattr(obj, node.target)(*rest, **witness[1])
            else:
                out = node.target(*witness[0], **witness[1])
        except Exception:  # noqa: BLE001 - unknown values: every entry may be non-zero
            if names:
                self.transformed |= names
            return _with_origin(self._dense_constant(node), origin)
        layer = self._layer_of_module.get(node.target) if node.op == "call_module" else None
        if layer is None and rule is not None and rule.weighted and len(args) > 1 and isinstance(args[1], Weight):
            layer = args[1].name if args[1].name in self._layer_names else None
        if layer is not None:
            # A layer applied to constants: its output is constant (dead), its weights on no input path.
            self.interpreted.add(layer)
            for o in output_tensors(out)[:1]:
                self.outputs_of.setdefault(layer, []).append(torch.zeros(o.shape, dtype=self._dtype))
        elif names:
            self.transformed |= names  # a prunable weight changed before use: its paths are not tracked
        return _with_origin(_as_constant(out, self._dtype), origin)

    def _module_on_constants(self, target: str, *args, **kwargs):
        # The module's own forward with its prunable weights masked; the module is restored after.
        from torch.nn.utils.stateless import _reparametrize_module

        module = self.fetch_attr(target)
        state = {}
        for pname, p in module.named_parameters():
            name = self._canonical.get(f"{target}.{pname}")
            if name is not None and name in self.masks:
                state[pname] = Weight(self.masks.keep(name).to(p.dtype), name, p.detach()).witness()
        with _reparametrize_module(module, state):
            return module(*args, **kwargs)

    def _dense_constant(self, node: fx.Node):
        meta = node.meta.get("tensor_meta", node.meta.get("val"))
        return _as_constant(_ones_like_meta(meta, torch.ones(()), self._dtype), self._dtype, known=False)

    @property
    def target(self) -> str:
        """The node being run's target: for a module rule, the module's qualified name."""
        return self.current_node.target

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        out = self._apply_rule(RULES.for_module(module), (module,), args, kwargs)
        layer = self._layer_of_module.get(target)
        if layer is not None and isinstance(out, torch.Tensor):
            self.outputs_of.setdefault(layer, []).append(out)
        return out

    def call_function(self, target, args, kwargs):
        rule = RULES.for_node(self.current_node)
        out = self._apply_rule(rule, (), args, kwargs)
        layer = (args[1].name or args[1].origin) if len(args) > 1 and isinstance(args[1], Weight) else None
        if rule is not None and rule.weighted and layer in self._layer_names and isinstance(out, torch.Tensor):
            # conv/linear written as functions (torch.export graphs, weights transformed in forward)
            self.outputs_of.setdefault(layer, []).append(out)
        return out

    def call_method(self, target, args, kwargs):
        return self._apply_rule(RULES.for_node(self.current_node), (), args, kwargs)

    def run_node(self, n):
        self.current_node = n
        if n.op.startswith("call_") and "value" in n.meta:
            return n.meta["value"]  # sizes, comparisons, python scalars: concrete (trace recorded them)
        inplace = mutates_first_operand(n)
        if n.op.startswith("call_") and not n.users and not inplace:
            return None  # side-effect-only nodes (export's guards) carry no data
        out = super().run_node(n)
        if inplace and isinstance(out, (torch.Tensor, Weight)):
            for alias, whole in aliases_of(n):  # later readers of the mutated tensor see the new value
                before = self.env.get(alias)
                if whole:
                    self.env[alias] = out
                elif isinstance(before, torch.Tensor) and isinstance(out, torch.Tensor):
                    # Written through a view: elements are not tracked back to the base, so the
                    # whole base is live where the written part may be (coarse, sound).
                    self.env[alias] = _bool(before + out.sum())
        cut = self.cuts.get(n.name)
        if cut is not None and isinstance(out, torch.Tensor):
            out = out * cut  # value level: elements proven constant at these weights
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            # Per-node result on the analysis's own graph, as ShapeProp stores tensor_meta: how many of
            # this node's elements a kept input path reaches, under the masks of this (latest) flow.
            n.meta[FLOW_META] = FlowMeta(int(torch.count_nonzero(out.detach() > 0)), out.numel())
        return out

    def apply_real(self, fn, args, kwargs):
        """`fn` itself on the abstract values of a rearranging op. Over constants alone it moves
        their masks (and witnesses) as it moves elements; next to live values a float constant is
        dead (zeros) and an integer or bool one is an index or selector, read at its real value."""
        if not _has_live((args, kwargs)):
            a, k = _unwrap((args, kwargs), _as_mask)
            out = fn(*a, **k)
            witness = _unwrap((args, kwargs), Weight.witness)
            real = fn(*witness[0], **witness[1]) if witness is not None else None
            names = {w.name or w.origin for w in _weights((args, kwargs))} - {None}
            if isinstance(out, torch.Tensor):
                return Weight(out, None, real if isinstance(real, torch.Tensor) else None,
                              next(iter(names)) if len(names) == 1 else None)
            return out
        a, k = _unwrap((args, kwargs), _as_operand)
        return fn(*a, **k)

    def _fallback(self, node: fx.Node, args, kwargs):
        flat = []
        fx.node.map_aggregate((args, kwargs), lambda v: flat.append(v) if isinstance(v, torch.Tensor) else None)
        total = sum(t.sum() for t in flat) if flat else torch.zeros(())
        structure = self._structure(node, args, kwargs)
        if structure is not None:  # the op's own output type (a named tuple such as sort's values/indices)
            return _tree_map_tensors(structure, lambda t: torch.ones(t.shape, dtype=self._dtype) * total)
        meta = node.meta.get("tensor_meta", node.meta.get("val"))
        if meta is None:
            from collapsekit.errors import CollapsekitError
            raise CollapsekitError(f"no transfer rule and no recorded shape for node {node.name} ({node.target})")
        return _ones_like_meta(meta, total, self._dtype)

    def _structure(self, node: fx.Node, args, kwargs):
        """The op run on the abstract values, for the type and shapes of its output only; None if it fails."""
        if node.op not in ("call_function", "call_method") or mutates_first_operand(node):
            return None
        a, k = _unwrap((args, kwargs), _as_operand)
        try:
            if node.op == "call_method":
                return getattr(a[0], node.target)(*a[1:], **k)
            return node.target(*a, **k)
        except Exception:  # noqa: BLE001 - then the recorded shapes say it
            return None


def _ones_like_meta(meta, total, dtype):
    """Every element alive iff any input element is, in the shape(s) ShapeProp (or export) recorded."""
    if isinstance(meta, (TensorMetadata, torch.Tensor)):
        return torch.ones(tuple(meta.shape), dtype=dtype) * total
    if isinstance(meta, (tuple, list)):
        return type(meta)(_ones_like_meta(m, total, dtype) for m in meta)
    if isinstance(meta, dict):
        return {k: _ones_like_meta(m, total, dtype) for k, m in meta.items()}
    return meta


def _tree_bool(out):
    if isinstance(out, torch.Tensor):
        return _bool(out)
    if isinstance(out, (tuple, list)):
        return type(out)(_tree_bool(o) for o in out)
    return out


def output_tensors(value) -> list[torch.Tensor]:
    """The tensors of a value: nested tuples, lists, dicts and dataclasses (Weights are constants, not outputs)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Weight):
        return []
    if isinstance(value, dict):
        value = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in output_tensors(v)]
    return []


def _has_live(value) -> bool:
    """True if a liveness tensor (an activation, not a constant) is anywhere in `value`."""
    return bool(output_tensors(value))


def _weights(value) -> list[Weight]:
    found = []
    fx.node.map_aggregate(value, lambda v: found.append(v) if isinstance(v, Weight) else None)
    return found


def _has_weight(value) -> bool:
    return bool(_weights(value))


def _unwrap(value, fn):
    """`value` with every Weight replaced by fn(weight); None if fn gives None for one."""
    missing = []

    def one(v):
        if not isinstance(v, Weight):
            return v
        out = fn(v)
        if out is None:
            missing.append(v)
        return out

    out = _tree_map(value, one)
    return None if missing else out


def _as_mask(w: Weight):
    # Among constants alone: a float constant moves as its mask; an index selects by its value.
    return w.real if w.real is not None and not w.real.is_floating_point() else w.mask


def _as_operand(w: Weight):
    # Next to live values: a float constant carries no liveness; an index is read at its value.
    if w.real is not None and not w.real.is_floating_point():
        return w.real
    return torch.zeros(w.mask.shape, dtype=w.mask.dtype)


def _as_constant(out, dtype, known: bool = True):
    """Real values computed from constants alone, as Weights (mask: where non-zero)."""
    def one(t):
        if not isinstance(t, torch.Tensor):
            return t
        if not known:
            return Weight(torch.ones(t.shape, dtype=dtype))
        nonzero = (t != 0) if t.is_floating_point() or t.is_complex() else torch.ones(t.shape, dtype=torch.bool)
        return Weight(nonzero.to(dtype), None, t.detach())

    if isinstance(out, torch.Tensor):
        return one(out)
    if isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
        return type(out)(_as_constant(o, dtype, known) for o in out)
    return out


def _tree_map(value, fn):
    """fn on every leaf of nested tuples (named ones and torch's return types kept), lists and dicts."""
    if isinstance(value, (tuple, list)):
        items = [_tree_map(v, fn) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: _tree_map(v, fn) for k, v in value.items()}
    return fn(value)


def _tree_map_tensors(value, fn):
    return _tree_map(value, lambda v: fn(v) if isinstance(v, torch.Tensor) else v)


def _with_origin(value, origin: str | None):
    if origin is None:
        return value
    return fx.node.map_aggregate(value, lambda v: dataclasses.replace(v, origin=origin) if isinstance(v, Weight) else v)


def _is_container(target) -> bool:
    return isinstance(target, type) and (dataclasses.is_dataclass(target) or issubclass(target, (tuple, dict)))


def channel_dim(weight: PrunableWeight, out: torch.Tensor) -> int:
    """The output-channel (feature) axis of a layer's output tensor."""
    return 1 if weight.kind == "conv" else out.ndim - 1


class KeepList:
    """Masks given as one bool keep-mask per prunable weight (no channel connectivity)."""

    def __init__(self, weights: list[PrunableWeight], keep: list[torch.Tensor]):
        self._keep = {w.name: k for w, k in zip(weights, keep)}

    def __contains__(self, name):
        return name in self._keep

    def keep(self, name: str) -> torch.Tensor:
        return self._keep[name]

    def channel_conn(self, name: str):
        return None

    def effective_count(self, name, reached_pairs):  # pragma: no cover - never asked without conn
        raise NotImplementedError


def run_flow(traced: TracedModel, weights: list[PrunableWeight], masks, backward: bool = True,
             channel_level: bool = False, cuts: dict[str, torch.Tensor] | None = None,
             reached: dict | None = None, unused: dict[str, list[int]] | None = None) -> FlowResult:
    """The structural verdict for `masks`: a list of bool keep-masks (one per prunable weight,
    in order) or a `connectivity.LevelMasks`.

    `cuts` (node name -> 0/1 mask, from `values.relu_cuts`) makes it a value-level
    flow: those elements count as constant although kept paths reach them.

    `unused`: these masks' unused channels where the caller knows them (Analysis.report:
    a collapsed denser level whose unused channels already equal the sparsest masks'
    ones, usedness only shrinking with the masks); no backward pass runs, and as
    the masks must then collapse, every effective count is 0. Should they not
    collapse, the flow runs again with its backward pass.

    Element level (default) is exact: liveness per activation element. Channel
    level treats a channel live anywhere as live everywhere, which can only keep
    more alive, so its deaths are real; it is exact unless a map shrinks to a few
    pixels that sparse off-centre taps cannot see.
    """
    if isinstance(masks, (list, tuple)):
        masks = KeepList(weights, list(masks))
    known = backward and unused is not None
    backward = backward and not known
    flow = ChannelFlow(traced, weights, masks, backward, channel_level, cuts)
    flow.reached = reached  # filled with each layer's reached positions (backward only)
    with torch.set_grad_enabled(backward):
        # The input is the only leaf that needs a gradient: it makes every live
        # element part of the autograd graph, and weights never need one.
        result = flow.run(*traced.example_inputs)
        outs = output_tensors(result)
        alive_count = sum(int((o > 0).sum()) for o in outs)
        size = sum(int(np.prod(flow.output_shape_of(o))) for o in outs) or 1
        collapsed = alive_count == 0
        if known and not collapsed:  # the caller's premise fails: never trust it, run the backward pass
            flow.env.clear()
            return run_flow(traced, weights, masks, True, channel_level, cuts, reached)
        if backward:
            for outs_of_layer in flow.outputs_of.values():
                for o in outs_of_layer:
                    if o.requires_grad:
                        o.retain_grad()
            seeds = [o for o in outs if o.requires_grad]
            if seeds:
                torch.autograd.backward(seeds, [torch.ones_like(o) for o in seeds])
            for name, mask in flow._attr_masks:
                if mask.grad is not None:
                    flow._record(name, masks.keep(name), mask.grad > 0)
    by_name = {w.name: w for w in weights}
    dead, found = {}, {}
    for name, outs_of_layer in flow.outputs_of.items():
        w = by_name[name]
        alive = used = None
        for o in outs_of_layer:
            dim = channel_dim(w, o)
            others = tuple(d for d in range(o.ndim) if d != dim)
            a = (o.detach() > 0).any(dim=others) if others else o.detach() > 0
            alive = a if alive is None else alive | a
            if backward:
                g = o.grad
                u = (g > 0).any(dim=others) if (g is not None and others) else (
                    g > 0 if g is not None else torch.zeros_like(a))
                used = u if used is None else used | u
        idx = torch.nonzero(~alive).flatten().tolist()
        if idx:
            dead[name] = idx
        if backward:
            idx = torch.nonzero(~used).flatten().tolist()
            if idx:
                found[name] = idx
    if known:
        found = {name: list(idx) for name, idx in unused.items()}
    effective = None
    if backward or known:
        effective = np.array([_effective_count(flow, masks, w.name, collapsed) for w in weights], dtype=np.int64)
    # The autograd graph refers back to the flow (through _Layer's record
    # callbacks): drop the flow's tensors so the cycle does not outlive the call.
    flow.outputs_of.clear()
    flow.env.clear()
    flow._attr_masks.clear()
    conservative = {op: len(nodes) for op, nodes in sorted(flow.conservative.items())}
    return FlowResult(collapsed, dead, found, effective, min(1.0, alive_count / size), conservative)


def _effective_count(flow: ChannelFlow, masks, name: str, collapsed: bool) -> int:
    if collapsed:
        return 0  # no input-output path at all
    if name not in flow.interpreted or name in flow.transformed:
        # Applied inside a module with no rule, transformed before use, or never applied:
        # its paths are unknown, so every kept weight counts as effective (never overstate sparsity).
        return int(torch.count_nonzero(masks.keep(name)))
    hits = flow.effective.get(name)
    if hits is ALL_KEPT:
        kept_count = getattr(masks, "kept_count", None)
        return kept_count(name) if kept_count is not None else int(torch.count_nonzero(masks.keep(name)))
    count = hits if isinstance(hits, int) else (count_bits(hits) if hits is not None else 0)
    if name in flow.reached_pairs:
        count += masks.effective_count(name, flow.reached_pairs[name])
    return count
