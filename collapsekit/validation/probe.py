"""Forward-pass probes that check static predictions against a running network (Invariant 4).

Two kinds of check, matching docs/design.md's two kinds of death:
- exact (structural): on a *positive copy* (kept weights positive, biases zero,
  batch norms identity, float64) fed positive inputs nothing cancels and no
  activation cuts a path, so an output element changes with the input iff a
  kept path reaches it;
- sound (value-level): with the real masked weights, whatever is predicted dead
  must be constant over random inputs at several scales.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from collapsekit.analysis.flow import output_tensors
from collapsekit.analysis.prunable import PrunableWeight
from collapsekit.pruning.prune import apply_masks


def masked_copy(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """An eval-mode deep copy of `model` with `masks` (name -> bool keep-mask) applied."""
    return apply_masks(copy.deepcopy(model).eval(), masks)  # +0.0 at pruned positions, as ck.prune writes


def positive_copy(model: nn.Module, weights: list[PrunableWeight], masks: dict[str, torch.Tensor]) -> nn.Module:
    """A float64 copy where kept weights are 1/fan-in, every other parameter a neutral constant."""
    clone = copy.deepcopy(model).double().eval()
    prunable = {w.name for w in weights}
    with torch.no_grad():
        for name, p in clone.named_parameters():
            if name in prunable:
                keep = masks[name].to(torch.float64)
                fan_in = max(1, p[0].numel()) if p.ndim > 1 else 1
                p.copy_(keep / fan_in)
            elif name.endswith("weight") and p.ndim == 1:
                p.fill_(1.0)  # norm scales
            else:
                p.zero_()  # biases, and scalars such as gates' offsets
        for m in clone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return clone


def capture(model: nn.Module, modules: dict[str, str], inputs: tuple) -> tuple[object, dict[str, list[torch.Tensor]]]:
    """Runs `model(*inputs)` and returns (output, {weight name: outputs of its module, per call})."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = []
    for weight_name, module_name in modules.items():
        mod = model.get_submodule(module_name)
        handles.append(mod.register_forward_hook(
            lambda m, i, o, key=weight_name: seen[key].append(o.detach() if isinstance(o, torch.Tensor) else o)))
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def varying(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-7) -> torch.Tensor:
    """Elementwise: do two runs' values differ beyond float noise."""
    return (a - b).abs() > atol + rtol * torch.maximum(a.abs(), b.abs())


def flat_outputs(out) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, tuple, dict, dataclass or Hugging Face ModelOutput)."""
    return output_tensors(out)


def random_inputs(example_inputs: tuple, batch: int, scales=(0.1, 1.0, 10.0), seed: int = 0) -> list[tuple]:
    """Batches of random inputs shaped like `example_inputs`, one per scale."""
    g = torch.Generator().manual_seed(seed)
    return [tuple(_random_like(x, batch, s, g) for x in example_inputs) for s in scales]


def _random_like(x: torch.Tensor, batch: int, scale: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian values times `scale`; for integer inputs (token ids) ids drawn within the example's own range."""
    if x.dtype.is_floating_point or x.dtype.is_complex:
        return torch.randn((batch, *x.shape[1:]), generator=g, dtype=x.dtype) * scale
    return torch.randint(0, int(x.max()) + 1, (batch, *x.shape[1:]), generator=g, dtype=x.dtype)


def output_is_constant(model: nn.Module, example_inputs: tuple, batch: int = 8, seed: int = 0) -> bool:
    """True if the model's output is the same for every random input (several scales)."""
    model = model.eval()
    with torch.no_grad():
        rows = torch.cat([torch.cat([o.flatten(1) for o in flat_outputs(model(*x))], 1)
                          for x in random_inputs(example_inputs, batch, seed=seed)])
    return not bool(varying(rows, rows[:1].expand_as(rows)).any())
