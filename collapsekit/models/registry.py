"""The zoo's registry: factories by name and the input layout each takes."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_LAYOUT: dict[str, str] = {}


def register(name: str, layout: str = "image"):
    """Decorator that adds a factory `f(num_classes, in_channels, input_size, **kw)` to the zoo.

    `layout` says what the input looks like: "image" is [B, C, S, S] and "sequence"
    is [B, S, C] (S = input_size steps of C = in_channels features).
    """

    def wrap(factory):
        _REGISTRY[name] = factory
        _LAYOUT[name] = layout
        return factory

    return wrap


__all__ = ["register"]
