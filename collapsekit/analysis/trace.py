"""Trace a model into an fx graph with tensor shapes: symbolic_trace first, torch.export as fallback."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from collapsekit.errors import CollapsekitError


@dataclass(frozen=True)
class TracedModel:
    """The fx graph of a model plus a batch-1 example input, shapes stored on `node.meta`."""

    gm: fx.GraphModule
    example_inputs: tuple
    method: str  # "symbolic_trace" or "export"


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Evaluation mode for the duration, restoring every submodule's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.train(flag)


def as_tuple(example_inputs) -> tuple:
    """Example inputs as a tuple of tensors, cut to a batch of one."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise CollapsekitError("example_inputs must be a tensor or a tuple of tensors")
    return tuple(x[:1] if x.ndim > 0 else x for x in inputs)


def trace(model: nn.Module, example_inputs) -> TracedModel:
    """A TracedModel of `model`; raises CollapsekitError naming the failure when both tracers fail."""
    inputs = as_tuple(example_inputs)
    with eval_mode(model), torch.no_grad():
        try:
            gm, method = fx.symbolic_trace(model), "symbolic_trace"
        except Exception as fx_exc:
            _check_accepts(model, inputs)
            try:
                with _quiet_torch_logs():
                    gm, method = torch.export.export(model, inputs, strict=False).module(), "export"
            except Exception as export_exc:
                raise CollapsekitError(
                    f"cannot trace {type(model).__name__}: torch.fx failed ({_where(fx_exc)}) "
                    f"and torch.export failed ({_first_line(export_exc)})") from None
        try:
            _propagate_shapes(gm, inputs)
        except Exception:
            _check_accepts(model, inputs)  # names the input as the problem when it is
            raise
    return TracedModel(gm, inputs, method)


def _propagate_shapes(gm: fx.GraphModule, inputs: tuple) -> None:
    """ShapeProp on meta tensors (shapes without memory or compute), real tensors if an op refuses."""
    from torch.nn.utils.stateless import _reparametrize_module

    state = {k: torch.empty_like(v, device="meta") for k, v in [*gm.named_parameters(), *gm.named_buffers()]}
    # ShapeProp prints a traceback before re-raising; the caller turns failures into one line.
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            with _reparametrize_module(gm, state):
                ShapeProp(gm).propagate(*(x.to("meta") for x in inputs))
            return
        except Exception:
            pass
        ShapeProp(gm).propagate(*inputs)


@contextlib.contextmanager
def _quiet_torch_logs():
    # A failing export logs whole graphs at WARNING; our one-line error says enough.
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _check_accepts(model: nn.Module, inputs: tuple) -> None:
    try:
        model(*inputs)
    except Exception as exc:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise CollapsekitError(f"the model does not accept an input of shape {shapes}: "
                               f"{type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _where(exc: Exception) -> str:
    # Name the innermost frame of model code that fx tripped over.
    tb, frame = exc.__traceback__, None
    while tb is not None:
        code = tb.tb_frame.f_code
        owner = tb.tb_frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if isinstance(owner, nn.Module) and "/torch/" not in tb.tb_frame.f_code.co_filename:
            frame = tb.tb_frame
        tb = tb.tb_next
    loc = ""
    if frame is not None:
        owner = frame.f_locals.get(frame.f_code.co_varnames[0])
        loc = f" in {type(owner).__name__}.{frame.f_code.co_name} line {frame.f_lineno}"
    return f"{type(exc).__name__}{loc}: {_first_line(exc)}"
