"""Trace a model into an fx graph with tensor shapes: symbolic_trace first, torch.export as fallback.

Example inputs are a tensor, a tuple of tensors, or a dict of keyword inputs
(Hugging Face models: `input_ids`, `decoder_input_ids`, `pixel_values`). The
traced graph takes one value per placeholder (`TracedModel.example_inputs`);
the model itself is called as `model(*call_args, **call_kwargs)`.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import linecache
import operator
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from collapsekit.errors import CollapsekitError, first_line


@dataclass(frozen=True)
class TracedModel:
    """The fx graph of a model plus a batch-1 example input, shapes stored on `node.meta`."""

    gm: fx.GraphModule
    example_inputs: tuple  # one value per placeholder of `gm`, in order
    method: str  # "symbolic_trace" or "export"
    call_args: tuple = ()  # the model's own call, batch of one: model(*call_args, **call_kwargs)
    call_kwargs: dict = field(default_factory=dict)

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the tensor inputs, in placeholder order."""
        return tuple(tuple(x.shape) for x in self.example_inputs if isinstance(x, torch.Tensor))


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


def split_inputs(example_inputs) -> tuple[tuple, dict]:
    """(positional, keyword) example inputs, tensors cut to a batch of one.

    A dict is keyword inputs: tensors, plus python constants (flags such as
    `use_cache=False`) that tracing specialises.
    """
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
        if not all(isinstance(k, str) for k in kwargs) or not any(isinstance(v, torch.Tensor)
                                                                  for v in kwargs.values()):
            raise CollapsekitError("keyword example_inputs must map argument names to tensors "
                                   "(e.g. {'input_ids': ids})")
    else:
        args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        kwargs = {}
        if not args or not all(isinstance(x, torch.Tensor) for x in args):
            raise CollapsekitError("example_inputs must be a tensor, a tuple of tensors or a dict of keyword "
                                   "tensors")
    cut = lambda x: x[:1] if isinstance(x, torch.Tensor) and x.ndim > 0 else x  # noqa: E731
    return tuple(cut(x) for x in args), {k: cut(v) for k, v in kwargs.items()}


def as_tuple(example_inputs) -> tuple:
    """Positional example inputs as a tuple of tensors, cut to a batch of one."""
    args, kwargs = split_inputs(example_inputs)
    if kwargs:
        raise CollapsekitError("keyword example_inputs are not accepted here; pass a tensor or a tuple")
    return args


def trace(model: nn.Module, example_inputs, beside=None) -> TracedModel:
    """A TracedModel of `model`; raises CollapsekitError naming the failure when both tracers fail.

    `beside(method)`, where given, is a context manager entered around the costly rest of the trace once
    the tracer is known ("symbolic_trace": fx's graph is built, its shapes are recorded inside; "export":
    torch.export runs inside, Python that holds the GIL for seconds): the analysis builds its magnitude
    index there, in a thread or a forked child according to the method.
    """
    args, kwargs = _without_cache(model, *split_inputs(example_inputs))
    with eval_mode(model), torch.no_grad():
        fx_error, gm, method = None, None, "symbolic_trace"
        try:
            gm = _symbolic_trace(model, kwargs)
        except Exception as exc:
            fx_error, method = exc, "export"
        with beside(method) if beside is not None else contextlib.nullcontext():
            if gm is None:
                try:
                    with _quiet_torch_logs(), _no_stack_traces(), _lazy_code():
                        gm = torch.export.export(model, args, kwargs or None, strict=False).module()
                except Exception as export_exc:
                    # Only now the input is suspect: a real forward tells "the model does not accept this
                    # input" from "neither tracer can follow the model" (before export, it cost every exported
                    # transformer one forward pass: ViT-base 0.3 s).
                    _check_accepts(model, args, kwargs)
                    raise CollapsekitError(
                        f"cannot trace {type(model).__name__}: torch.fx failed ({_where(fx_error)}) "
                        f"and torch.export failed ({_where(export_exc)})") from None
            inputs = _bind_placeholders(gm, args, kwargs)
            try:
                if not (method == "export" and _shapes_from_export(gm)):
                    _propagate_shapes(gm, inputs)
            except Exception:
                _check_accepts(model, args, kwargs)  # names the input as the problem when it is
                raise
    return TracedModel(gm, inputs, method, args, kwargs)


def _without_cache(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """(args, kwargs) to trace with. A Hugging Face decoder returns its key/value cache by default: an
    object neither tracer can return, and not the model's prediction. Unless the caller chose, a model
    whose forward takes `use_cache` is traced with use_cache=False, its positional inputs passed by name."""
    try:
        signature = inspect.signature(model.forward)
        named = signature.bind_partial(*args).arguments
    except (TypeError, ValueError):
        return args, kwargs
    params = signature.parameters
    if "use_cache" not in params or "use_cache" in kwargs or any(
            params[n].kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY) for n in named):
        return args, kwargs
    return (), {**named, **kwargs, "use_cache": False}


def _symbolic_trace(model: nn.Module, kwargs: dict) -> fx.GraphModule:
    """fx.symbolic_trace; with keyword inputs every other argument is fixed at its default."""
    concrete = None
    if kwargs:
        params = inspect.signature(model.forward).parameters
        concrete = {n: p.default for n, p in params.items()
                    if n not in kwargs and p.default is not inspect.Parameter.empty}
        concrete.update({k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)})
    # fx files tensors created in forward (torch.tensor([...])) as attributes of the root module;
    # the GraphModule keeps its own copies, so the user's model gets back exactly what it had.
    before = set(vars(model))
    try:
        return fx.symbolic_trace(model, concrete_args=concrete)
    finally:
        for name in set(vars(model)) - before:
            delattr(model, name)


def _bind_placeholders(gm: fx.GraphModule, args: tuple, kwargs: dict) -> tuple:
    """The value of every placeholder of `gm`, which takes positional inputs in order and keyword
    ones by name. Placeholders the tracer fixed (defaults, constant keywords) are removed with
    the guards that check them, so the graph's inputs are the user's tensors; one that the
    computation still reads keeps its default."""
    positional = list(args)
    values = []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in [n for n in gm.graph.nodes if n.op == "placeholder"]:
        if kwargs and isinstance(kwargs.get(node.target), torch.Tensor):
            values.append(kwargs[node.target])
        elif not kwargs and positional:
            values.append(positional.pop(0))
        elif not _erase_unless_read(gm.graph, node, order):
            values.append(node.args[0] if node.args else None)
    gm.recompile()
    return tuple(values)


def _erase_unless_read(graph: fx.Graph, placeholder: fx.Node, order: dict) -> bool:
    """Erases `placeholder` and everything computed from it unless the output reads it."""
    reached, frontier = set(), [placeholder]
    while frontier:
        node = frontier.pop()
        if node.op == "output":
            return False
        if node not in reached:
            reached.add(node)
            frontier.extend(node.users)
    for node in sorted(reached, key=order.get, reverse=True):
        graph.erase_node(node)
    return True


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph and stores, as ShapeProp does, every tensor result's
    TensorMetadata on `node.meta["tensor_meta"]` and its type on `node.meta["type"]`; every plain
    non-tensor result (sizes, comparisons, python scalars) goes on `node.meta["value"]`, so later
    passes evaluate such nodes concretely.

    Not ShapeProp on meta tensors: ShapeProp imports torch's symbolic-shape machinery (sympy,
    mpmath, dynamo: ~800 modules, >1 s in a fresh process) on its first node, and meta tensors
    reach the same imports through the Python meta kernels of batch_norm, layer_norm, gelu and
    conv (see _propagate_shapes for when it runs on meta tensors anyway). The Interpreter frees each
    value after its last use."""

    def run_node(self, n):
        result = super().run_node(n)
        found = []

        def tensor_meta(value):
            if isinstance(value, torch.Tensor):
                found.append(True)
                return tensor_metadata(value)
            return value

        meta = fx.node.map_aggregate(result, tensor_meta)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        if _plain(result):
            n.meta["value"] = result
        return result


def _shapes_from_export(gm: fx.GraphModule) -> bool:
    """Records what _ShapeRecorder would from the values torch.export already propagated (`node.meta["val"]`,
    fake tensors of static shape): no second run of the graph. False, recording nothing, where some value is
    not static (a data-dependent size) or missing: the graph is then run."""
    found = {}
    for n in gm.graph.nodes:
        if n.op == "output":  # what the graph returns: its operands' values
            val = fx.node.map_arg(n.args[0], lambda a: a.meta.get("val"))
        elif "val" not in n.meta and n.users:
            return False
        else:
            val = n.meta.get("val")  # none: a check run for its effect (export's guards)
        tensors, symbolic = [], []

        def tensor_meta(value):
            if isinstance(value, torch.Tensor):
                tensors.append(value)
                return tensor_metadata(value)
            if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                symbolic.append(value)
            return value

        meta = fx.node.map_aggregate(val, tensor_meta)
        if symbolic or any(isinstance(s, torch.SymInt) for t in tensors for s in (*t.shape, *t.stride())):
            return False
        found[n] = (val, meta, bool(tensors))
    for n, (val, meta, has_tensor) in found.items():
        if has_tensor:
            n.meta["tensor_meta"] = meta
        if n.op == "get_attr":  # a parameter stays a Parameter, as a run would see it
            n.meta["type"] = type(operator.attrgetter(n.target)(gm))
        else:
            n.meta["type"] = torch.Tensor if isinstance(val, torch.Tensor) else type(val)
        if _plain(val):
            n.meta["value"] = val
    return True


_MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


def tensor_metadata(t: torch.Tensor) -> TensorMetadata:
    """ShapeProp's TensorMetadata of a real dense tensor, read from the tensor itself: torch's own
    helper checks contiguity through torch._check, whose first call imports sympy."""
    if t.is_quantized or t.layout != torch.strided:
        return _extract_tensor_metadata(t)
    memory_format = next((f for f in _MEMORY_FORMATS if t.is_contiguous(memory_format=f)), None)
    return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride(), memory_format, False, {})


_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, slice)


def _plain(value) -> bool:
    if isinstance(value, (tuple, list)):  # torch.Size too
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.setitem}
# Ops whose result shares its operand's storage: writing into the result writes into the operand.
_VIEW_METHODS = {"view", "view_as", "select", "narrow", "transpose", "permute", "expand", "expand_as", "unsqueeze",
                 "squeeze", "t", "diagonal", "unflatten", "__getitem__"}
_VIEW_ATEN = {"view", "_unsafe_view", "select", "slice", "transpose", "permute", "expand", "unsqueeze", "squeeze",
              "t", "alias", "as_strided", "diagonal", "narrow", "unfold", "unflatten"}


def mutates_first_operand(node: fx.Node) -> bool:
    """In-place ops (relu_, add_, +=, slice assignment, aten's copy_): later readers of the operand read
    the result. Graphs record them as ordinary nodes, so every pass that follows data re-routes those readers."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    if node.op != "call_function":
        return False
    if isinstance(node.target, torch._ops.OpOverload):
        return node.target._schema.name.endswith("_")
    return node.target in _INPLACE_FUNCTIONS


def _is_view(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    if node.op != "call_function":
        return False
    if isinstance(node.target, torch._ops.OpOverload):
        return node.target._schema.name.partition("::")[2] in _VIEW_ATEN
    return node.target is operator.getitem and isinstance(node.args[0], fx.Node) and \
        "tensor_meta" in node.args[0].meta and not isinstance(node.args[0].meta["tensor_meta"], (tuple, list))


def aliases_of(node: fx.Node) -> list[tuple[fx.Node, bool]]:
    """(node, whole) for every tensor an in-place op writes into: its operand (whole), that operand's own
    operand while it too was written in place (whole), and the base of a view it writes through (part)."""
    found, whole = [], True
    if not mutates_first_operand(node):
        return found
    while node.args and isinstance(node.args[0], fx.Node) and (mutates_first_operand(node) or _is_view(node)):
        whole = whole and mutates_first_operand(node)
        node = node.args[0]
        found.append((node, whole))
    return found


def _propagate_shapes(gm: fx.GraphModule, inputs: tuple) -> None:
    """Records shapes (see _ShapeRecorder) on meta tensors where torch's symbolic-shape machinery is
    already loaded (by transformers, or an export): they cost no compute, and a streamed skeleton's
    expanded weights make a real forward slow (a 1 B decoder: seconds). Otherwise, or if an op refuses
    meta tensors, with one real forward, which costs less than those imports. Either way the graph runs
    on copies of its buffers: a forward that updates one in place (a counter, a cache) leaves the
    user's model as it was."""
    from torch.nn.utils.stateless import _reparametrize_module

    if _symbolic_machinery_loaded():
        state = {k: torch.empty_like(v, device="meta") for k, v in [*gm.named_parameters(), *gm.named_buffers()]}
        try:
            with _reparametrize_module(gm, state):
                _ShapeRecorder(gm).run(*(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs))
            return
        except Exception:  # noqa: BLE001 - an op without a meta kernel, or data-dependent: real tensors below
            pass
    buffers = {k: v.clone() for k, v in gm.named_buffers()}
    with _reparametrize_module(gm, buffers):
        _ShapeRecorder(gm).run(*inputs)


def _symbolic_machinery_loaded() -> bool:
    """Whether the modules meta kernels import (sympy via symbolic_shapes, torch._dynamo) are loaded."""
    return all(name in sys.modules for name in ("sympy", "torch._dynamo", "torch.fx.experimental.symbolic_shapes"))


@contextlib.contextmanager
def _quiet_torch_logs():
    # A failing export logs (and prints) whole graphs; our one-line error says enough.
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _no_stack_traces():
    """Export without recording each node's Python stack trace: nothing here reads them, and extracting
    one per op is about a fifth of exporting a transformer."""
    config = torch.fx.config
    previous = config.do_not_emit_stack_traces
    config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        config.do_not_emit_stack_traces = previous


def _lazy_code():
    """Export's intermediate graph modules generate their Python code only if something runs or reads it
    (torch.fx's lazy graph modules): export's passes recompile their graphs a dozen times, and nothing
    here runs those (ViT-base's trace: 0.93-1.06 s -> 0.73-0.81 s). The module it returns is recompiled as
    usual. A torch without the switch exports as before."""
    try:
        from torch.fx._lazy_graph_module import _use_lazy_graph_module
    except ImportError:
        return contextlib.nullcontext()
    return _use_lazy_graph_module(True)


def _check_accepts(model: nn.Module, args: tuple, kwargs: dict) -> None:
    try:
        model(*args, **kwargs)
    except Exception as exc:
        shapes = ", ".join([str(tuple(x.shape)) for x in args] + [
            f"{k}={tuple(v.shape)}" for k, v in kwargs.items() if isinstance(v, torch.Tensor)])
        raise CollapsekitError(f"the model does not accept an input of shape {shapes}: "
                               f"{type(exc).__name__}: {first_line(exc, 300)}") from None


def _where(exc: Exception) -> str:
    # Name the innermost frame of model code the tracer tripped over, and its source line (the op).
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
        code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        loc = f" in {type(owner).__name__}.{frame.f_code.co_name} line {frame.f_lineno}" + (
            f" `{code[:120]}`" if code else "")
    return f"{type(exc).__name__}{loc}: {first_line(exc, 300)}"
