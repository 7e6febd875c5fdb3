"""Rule tables for the analysis interpreters: one entry per op, with its properties as flags.

The channel flow (flow_rules.py), the sign analysis (values.py), the interval
domain (intervals.py) and compaction's role table (pruning/compact.py) each keep
one `RuleTable`: rules filed by module type (looked up along the MRO), by called
function or torch.ops.aten overload, or by tensor method name. A rule's properties are flags given where it is registered
(docs/design.md, Style 1), so an interpreter reads `rule.reduced_ok`, never `rule is ...`,
and a new op is one new entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx
import torch.nn as nn

from collapsekit.analysis.trace import mutates_first_operand


@dataclass(frozen=True)
class Rule:
    """A transfer rule and what the interpreter must know to call it.

    reduced_ok: correct on channel-level values kept at size 1 in their spatial
        dims (it only broadcasts), so they need not be expanded to the real shape.
    weighted: applies a layer's weight (given as its second argument), so its
        output is recorded as that layer's output.
    passes_target: receives the node's target (the called function, or the
        method name) right after the interpreter, before the operands.
    rearranges: only moves, copies or selects elements (reshape, cat, getitem,
        gather), so it applies to a weight's keep-mask as to activations.
    binary: 0/1 operands give a 0/1 result (an identity on liveness, or a
        rearrangement that neither sums nor interpolates), so a pass that keeps
        its values 0/1 need not reset this node's.
    """

    fn: Callable
    reduced_ok: bool = False
    weighted: bool = False
    passes_target: bool = False
    rearranges: bool = False
    binary: bool = False


class RuleTable:
    """Rules keyed by module type, function (or aten overload) and method name."""

    def __init__(self):
        self.modules: dict[type, Rule] = {}
        self.functions: dict[object, Rule] = {}
        self.methods: dict[str, Rule] = {}

    def _register(self, table: dict, keys, flags: dict):
        def wrap(fn):
            entry = Rule(fn, **flags)
            for key in keys:
                table[key] = entry
            return fn
        return wrap

    def module(self, *types: type, **flags):
        """Decorator: file the rule under each module type (subclasses inherit it)."""
        return self._register(self.modules, types, flags)

    def function(self, *functions, **flags):
        """Decorator: file the rule under each called function or torch.ops.aten overload."""
        return self._register(self.functions, functions, flags)

    def method(self, *names: str, **flags):
        """Decorator: file the rule under each tensor method name."""
        return self._register(self.methods, names, flags)

    def for_module(self, module: nn.Module) -> Rule | None:
        return next((self.modules[t] for t in type(module).__mro__ if t in self.modules), None)

    def for_node(self, node: fx.Node, module: nn.Module | None = None) -> Rule | None:
        """The rule of a call node (`module`: the submodule a call_module node runs), or None."""
        if node.op == "call_module":
            return self.for_module(module)
        if node.op == "call_function":
            try:
                return self.functions.get(node.target)
            except TypeError:  # an unhashable callable has no rule
                return None
        if node.op == "call_method":
            return self.methods.get(node.target)
        return None


class Abstract(tuple):
    """A pass's abstract value of one tensor (a sign set's or an interval's two ends), as rules return it.

    Marked so the interpreter tells it from a real tuple of tensors (a constant's `chunk`, a
    `meshgrid` of index ranges) that it computes as the op itself."""


def op_name(node: fx.Node, interpreter: fx.Interpreter) -> str:
    """The op a node runs, as reports list it: module class, method name, aten overload or function name."""
    if node.op == "call_module":
        return type(interpreter.fetch_attr(node.target)).__name__
    if node.op == "call_method":
        return str(node.target)
    if isinstance(node.target, torch._ops.OpOverload):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


class RuleInterpreter(fx.Interpreter):
    """An fx.Interpreter whose call nodes run the rules of one `RuleTable` (`RULES`, set by the subclass).

    A rule is called as `rule.fn(self, [target,] [module,] *args, **kwargs)`;
    `self._node` is the node being run. The fallback every pass gets by
    construction (Invariant 10, docs/design.md): an op with no rule, or whose
    rule cannot read the node (an operand it did not expect), is answered with
    the subclass's top element `unknown()` and listed in `unhandled` (op name ->
    node names): the pass loses precision there, never soundness, and never
    raises. Float constants (parameters and buffers read by get_attr) enter as
    the subclass's `constant()` abstract value, so rules only ever see abstract
    operands; an op over integer constants alone (index arithmetic) is the op itself.
    At the end of a run the list is stored on the graph, `gm.meta[UNHANDLED][PASS]`
    (op -> nodes), as ShapeProp stores shapes.
    """

    RULES: RuleTable
    PASS: str = "rules"  # the pass's name in `gm.meta[UNHANDLED]`

    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.unhandled: dict[str, set[str]] = {}

    def run(self, *args, **kwargs):
        try:
            return super().run(*args, **kwargs)
        finally:
            listed = {op: len(nodes) for op, nodes in sorted(self.unhandled.items())}
            self.module.meta.setdefault(UNHANDLED, {})[self.PASS] = listed

    def run_node(self, n):
        self._node = n
        if n.op.startswith("call_") and "value" in n.meta:
            return n.meta["value"]  # sizes, dtypes, python scalars: concrete (the trace recorded them)
        return super().run_node(n)

    @property
    def current_node(self) -> fx.Node:
        """The node being run."""
        return self._node

    @property
    def target(self) -> str:
        """The node being run's target: for a module rule, the module's qualified name."""
        return self._node.target

    def _apply_rule(self, rule, lead: tuple, args, kwargs):
        if not _has_abstract((args, kwargs)):
            if mutates_first_operand(self._node):  # never write into the model's own buffers
                return self.answer_unhandled()
            try:  # constants alone (index arithmetic on integer buffers): the op itself
                out = getattr(fx.Interpreter, self._node.op)(self, self._node.target, args, kwargs)
            except Exception:  # noqa: BLE001 - Invariant 10: answered conservatively, listed
                return self.answer_unhandled()
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                return Abstract(self.constant(out.detach(), None))
            return out
        if rule is None:
            return self.answer_unhandled()
        if rule.passes_target:
            lead = (self._node.target, *lead)
        try:
            out = rule.fn(self, *lead, *args, **kwargs)
        except Exception:  # noqa: BLE001 - Invariant 10: answered conservatively, listed
            return self.answer_unhandled()
        return Abstract(out) if _is_pair(out) else out

    def answer_unhandled(self):
        """`unknown()` for the node being run, which is listed in `unhandled` under its op's name."""
        self.unhandled.setdefault(op_name(self._node, self), set()).add(self._node.name)
        return Abstract(self.unknown())

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return Abstract(self.constant(value.detach(), target))
        return value  # an integer or bool buffer is an index or a mask: read at its value

    def call_module(self, target, args, kwargs):
        module = self.submodules.get(target)  # the Interpreter's own table: no walk down the dotted path
        module = self.fetch_attr(target) if module is None else module
        return self._apply_rule(self.RULES.for_module(module), (module,), args, kwargs)

    def call_function(self, target, args, kwargs):
        return self._apply_rule(self.RULES.for_node(self._node), (), args, kwargs)

    def call_method(self, target, args, kwargs):
        return self._apply_rule(self.RULES.for_node(self._node), (), args, kwargs)

    def placeholder(self, target, args, kwargs):
        real = super().placeholder(target, args, kwargs)
        return Abstract(self.input(real)) if isinstance(real, torch.Tensor) else real  # a flag stays a flag

    def input(self, real: torch.Tensor):
        """The abstract value of an input (the subclass's, from its real example)."""
        raise NotImplementedError

    def constant(self, value: torch.Tensor, target: str | None):
        """The abstract value of a float constant: parameter or buffer `target` (None: computed from
        integer constants) holding `value`; a prunable weight's under its keep-mask."""
        raise NotImplementedError

    def unknown(self):
        """The value of an op no rule knows (the subclass's top element)."""
        raise NotImplementedError


UNHANDLED = "collapsekit_unhandled"  # gm.meta key: {pass name: {op: nodes answered by the fallback}}


def _is_pair(value) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(t, torch.Tensor) for t in value)


def _has_abstract(tree) -> bool:
    if isinstance(tree, Abstract):
        return True
    if isinstance(tree, (list, tuple)):
        return any(_has_abstract(v) for v in tree)
    if isinstance(tree, dict):
        return any(_has_abstract(v) for v in tree.values())
    return False


def getitem_pair(interpreter, x, index):
    """The rule of `x[index]` in a pair-valued pass: indexing the value indexes both halves; anything else
    (a tuple of values, a size) is the pass's unknown."""
    picked = index_pair(x, index)
    return interpreter.unknown() if picked is None else picked


def cat_pairs(pairs, *args, **kwargs) -> tuple:
    """torch.cat of pair-valued operands (sign sets, interval ends): each half concatenated with its kind."""
    return tuple(torch.cat([pair[i] for pair in pairs], *args, **kwargs) for i in range(2))


def index_pair(x, index):
    """`x` indexed at `index` when `x` is a pair of same-shaped tensors (a sign set or an interval's two
    ends: indexing the value indexes both), else None (a tuple of values, a size, an integer index)."""
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], torch.Tensor) and x[0].ndim > 0 \
            and not isinstance(index, int):
        return tuple(t[index] for t in x)
    return None


def aten(*names: str) -> list:
    """Overloads of torch.ops.aten that exist in this torch (graphs from torch.export), e.g. "relu.default"."""
    found = []
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(torch.ops.aten, packet, None)
        if op is not None and hasattr(op, overload or "default"):
            found.append(getattr(op, overload or "default"))
    return found
