"""The model zoo: plain-torch factories by name, plus any importable `package.module:factory`."""
from __future__ import annotations

import inspect
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.models.registry import _LAYOUT, _REGISTRY, register
from collapsekit.spec import call_with_accepted, load_callable

def input_shape(spec: str, in_channels: int = 3, input_size: int = 32, batch: int = 1) -> tuple[int, ...]:
    """The input shape a zoo model (or, as an image model, any other spec) takes."""
    _load_zoo()
    if _LAYOUT.get(spec, "image") == "sequence":
        return (batch, input_size, in_channels)
    if _LAYOUT.get(spec) == "tokens":  # token ids: [B, input_size steps]
        return (batch, input_size)
    return (batch, in_channels, input_size, input_size)


def names() -> list[str]:
    """Sorted names of the zoo's models."""
    _load_zoo()
    return sorted(_REGISTRY)


def create(name: str, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kwargs) -> nn.Module:
    """A fresh zoo model (random init) for inputs of `in_channels` x `input_size` x `input_size`."""
    _load_zoo()
    if name not in _REGISTRY:
        raise CollapsekitError(f"unknown model {name!r}; the zoo has: {', '.join(names())} "
                               "(or pass package.module:factory)")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)


def resolve(spec: str, num_classes: int | None = None, in_channels: int | None = None,
            input_size: int | None = None, offered: dict | None = None, **kwargs) -> nn.Module:
    """A model from a zoo name or from `package.module:factory`.

    A factory is called with the keywords it accepts among those given; one left
    as None is not passed, so the factory's own default stands (a Hugging Face
    factory keeps its num_classes). A zoo model takes 10 classes, 3 channels and
    32 x 32 inputs where they are None. `offered` keywords (a text bundle's
    `vocab_size` and `context_length`) go only to a factory, zoo or user's, whose
    signature accepts them.
    """
    given = {k: v for k, v in dict(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                                   **kwargs).items() if v is not None}
    if ":" not in spec:
        _load_zoo()
        extra = {}
        if offered and spec in _REGISTRY:
            extra = {k: v for k, v in offered.items() if k in _accepted(_REGISTRY[spec])}
        return create(spec, **{"num_classes": 10, "in_channels": 3, "input_size": 32, **given, **extra})
    model = call_with_accepted(load_callable(spec, "model"), {**(offered or {}), **given})
    if not isinstance(model, nn.Module):
        raise CollapsekitError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _accepted(factory) -> set[str]:
    """Keyword names a zoo factory names in its signature (a **kwargs catch-all is passed on to layers, so no)."""
    return set(inspect.signature(factory).parameters)


def _load_zoo() -> None:
    # Importing the modules runs their @register decorators. On first use, not at import: a zoo module may
    # need a heavy library (transformers) that `import collapsekit` should not pay for.
    from collapsekit.models import zoo  # noqa: F401


__all__ = ["register", "names", "create", "resolve", "input_shape"]
