"""Invariant 4 harness shared by the analyzer tests: static flow vs forward passes.

Inputs may be positional tensors or keyword inputs (a dict, token ids included);
outputs may be tensors, tuples, dicts, dataclasses or Hugging Face ModelOutputs.
"""
import contextlib
import copy

import torch
import torch.nn as nn

from collapsekit.validation import probe
from collapsekit.analysis.flow import channel_dim, run_flow
from collapsekit.analysis.magnitudes import sparsity_to_count
from collapsekit.analysis.analysis import Analysis


def scramble(model, seed=0):
    """Give each prunable layer its own magnitude scale so that different layers empty first."""
    g = torch.Generator().manual_seed(seed)
    from collapsekit.analysis.prunable import find_prunable

    with torch.no_grad():
        for w in find_prunable(model):
            p = model.get_parameter(w.name)
            p.mul_(10 ** (torch.rand((), generator=g) * 2 - 1))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return model


# -- calling a model on inputs shaped like the example -------------------------------------------
def vocab_size(model: nn.Module) -> int:
    """Token ids must index every embedding table: the config's vocab, else the smallest table."""
    config = getattr(model, "config", None)
    if getattr(config, "vocab_size", None):
        return int(config.vocab_size)
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    return min(sizes) if sizes else 2


def _like(x, g, batch, vocab, positive, scale):
    if not isinstance(x, torch.Tensor):
        return x
    shape = (batch, *x.shape[1:]) if x.ndim else ()
    if not x.is_floating_point():
        return torch.randint(0, vocab, shape, generator=g, dtype=x.dtype)
    if positive:
        return torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
    out = torch.randn(shape, generator=g, dtype=x.dtype) * scale
    return out.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and _channels_last(x) else out


def _channels_last(x):
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def random_calls(traced, vocab, batch=1, positive=False, scales=(1.0,), seed=1):
    """(args, kwargs) per scale shaped like the traced model's own call."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in scales:
        args = tuple(_like(x, g, batch, vocab, positive, s) for x in traced.call_args)
        kwargs = {k: _like(v, g, batch, vocab, positive, s) for k, v in traced.call_kwargs.items()}
        out.append((args, kwargs))
    return out


def _leaky(x, *args, **kwargs):
    return torch.nn.functional.leaky_relu(x, 0.1)


@contextlib.contextmanager
def unsaturated():
    """For the oracle's forward: tanh and sigmoid as asinh, ReLU as a leaky ReLU. A saturated tanh, or a
    ReLU after a layer norm (whose output has both signs), would hide a live path by value; model code
    calls them as functions too, reached only by patching torch itself."""
    stand_ins = [(torch, "tanh", torch.asinh), (torch, "sigmoid", torch.asinh), (torch, "relu", _leaky),
                 (torch.nn.functional, "tanh", torch.asinh), (torch.nn.functional, "sigmoid", torch.asinh),
                 (torch.nn.functional, "relu", _leaky), (torch.Tensor, "tanh", torch.Tensor.asinh),
                 (torch.Tensor, "sigmoid", torch.Tensor.asinh), (torch.Tensor, "relu", _leaky)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in stand_ins]
    try:
        for owner, name, fn in stand_ins:
            setattr(owner, name, fn)
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def capture(model, modules, call):
    """(output tensors, {weight name: outputs of its module per call}) for model(*args, **kwargs)."""
    seen = {name: [] for name in modules}
    handles = [model.get_submodule(mod).register_forward_hook(
        lambda m, i, o, key=name: seen[key].append(o.detach().clone()) if isinstance(o, torch.Tensor) else None)
        for name, mod in modules.items()]
    try:
        with torch.no_grad():
            out = model(*call[0], **call[1])
    finally:
        for h in handles:
            h.remove()
    return probe.flat_outputs(out), seen


def oracle_copy(model: nn.Module, masks: dict[str, torch.Tensor], seed: int = 0) -> nn.Module:
    """The structural oracle of Invariant 4: a float64 eval copy where nothing cancels or saturates.

    Kept weights get random positive magnitudes over their kept fan-in (random,
    not uniform, so that a normalisation followed by a sum cannot cancel exactly;
    over the kept count, so that a sparse path's signal is not lost under constants);
    norm scales 1; every other parameter (biases, embeddings, position tables,
    cls tokens) random positive constants, so that a constant times a live value
    stays live, as the flow says; batch norms identity.
    """
    g = torch.Generator().manual_seed(seed)
    clone = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, p in clone.named_parameters():
            rand = torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5
            if name in masks:
                keep = masks[name].to(torch.float64)
                kept = keep.flatten(1).sum(1).clamp(min=1).view(-1, *[1] * (p.ndim - 1))
                p.copy_(keep * rand / kept)  # per output: a mean of its kept inputs, O(1) at any sparsity
            elif name.endswith("weight") and p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_(rand * CONSTANT_SCALE)
        for m in clone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    for name, m in list(clone.named_modules()):
        # Saturating activations (ReLU6 clips at 6) would hide a live path: non-saturating stand-ins.
        stand_in = nn.ReLU() if isinstance(m, (nn.ReLU6, nn.Hardtanh)) else nn.Sigmoid() \
            if isinstance(m, nn.Hardsigmoid) else None
        if stand_in is not None and name:
            parent, _, attr = name.rpartition(".")
            setattr(clone.get_submodule(parent), attr, stand_in)
    return clone


# The oracle's constants (biases, embeddings, tables) are small next to its inputs: a sparse path's
# variation shrinks with every layer it shares with constants, and must stay above float noise.
CONSTANT_SCALE = 1e-3
# Float64 noise of equal computations is ~1e-16; a sparse live path through a deep net can vary an
# output by 1e-10 of its constant part, so the oracle's threshold sits between the two.
ORACLE_RTOL = 1e-12


def _varying_any(xs, ys, rtol):
    return any(bool(probe.varying(x, y, rtol=rtol, atol=0).any()) for x, y in zip(xs, ys) if x.is_floating_point())


def check_levels(model, example, sparsities, mt=None, channel_level=False, boundary=False, counts=(),
                 stats=None):
    """Asserts exactness (oracle copy) and soundness (real weights) at every level; returns verdicts.

    Levels are `sparsities`, the explicit pruned `counts`, and with `boundary` one
    weight below the predicted collapse point and the point itself. At channel
    level the flow may keep more alive than the oracle shows, never less: its
    deaths must be a subset of the observed ones. With a `stats` dict the same
    holds for channels (ops interpreted conservatively lose precision, never
    soundness) while `collapsed` must still equal the oracle; stats["dead"] and
    stats["missed"] count the oracle's dead channels and those the flow missed.
    """
    an = Analysis(model, example, mt=mt)
    ks = [sparsity_to_count(s, an.total) for s in sparsities] + list(counts)
    if boundary:
        cs = an.collapse_sparsity()
        if cs < 1.0:
            k = round(cs * an.total)
            ks += [k - 1, k] if k > 0 else [k]
    vocab = vocab_size(model)
    layer_modules = {w.name: w.module for w in an.weights if w.kind in ("conv", "linear")}
    verdicts = []
    for k in ks:
        keep, _, _ = an.keep_masks(k)
        masks = {w.name: m for w, m in zip(an.weights, keep)}
        flow = run_flow(an.traced, an.weights, an.level(k), channel_level=channel_level)

        # Exact: the oracle's output varies with a positive input iff a kept path remains.
        pos = oracle_copy(model, masks)
        call_a, call_b = random_calls(an.traced, vocab, positive=True, scales=(1.0, 1.0), seed=1)
        with unsaturated():
            out_a, seen_a = capture(pos, layer_modules, call_a)
            out_b, seen_b = capture(pos, layer_modules, call_b)
        alive = _varying_any(out_a, out_b, rtol=ORACLE_RTOL)
        if channel_level:
            assert not flow.collapsed or not alive, f"k={k}: channel level predicts a false collapse"
        else:
            assert flow.collapsed == (not alive), f"k={k}: flow collapsed={flow.collapsed}, oracle alive={alive}"
        for w in an.weights:
            if w.name not in layer_modules or not seen_a[w.name]:
                continue
            observed_alive = None
            for x, y in zip(seen_a[w.name], seen_b[w.name]):
                dim = channel_dim(w, x)
                others = tuple(d for d in range(x.ndim) if d != dim)
                v = probe.varying(x, y, rtol=ORACLE_RTOL, atol=0).any(dim=others)
                observed_alive = v if observed_alive is None else observed_alive | v
            observed_dead = torch.nonzero(~observed_alive).flatten().tolist()
            predicted = flow.dead_channels.get(w.name, [])
            if stats is not None:
                stats["dead"] += len(observed_dead)
                stats["missed"] += len(set(observed_dead) - set(predicted))
            if channel_level or stats is not None:
                assert set(predicted) <= set(observed_dead), (k, w.name)
            else:
                assert predicted == observed_dead, (k, w.name)

        # Sound: with the real masked weights, predicted-dead channels and a predicted
        # collapsed output are constant over random inputs at several scales.
        real = probe.masked_copy(model, masks)
        runs = [capture(real, layer_modules, call)
                for call in random_calls(an.traced, vocab, batch=6, scales=(0.1, 1.0, 10.0), seed=0)]
        for name, channels in flow.dead_channels.items():
            if not runs[0][1].get(name):
                continue
            dim = channel_dim(next(w for w in an.weights if w.name == name), runs[0][1][name][0])
            per_run = [seen[name][0].index_select(dim, torch.tensor(channels)) for _, seen in runs]
            for vals in per_run:  # across runs; across the batch where the first axis is the batch
                assert not probe.varying(vals, per_run[0], rtol=1e-5, atol=1e-6).any(), (k, name)
                if vals.shape[0] == 6:
                    assert not probe.varying(vals, vals[:1].expand_as(vals), rtol=1e-5, atol=1e-6).any(), (k, name)
        if flow.collapsed:
            rows = torch.cat([torch.cat([o.flatten(1).double() for o in out], 1) for out, _ in runs])
            assert not probe.varying(rows, rows[:1].expand_as(rows)).any(), f"k={k}: predicted collapse, output varies"
        verdicts.append(flow)
    return verdicts


def snapshot(model):
    """Everything Invariant 7 protects: per submodule its attribute names and training flag,
    and every parameter and buffer bit for bit (with its dtype, device and requires_grad)."""
    return {
        "modules": {name: (sorted(vars(m)), m.training) for name, m in model.named_modules(remove_duplicate=False)},
        "parameters": {name: (p.detach().clone(), p.requires_grad)
                       for name, p in model.named_parameters(remove_duplicate=False)},
        "buffers": {name: b.detach().clone() for name, b in model.named_buffers(remove_duplicate=False)},
    }


def _same_bits(a, b):
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)))
    return bool(torch.equal(a, b))


def assert_unchanged(model, snap):
    """Asserts `model` is as `snapshot(model)` saw it (Invariant 7); names what changed."""
    now = snapshot(model)
    assert now["modules"].keys() == snap["modules"].keys(), "submodules added or removed"
    for name, (attrs, training) in snap["modules"].items():
        new_attrs, new_training = now["modules"][name]
        added, removed = set(new_attrs) - set(attrs), set(attrs) - set(new_attrs)
        assert not added and not removed, \
            f"module {name!r}: attributes added {sorted(added)}, removed {sorted(removed)}"
        assert new_training == training, f"module {name!r}: training flag changed to {new_training}"
    for kind in ("parameters", "buffers"):
        assert now[kind].keys() == snap[kind].keys(), f"{kind} added or removed"
    for name, (value, requires_grad) in snap["parameters"].items():
        new_value, new_requires_grad = now["parameters"][name]
        assert _same_bits(new_value, value), f"parameter {name!r} changed"
        assert new_requires_grad == requires_grad, f"parameter {name!r}: requires_grad changed"
    for name, value in snap["buffers"].items():
        assert _same_bits(now["buffers"][name], value), f"buffer {name!r} changed"
