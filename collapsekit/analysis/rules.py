"""Rule tables for the analysis interpreters: one entry per op, with its properties as flags.

The channel flow (flow_rules.py), the sign analysis (values.py), the interval
domain (intervals.py) and compaction's role table (pruning/compact.py) each keep
one `RuleTable`: rules filed by module type (looked up along the MRO), by called
function or torch.ops.aten overload, or by tensor method name. A rule's properties are flags given where it is registered
(STYLE.md 1), so an interpreter reads `rule.reduced_ok`, never `rule is ...`,
and a new op is one new entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx
import torch.nn as nn


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
    """

    fn: Callable
    reduced_ok: bool = False
    weighted: bool = False
    passes_target: bool = False
    rearranges: bool = False


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


class RuleInterpreter(fx.Interpreter):
    """An fx.Interpreter whose call nodes run the rules of one `RuleTable` (`RULES`, set by the subclass).

    A rule is called as `rule.fn(self, [target,] [module,] *args, **kwargs)`; a
    node without a rule gets the subclass's `unknown()` value. `self._node` is
    the node being run.
    """

    RULES: RuleTable

    def run_node(self, n):
        self._node = n
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
        if rule is None:
            return self.unknown()
        if rule.passes_target:
            lead = (self._node.target, *lead)
        return rule.fn(self, *lead, *args, **kwargs)

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        return self._apply_rule(self.RULES.for_module(module), (module,), args, kwargs)

    def call_function(self, target, args, kwargs):
        return self._apply_rule(self.RULES.for_node(self._node), (), args, kwargs)

    def call_method(self, target, args, kwargs):
        return self._apply_rule(self.RULES.for_node(self._node), (), args, kwargs)

    def unknown(self):
        """The value of an op no rule knows (the subclass's top element)."""
        raise NotImplementedError


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
