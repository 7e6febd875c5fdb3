"""Value-level death: what is constant at the current (masked) weights although a kept path remains.

A sign analysis (abstract interpretation with real weights, docs/design.md) tracks
for each activation element whether it can be positive and whether it can be
negative. A ReLU whose input can never be positive outputs the constant 0; those
elements are *cuts*, which the structural flow then applies to find channels
and outputs that are constant at these weights (`level.value_collapsed`).

Every rule over-approximates the signs a value can take, so a cut is proven;
ops without a rule may take any sign. Batch norms are read in eval mode.
Rules live in one `rules.RuleTable` (SIGN_RULES) and read a module's name from
the node being run (`sp.target`); nothing is written on the user's modules.
"""
from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from collapsekit.analysis.ops import CONV_MODULES, DROPOUT_MODULES, POOL_MODULES, RELU_FUNCTIONS, RELU_MODULES
from collapsekit.analysis.prunable import PrunableWeight
from collapsekit.analysis.rules import RuleInterpreter, RuleTable, cat_pairs, getitem_pair
from collapsekit.analysis.trace import TracedModel

Sign = tuple  # (can_be_positive, can_be_negative), float 0/1 tensors of the value's shape

SIGN_RULES = RuleTable()


def _any(t: torch.Tensor) -> torch.Tensor:
    return (t > 0).to(torch.float32)


@SIGN_RULES.module(*RELU_MODULES)
def _relu_module(sp, module, x):
    return sp.relu(x)


@SIGN_RULES.function(*RELU_FUNCTIONS)
def _relu_function(sp, x, *args, **kwargs):
    return sp.relu(x)


@SIGN_RULES.method("relu")
def _relu_method(sp, x):
    return sp.relu(x)


@SIGN_RULES.module(nn.Identity, *DROPOUT_MODULES, nn.Tanh, nn.SiLU, nn.GELU, nn.Flatten, nn.Hardswish,
                   nn.LeakyReLU)
def _same_sign_module(sp, module, x):
    # These keep the sign of their input (or of its elements, reshaped).
    return tuple(module(t) if isinstance(module, nn.Flatten) else t for t in x)


@SIGN_RULES.module(nn.Sigmoid, nn.Softmax)
def _positive_module(sp, module, x):
    return (torch.ones_like(x[0]), torch.zeros_like(x[1]))


@SIGN_RULES.module(nn.modules.batchnorm._BatchNorm)
def _batch_norm(sp, module, x):
    a = module.weight / torch.sqrt(module.running_var + module.eps) if module.affine else \
        1 / torch.sqrt(module.running_var + module.eps)
    b = (module.bias if module.affine else 0) - module.running_mean * a
    shape = (1, -1) + (1,) * (x[0].ndim - 2)
    a, b = a.detach().view(shape), torch.as_tensor(b).detach().view(shape)
    pos, neg = x
    return (_any(pos * (a > 0) + neg * (a < 0) + (b > 0)), _any(pos * (a < 0) + neg * (a > 0) + (b < 0)))


@SIGN_RULES.module(*CONV_MODULES)
def _conv(sp, module, x):
    w = sp.weight(f"{sp.target}.weight", module.weight)
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x[0].ndim]
    def apply(inp, weights):
        return conv(inp, weights, None, module.stride, module.padding, module.dilation, module.groups)
    return sp.affine(x, w, module.bias, apply)


@SIGN_RULES.module(nn.Linear)
def _linear(sp, module, x):
    w = sp.weight(f"{sp.target}.weight", module.weight)
    return sp.affine(x, w, module.bias, F.linear, channel_dim=-1)


@SIGN_RULES.module(*POOL_MODULES)
def _pool(sp, module, x):
    # Non-negative weights over a window: the output may take a sign if an element of the window may.
    return tuple(_any(module(t)) for t in x)


@SIGN_RULES.function(operator.add, torch.add)
def _add(sp, a, b, **kwargs):
    pa, na = sp.sign_of(a)
    pb, nb = sp.sign_of(b)
    return (_any(pa + pb), _any(na + nb))


@SIGN_RULES.function(operator.mul, torch.mul)
def _mul(sp, a, b, **kwargs):
    pa, na = sp.sign_of(a)
    pb, nb = sp.sign_of(b)
    return (_any(pa * pb + na * nb), _any(pa * nb + na * pb))


@SIGN_RULES.function(torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, passes_target=True)
def _shape_like(sp, fn, x, *args, **kwargs):
    # Each element's sign set moves with the element (a pool's output takes any of its window's).
    return tuple(_any(fn(t, *args, **kwargs)) for t in x)


@SIGN_RULES.function(torch.cat)
def _cat(sp, parts, *args, **kwargs):
    return cat_pairs([sp.sign_of(p) for p in parts], *args, **kwargs)


SIGN_RULES.function(operator.getitem)(getitem_pair)  # a signed tensor's two sign masks index together


@SIGN_RULES.method("view", "reshape", "flatten", "mean", "contiguous", passes_target=True)
def _method_like(sp, name, x, *args, **kwargs):
    return tuple(_any(getattr(t, name)(*args, **kwargs)) for t in x)


class SignPass(RuleInterpreter):
    """Signs every value can take at the given keep-masks; records the ReLU elements cut to constant 0."""

    RULES = SIGN_RULES
    PASS = "signs"

    def __init__(self, traced: TracedModel, masks: dict[str, torch.Tensor], read=None):
        super().__init__(traced.gm)
        self.masks = masks
        self.read = read or {}  # name -> callable returning the weight's values (streamed weights)
        self.cuts: dict[str, torch.Tensor] = {}

    def weight(self, name, tensor):
        keep = self.masks.get(name)
        if name in self.read:
            tensor = self.read[name]()
        w = tensor.detach().float()
        return w * keep if keep is not None else w

    def affine(self, x, w, bias, apply, channel_dim: int = 1):
        pos, neg = x
        wp, wn = (w > 0).float(), (w < 0).float()
        b = torch.zeros(()) if bias is None else bias.detach()
        shape = (-1,) if channel_dim == -1 else (1, -1) + (1,) * (pos.ndim - 2)  # a linear's features are last
        bp = (b > 0).float().view(shape) if bias is not None else 0.0
        bn = (b < 0).float().view(shape) if bias is not None else 0.0
        return (_any(apply(pos, wp) + apply(neg, wn) + bp), _any(apply(pos, wn) + apply(neg, wp) + bn))

    def relu(self, x):
        pos, _ = x
        self.cuts[self._node.name] = pos  # 0 where the input can never be positive
        return (pos, torch.zeros_like(pos))

    def sign_of(self, v) -> Sign:
        if isinstance(v, tuple):
            return v
        value = torch.as_tensor(v, dtype=torch.float32)
        return ((value > 0).float(), (value < 0).float())

    def input(self, real):
        return (torch.ones(real.shape), torch.ones(real.shape))

    def constant(self, value, target):
        return self.sign_of(self.weight(target, value) if target in self.masks else value)

    def unknown(self) -> Sign:
        """Any sign, in the node's recorded shape (ops with no rule)."""
        meta = self._node.meta.get("tensor_meta")
        if not hasattr(meta, "shape"):
            raise _Unsupported(self._node.name)
        return (torch.ones(meta.shape), torch.ones(meta.shape))


class _Unsupported(Exception):
    pass


# Activations the value level can cut (here: ReLU by sign; intervals.py: ReLU, ReLU6,
# Hardtanh and Hardswish by range). A graph without one has no value-level cut.
_CUTTABLE_MODULES = (*RELU_MODULES, nn.Hardtanh, nn.Hardswish)
_CUTTABLE_FUNCTIONS = (*RELU_FUNCTIONS, F.hardswish, F.hardtanh)


def has_cuttable_activation(traced: TracedModel) -> bool:
    """True if some node is an activation the sign or interval pass can cut: without one neither
    finds a cut, so callers skip building the masks they would read."""
    gm = traced.gm
    for node in gm.graph.nodes:
        if (node.op == "call_module" and isinstance(gm.get_submodule(node.target), _CUTTABLE_MODULES)) or \
                (node.op == "call_function" and node.target in _CUTTABLE_FUNCTIONS) or \
                (node.op == "call_method" and node.target in ("relu", "relu6", "hardswish", "hardtanh")):
            return True
    return False


def relu_cuts(traced: TracedModel, weights: list[PrunableWeight], keep: list[torch.Tensor],
              tensors=None) -> dict[str, torch.Tensor] | None:
    """ReLU node name -> 0/1 float mask (0: constant 0 at these weights), or None if the signs
    cannot be followed through this graph (then nothing is claimed).

    `tensors` (aligned with `weights`, read when indexed) replaces the module's own
    values: a streamed analysis traces a model whose prunable weights hold no data."""
    masks = {alias: k for w, k in zip(weights, keep) for alias in (w.name, *w.aliases)}
    read = {} if tensors is None else {alias: (lambda i=i: tensors[i]) for i, w in enumerate(weights)
                                       for alias in (w.name, *w.aliases)}
    try:
        with torch.no_grad():
            sp = SignPass(traced, masks, read)
            sp.run(*traced.example_inputs)
    except Exception:  # noqa: BLE001 - no shape to answer an unhandled op with (Invariant 10): nothing claimed
        return None
    return {name: cut for name, cut in sp.cuts.items() if bool((cut == 0).any())}
