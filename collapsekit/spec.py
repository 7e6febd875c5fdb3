"""`package.module:attribute` specs: how users bring their own models and data loaders."""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Callable

from collapsekit.errors import CollapsekitError


def load_callable(spec: str, what: str) -> Callable:
    """The callable named by `package.module:attribute` (the working directory is importable, as with `python -m`)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CollapsekitError(f"{what} spec {spec!r} must look like package.module:attribute")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the user's spec, not our bug
        raise CollapsekitError(f"cannot import module {module_name!r} from {what} spec {spec!r}: {exc}") from None
    target = getattr(module, attr, None)
    if target is None or not callable(target):
        raise CollapsekitError(f"module {module_name!r} has no callable {attr!r} ({what} spec {spec!r})")
    return target


def call_with_accepted(factory: Callable, offered: dict):
    """`factory(**offered)`, passing only the keywords its signature accepts."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory()
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return factory(**offered)
    return factory(**{k: v for k, v in offered.items() if k in params})


def keyword_defaults(factory: Callable, names) -> dict:
    """{name: default} of the keywords among `names` that `factory` accepts with a default value."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {n: params[n].default for n in names if n in params and params[n].default is not inspect.Parameter.empty}
