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


def read_number(value, what: str, forms: str) -> tuple[int | float, bool]:
    """(number, is_percent) of `value`: a number as given, or text such as "96", "0.05", "1e-3" or "95%".

    The one reader of numbers a user may type as a percent (`--sparsity 95%`, `--mt 0.05%`, or the
    same strings in Python); `forms` completes the error: "{what} {value!r} is neither {forms}".
    """
    if isinstance(value, str):
        body = value.strip()
        percent = body.endswith("%")
        body = body[:-1].strip() if percent else body
        try:
            return (float(body) if percent else _int_or_float(body)), percent
        except ValueError:
            raise CollapsekitError(f"{what} {value!r} is neither {forms}") from None
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        raise CollapsekitError(f"{what} must be {forms.replace(' nor ', ' or ')}, got {type(value).__name__}")
    return value, False


def _int_or_float(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


SPARSITY_FORMS = "a fraction (0.95) nor a percent (95%)"


def fraction(value, what: str = "sparsity") -> float:
    """`value` as a fraction: a number as it is (0.95), a percent divided by 100 ("95%" -> 0.95).

    Range checks belong to the caller (a sparsity lies in [0, 1)).
    """
    number, percent = read_number(value, what, SPARSITY_FORMS)
    return float(number) / 100.0 if percent else float(number)
