"""The channel flow's transfer rules: one entry per op in `RULES`; adding an op means adding one here.

Each rule maps its operands' abstract values (flow_values.py) to the node's, with
non-negative arithmetic so that nothing cancels: an output element is live iff
some kept path reaches it. Rules are keyed by module type, function (or aten
overload) or method name, with their properties as flags (rules.Rule), and read
the running module's name from the interpreter (`flow.target`); the helpers they
call (`flow.layer`, `flow.join`, `flow.any_over`, ...) are `ChannelFlow`'s.
Ops with no rule get the interpreter's conservative one.
"""
from __future__ import annotations

import builtins
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from collapsekit.analysis.flow_layers import ChannelConv, all_ones_view, dense_linear
from collapsekit.analysis.flow_values import Constant, PrunableConstant, as_constant, boolean, liveness, map_constants, \
    operand_form, support
from collapsekit.analysis.ops import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES, \
    ADAPTIVE_MAX_POOL_FUNCTIONS, ADAPTIVE_MAX_POOL_MODULES, ARITHMETIC_FUNCTIONS, ARITHMETIC_METHODS, \
    AVG_POOL_FUNCTIONS, AVG_POOL_MODULES, BATCH_NORM_MODULES, CONV_MODULES, CONV_TRANSPOSE_MODULES, \
    DROPOUT_FUNCTIONS, DROPOUT_MODULES, LOG_SOFTMAX_FUNCTIONS, LOG_SOFTMAX_METHODS, LOG_SOFTMAX_MODULES, \
    MAX_POOL_FUNCTIONS, MAX_POOL_MODULES, PARAMETRIC_ACTIVATION_MODULES, SOFTMAX_FUNCTIONS, SOFTMAX_METHODS, \
    SOFTMAX_MODULES
from collapsekit.analysis.rules import RuleTable, aten


# -- the registry ------------------------------------------------------------------------
RULES = RuleTable()
module_rule = RULES.module  # keyed by module type (looked up along the MRO)
function_rule = RULES.function  # keyed by the called function or aten overload
method_rule = RULES.method  # keyed by tensor method name


# Structure-preserving ops: the abstract value goes through the op itself.
# Activations, dropout and eval-mode batch norm are per-element bijections or
# per-channel affine maps: they never join or cut a path structurally.
_IDENTITY_MODULES = (*ACTIVATION_MODULES, *PARAMETRIC_ACTIVATION_MODULES, nn.Identity, *DROPOUT_MODULES,
                     *BATCH_NORM_MODULES)


@module_rule(*_IDENTITY_MODULES, reduced_ok=True, binary=True)
def _identity_module(flow, module, x, *args, **kwargs):
    return x


_IDENTITY_FUNCTIONS = [*ACTIVATION_FUNCTIONS, *DROPOUT_FUNCTIONS, F.batch_norm, torch.exp, torch.log, torch.neg,
                       torch.abs, torch.sqrt, torch.rsqrt, torch.square, torch.clamp, torch.clip, torch.sign,
                       operator.neg, operator.pos]
_IDENTITY_FUNCTIONS += aten("clone.default", "neg.default", "batch_norm.default", "alias.default",
                            "contiguous.default", "detach.default", "lift_fresh_copy.default",
                            "_to_copy.default", "to.dtype", "to.dtype_layout", "type_as.default",
                            "rsqrt.default", "sqrt.default", "exp.default", "log.default", "abs.default",
                            "clamp.default", "clamp_min.default", "clamp_max.default", "sign.default",
                            "square.default", "reciprocal.default", "erf.default", "sin.default", "cos.default")


@function_rule(*_IDENTITY_FUNCTIONS, reduced_ok=True, binary=True)
@method_rule(*ACTIVATION_METHODS, "exp", "log", "neg", "abs", "sqrt", "rsqrt", "clamp", "clamp_", "clip",
             "contiguous", "clone", "float", "double", "half", "bfloat16", "to", "type_as", "pow", "square", "sign",
             "detach_", "requires_grad_", reduced_ok=True, binary=True)
def _identity(flow, x, *args, **kwargs):
    return x


@function_rule(*aten("_native_batch_norm_legit_no_training.default"), binary=True)
def _native_batch_norm(flow, x, *args, **kwargs):
    return (x, None, None)  # (output, saved mean, saved invstd): only the output flows on


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
_SHAPE_FUNCTIONS += [F.unfold]  # patches: copies of elements
# Selections by index: the index is a constant (its real values select), the source moves as it is.
_SHAPE_FUNCTIONS += [torch.gather, torch.index_select, torch.take_along_dim, torch.masked_select,
                     *aten("gather.default", "index_select.default", "index.Tensor")]
# Rearrangements whose elements are sums or blends of elements: not 0/1 from 0/1.
_BLENDING = {F.interpolate, *aten("upsample_bilinear2d.vec", "col2im.default")}
_SHAPE_FUNCTIONS = [f for f in _SHAPE_FUNCTIONS if f not in _BLENDING]


@function_rule(*_SHAPE_FUNCTIONS, passes_target=True, rearranges=True, binary=True)
@function_rule(*_BLENDING, F.fold, passes_target=True, rearranges=True)
def _shape_function(flow, fn, *args, **kwargs):
    return flow.apply_real(fn, args, kwargs)


@method_rule("view", "reshape", "flatten", "permute", "transpose", "unsqueeze", "squeeze", "expand", "expand_as",
             "repeat", "chunk", "split", "narrow", "size", "dim", "t", "movedim", "unbind", "roll", "flip",
             "view_as", "reshape_as", "unflatten", "numel", "tile", "swapaxes", "__getitem__",
             "gather", "index_select", "take_along_dim", passes_target=True, rearranges=True, binary=True)
def _shape_method(flow, name, *args, **kwargs):
    return flow.apply_real(lambda obj, *a, **k: getattr(obj, name)(*a, **k), args, kwargs)


@module_rule(nn.Flatten, nn.Unflatten, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
             nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.modules.padding._ReflectionPadNd,
             nn.modules.padding._ReplicationPadNd, nn.CircularPad2d, rearranges=True)
def _shape_module(flow, module, x, *args, **kwargs):
    return module(x)


# `view` reads a liveness tensor in the element order of the real (contiguous) one;
# liveness tensors may be strided differently (expanded, permuted), so reshape.
@method_rule("view", passes_target=True, rearranges=True, binary=True)
def _view_method(flow, name, x, *shape):
    if len(shape) == 1 and isinstance(shape[0], torch.dtype):
        raise TypeError("a view as another dtype has no structural reading")
    return flow.apply_real(lambda t, *s: t.reshape(*s), (x, *shape), {})


@function_rule(*aten("view.default", "_unsafe_view.default"), rearranges=True, binary=True)
def _aten_view(flow, x, shape):
    return flow.apply_real(torch.reshape, (x, shape), {})


# Embedding lookups: every feature of a looked-up row is live iff its index is.
@function_rule(F.embedding)
def _embedding_function(flow, ids, weight, *args, **kwargs):
    return _lookup(ids, support(weight).shape[-1])


@function_rule(*aten("embedding.default"))
def _aten_embedding(flow, weight, ids, *args, **kwargs):
    return _lookup(ids, support(weight).shape[-1])


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
_JOIN_FUNCTIONS = [*ARITHMETIC_FUNCTIONS, operator.truediv, operator.floordiv, torch.div, torch.maximum, torch.minimum, torch.where, torch.addcmul, torch.lerp, torch.pow,
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
@method_rule(*ARITHMETIC_METHODS, "div", "div_", "maximum", "minimum", "masked_fill", "addcmul", reduced_ok=True)
def _join(flow, *args, **kwargs):
    return flow.join(*args, *kwargs.values())


# Layers with weights: conv and linear on the keep-mask (non-negative, so any kept
# tap that reads a live element makes the output element live).
@module_rule(*CONV_MODULES, reduced_ok=True)
def _conv_module(flow, module, x):
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    else:
        padding = module.padding
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x.ndim - 2]
    return flow.layer(f"{flow.target}.weight", module.weight, x,
                      lambda x, w: conv(x, w, None, module.stride, padding, module.dilation, module.groups),
                      channel_op=ChannelConv(module.groups, flow.output_shape()))


@module_rule(*CONV_TRANSPOSE_MODULES)
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
    if isinstance(weight, PrunableConstant) and not weight.mask_made and isinstance(x, torch.Tensor):
        return flow.layer(weight.name, weight.real, x, F.linear)
    mask = support(weight)
    if isinstance(x, torch.Tensor) and mask.ndim == 2 and all_ones_view(mask):
        return dense_linear(x, mask.shape[0])
    return F.linear(x, mask)


@function_rule(F.conv1d, F.conv2d, F.conv3d, *aten("conv1d.default", "conv2d.default", "conv3d.default",
                                                  "conv1d.padding", "conv2d.padding", "conv3d.padding"),
               weighted=True)
def _conv_function(flow, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.ndim]
    return _weighted(flow, x, weight, lambda x, w: conv(x, w, None, stride, padding, dilation, groups))


@function_rule(*aten("convolution.default"), weighted=True)
def _aten_convolution(flow, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    return _weighted(flow, x, weight, lambda x, w: torch.ops.aten.convolution.default(
        x, w, None, stride, padding, dilation, transposed, output_padding, groups))


def _weighted(flow, x, weight, op):
    """`op(x, weight's support)`; a prunable weight that no rule has read as a float mask yet runs as a layer on
    its keep-mask (`ChannelFlow.layer`, like linear): its backward then asks no gradient of a graph input,
    which autograd's own conv backward computed for nothing (a patch embedding: 28 of its 32 ms per flow)."""
    if isinstance(weight, PrunableConstant) and not weight.mask_made and isinstance(x, torch.Tensor):
        return flow.layer(weight.name, weight.real, x, op)
    return op(x, support(weight))


@function_rule(torch.matmul, operator.matmul, torch.mm, torch.bmm, *aten("matmul.default", "mm.default",
                                                                         "bmm.default"))
@method_rule("matmul", "mm", "bmm", "__matmul__")
def _matmul(flow, a, b):
    return flow.constant_average(flow.matmul(a, b), b)


@function_rule(*aten("copy_.default"))
@method_rule("copy_")
def _copy(flow, dst, src, *args, **kwargs):
    """dst.copy_(src): dst takes src's liveness (a constant src leaves it dead)."""
    live = liveness(src)
    return (live if live is not None else torch.zeros(())).expand(support(dst).shape).clone()


@function_rule(operator.setitem)
def _setitem(flow, x, index, value):
    """`x[index] = value` (in place): the assigned elements take the value's liveness."""
    out = x.clone()
    index = map_constants(index, operand_form)
    out[index] = value if liveness(value) is not None else 0.0
    return out


@function_rule(torch.einsum, *aten("einsum.default"))
def _einsum(flow, equation, *operands):
    """A sum of products: an output element is live iff one of its terms has a live factor whose
    other factors are not structural zeros (the +1 keeps a live factor's partners non-zero)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    live = [i for i, x in enumerate(operands) if liveness(x) is not None]
    partner = [x.mask if isinstance(x, Constant) else x + 1 for x in operands]
    out = None
    for i in live:
        term = torch.einsum(equation, *[operands[j] if j == i else partner[j] for j in range(len(operands))])
        out = term if out is None else out + term
    return out


@function_rule(torch.baddbmm, torch.addmm, *aten("baddbmm.default", "addmm.default"))
def _add_product(flow, bias, a, b, **kwargs):
    return flow.join(bias, flow.matmul(a, b))


@function_rule(torch.cumsum, *aten("cumsum.default"))
@method_rule("cumsum")
def _cumsum(flow, x, dim, **kwargs):
    return x.cumsum(dim)  # element i sums elements up to i: exactly their support


# Tensors built from another's shape and dtype alone are constants.
@function_rule(torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like,
               *aten("zeros_like.default", "ones_like.default", "full_like.default", "new_ones.default",
                     "new_zeros.default", "new_full.default", "new_empty.default", "empty_like.default"),
               passes_target=True)
def _like(flow, fn, x, *args, **kwargs):
    meta = flow.current_node.meta.get("tensor_meta")
    real = torch.zeros(x.shape, dtype=meta.dtype if meta is not None else x.dtype)
    return as_constant(fn(real, *args, **kwargs), flow.dtype)


@method_rule("new_ones", "new_zeros", "new_full", "new_empty", "new_tensor", passes_target=True)
def _like_method(flow, name, x, *args, **kwargs):
    return _like(flow, lambda real, *a, **k: getattr(real, name)(*a, **k), x, *args, **kwargs)


# Pooling: max pooling becomes average pooling over the same windows. Both make a
# window's output live iff some element of it is, but only averaging sends the
# backward pass to every element a max could pick under other weights.
@module_rule(*MAX_POOL_MODULES, reduced_ok=True)
def _max_pool_module(flow, module, x):
    return flow.window_any(x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)


@function_rule(*MAX_POOL_FUNCTIONS, reduced_ok=True)
def _max_pool_function(flow, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, **kwargs):
    return flow.window_any(x, kernel_size, stride or kernel_size, padding, dilation, ceil_mode)


@module_rule(*AVG_POOL_MODULES, reduced_ok=True)
def _avg_pool_module(flow, module, x):
    return x if flow.is_reduced(x) else module(x)


@module_rule(*ADAPTIVE_MAX_POOL_MODULES, reduced_ok=True)
def _adaptive_max_module(flow, module, x):
    return _adaptive_max_function(flow, x, module.output_size)


@function_rule(*AVG_POOL_FUNCTIONS, reduced_ok=True, passes_target=True)
def _avg_pool_function(flow, fn, x, *args, **kwargs):
    return x if flow.is_reduced(x) else fn(x, *args, **kwargs)


@function_rule(*ADAPTIVE_MAX_POOL_FUNCTIONS, reduced_ok=True)
def _adaptive_max_function(flow, x, output_size, return_indices=False):
    # as average pooling over the same windows (see max pooling above)
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


@function_rule(*SOFTMAX_FUNCTIONS, *LOG_SOFTMAX_FUNCTIONS)
@method_rule(*SOFTMAX_METHODS, *LOG_SOFTMAX_METHODS)
def _softmax(flow, x, dim=None, *args, **kwargs):
    return flow.normalise_over(x, dim)


@function_rule(torch.linalg.vector_norm, *aten("linalg_vector_norm.default"), reduced_ok=True)
def _vector_norm(flow, x, ord=2, dim=None, keepdim=False, **kwargs):
    return flow.any_over(x, dim, keepdim)


@function_rule(F.group_norm, *aten("group_norm.default"))
def _group_norm(flow, x, num_groups, *args, **kwargs):
    return flow.group_mix(x, num_groups)


@module_rule(*SOFTMAX_MODULES, *LOG_SOFTMAX_MODULES)
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
    q, k, v = (boolean(flow.layer(n, t, x, lambda x, w, rows=rows: F.linear(x, w[rows])))
               for (n, t, rows), x in zip(projections, (query, key, value)))
    seq = 1 if module.batch_first else 0
    steer = flow.join(flow.any_over(q, -1, keepdim=True), flow.any_over(k, (seq, -1), keepdim=True))
    context = boolean(flow.join(steer, flow.any_over(v, seq, keepdim=True), torch.zeros_like(q)))
    return flow.layer(f"{name}.out_proj.weight", module.out_proj.weight, context, F.linear), None

