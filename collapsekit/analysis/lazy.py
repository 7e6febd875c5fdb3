"""Lazy modules (nn.LazyLinear, nn.LazyConv2d, ...): their weights get shapes from one forward of the example input.

Until its first forward a lazy module holds an `UninitializedParameter`, which has no
shape to trace, rank or prune. The analysis runs that first forward on a deep copy
(the user's model stays as it was: docs/design.md, Invariant 7); pruning, which
changes the model anyway, runs it on the model itself. Either way under a forked
random state, so the caller's generator is left where it was and the copy draws
the weights the model itself will draw on its own first forward from that state.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.parameter import is_lazy

from collapsekit.analysis.trace import eval_mode, split_inputs
from collapsekit.errors import CollapsekitError, first_line


def lazy_modules(model: nn.Module) -> list[str]:
    """Names of the modules of `model` holding a parameter or buffer not initialised yet."""
    return [name or type(model).__name__ for name, m in model.named_modules()
            if any(is_lazy(t) for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))]


def initialized_copy(model: nn.Module, example_inputs) -> nn.Module:
    """`model` itself when nothing in it is lazy, else a deep copy with its lazy parameters initialised."""
    if not lazy_modules(model):
        return model
    return initialize_lazy(copy.deepcopy(model), example_inputs)


def initialize_lazy(model: nn.Module, example_inputs) -> nn.Module:
    """`model`, its lazy parameters initialised in place by one forward of `example_inputs` (batch of one,
    evaluation mode, no gradient); CollapsekitError when that forward fails or leaves one uninitialised."""
    if not lazy_modules(model):
        return model
    args, kwargs = split_inputs(example_inputs)
    with torch.random.fork_rng(devices=[]), eval_mode(model), torch.no_grad():
        try:
            model(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's forward: any failure is bad input
            raise CollapsekitError(f"{type(model).__name__} has lazy modules, and a forward of the example input "
                                   f"to initialise them failed: {type(exc).__name__}: {first_line(exc, 300)}") from None
    left = lazy_modules(model)
    if left:
        raise CollapsekitError(f"lazy modules {', '.join(left)} are still uninitialised after a forward of the "
                               "example input (the forward never reaches them)")
    return model


def require_initialized(model: nn.Module) -> None:
    """CollapsekitError naming the lazy modules of `model` whose weights do not exist yet, if any."""
    left = lazy_modules(model)
    if left:
        raise CollapsekitError(f"lazy modules {', '.join(left[:3])}{' ...' if len(left) > 3 else ''} have no "
                               "weights yet: run one forward of the model first, or pass example_inputs=")


__all__ = ["lazy_modules", "initialized_copy", "initialize_lazy", "require_initialized"]
