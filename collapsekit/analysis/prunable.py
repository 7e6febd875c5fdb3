"""Which weight tensors take part in the global magnitude ranking (docs/design.md: prunable weight).

A Conv/Linear weight under `torch.nn.utils.parametrize` (weight_norm, spectral
norm, a user's transform) is ranked through the stored tensor of its shape
(`<module>.parametrizations.weight.original`, weight_norm's direction
`original1`): that is what Global MP zeroes. So is a weight that a forward
pre-hook computes from stored tensors (the older `torch.nn.utils.weight_norm`,
whose direction `weight_v` is ranked and whose per-channel scale `weight_g` is
not; the older `spectral_norm`'s `weight_orig`). docs/design.md Invariant 8: the
layer is applied as a pruned layer (the alias `<module>.weight`) only when the
transform keeps a pruned zero at zero; otherwise its computed weight is dense
whatever the mask, and the flow treats the layer as unpruned.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError

# Modules whose `weight` is a lookup table or a per-channel scale, never ranked.
_NOT_PRUNABLE = (nn.Embedding, nn.EmbeddingBag, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable tensor: its parameter name, owning module and shape."""

    name: str
    module: str
    kind: str  # "conv", "linear" or "matrix" (a bare weight matrix such as in_proj_weight)
    shape: tuple[int, ...]
    aliases: tuple[str, ...] = field(default=())  # other names of the same (shared) tensor
    keeps_zeros: bool = True  # False: a transform in forward may turn a pruned zero non-zero (Invariant 8)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_dict(self) -> dict:
        return {"name": self.name, "module": self.module, "kind": self.kind,
                "shape": list(self.shape), "numel": self.numel}


def _kind(module: nn.Module, param_name: str, tensor: torch.Tensor) -> str | None:
    if isinstance(module, _NOT_PRUNABLE) or tensor.ndim < 2 or _parametrized(module, param_name):
        return None
    if _hook_computed(module):
        return None  # its stored tensors are ranked through _hooked_weights, or not at all
    if isinstance(module, _CONV) and param_name == "weight":
        return "conv"
    if isinstance(module, nn.Linear) and param_name == "weight":
        return "linear"
    # Bare matrices (MultiheadAttention.in_proj_weight, q_proj_weight, a custom W) are
    # weights by name; positional embeddings and tokens are not.
    return "matrix" if "weight" in param_name.lower() else None


def _parametrized(module: nn.Module, param_name: str) -> bool:
    parametrizations = getattr(module, "parametrizations", None)
    return parametrizations is not None and param_name in parametrizations


def _parametrized_weights(model: nn.Module):
    """(owner name, kind, stored tensor's name, stored tensor, keeps zeros) of parametrized Conv/Linear weights."""
    for name, module in model.named_modules():
        plist = getattr(getattr(module, "parametrizations", None), "weight", None)
        kind = _layer_kind(module)
        if plist is None or kind is None:
            continue
        found = _stored(module, plist.named_parameters(recurse=False))
        if found is None:
            continue
        stored_name, stored = found
        yield name, kind, f"{name}.parametrizations.weight.{stored_name}", stored, _keeps_zeros(plist, stored_name)


def _hook_computed(module: nn.Module) -> bool:
    """A Conv/Linear whose `weight` is no parameter of its own but set by a forward pre-hook from stored
    tensors (torch.nn.utils.weight_norm and spectral_norm before parametrize)."""
    return (_layer_kind(module) is not None and "weight" not in module._parameters
            and isinstance(getattr(module, "weight", None), torch.Tensor) and bool(module._forward_pre_hooks))


def _hooked_weights(model: nn.Module):
    """(owner name, kind, stored tensor's name, stored tensor, keeps zeros) of hook-computed Conv/Linear weights
    (weight_norm's direction `weight_v`, spectral norm's `weight_orig`)."""
    for name, module in model.named_modules():
        found = _stored(module, module.named_parameters(recurse=False)) if _hook_computed(module) else None
        if found is None:
            continue
        stored_name, stored = found
        yield name, _layer_kind(module), f"{name}.{stored_name}" if name else stored_name, stored, \
            _hook_keeps_zeros(module, stored_name)


def _layer_kind(module: nn.Module) -> str | None:
    return "conv" if isinstance(module, _CONV) else "linear" if isinstance(module, nn.Linear) else None


def _stored(module: nn.Module, named) -> tuple[str, torch.Tensor] | None:
    """(name, tensor) of the one stored tensor with the shape of the module's weight; None where no tensor or
    several have it (nothing to rank)."""
    shape = module.weight.shape  # a parametrized module computes it: once
    same = [(n, t) for n, t in named if t.shape == shape]
    return same[0] if len(same) == 1 else None


def _zeros_kept(stored: torch.Tensor, weight_of, trials: int = 3) -> bool:
    """True if `weight_of(probe)`, the weight computed with `probe` in place of the stored tensor, is zero
    wherever the probe is (random masks and values)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(trials):
            zero = torch.rand(stored.shape, generator=g) < 0.5
            probe = torch.where(zero, 0.0, torch.randn(stored.shape, generator=g).to(stored.dtype) + 3)
            out = weight_of(probe)
            if not isinstance(out, torch.Tensor) or out.shape != stored.shape or bool(out[zero].ne(0).any()):
                return False
    return True


def _hook_keeps_zeros(module: nn.Module, stored_name: str) -> bool:
    """Whether the module's pre-hooks keep every pruned zero of the stored tensor at zero in `weight`, run on a
    shallow copy with dicts of its own (a weight-normed module refuses deepcopy): the module and its tensors
    stay as they are. A hook that fails proves nothing: False."""
    import copy

    probe_module = copy.copy(module)
    probe_module.__dict__ = {**module.__dict__, "_parameters": dict(module._parameters),
                             "_buffers": dict(module._buffers), "training": False}

    def weight_of(probe):
        probe_module._parameters[stored_name] = nn.Parameter(probe, requires_grad=False)
        for hook in list(module._forward_pre_hooks.values()):
            hook(probe_module, ())
        return probe_module.__dict__.get("weight")

    try:
        return _zeros_kept(module._parameters[stored_name], weight_of)
    except Exception:  # noqa: BLE001 - a hook that needs a real input (or anything else): not proven
        return False


def _keeps_zeros(plist, stored_name: str) -> bool:
    """Whether the parametrization maps every pruned zero of the stored tensor to zero (on copies of its
    tensors: the module is untouched)."""
    names = [n for n, _ in plist.named_parameters(recurse=False)]

    def weight_of(probe):
        values = {n: probe if n == stored_name else getattr(plist, n).detach().clone() for n in names}
        originals = [values[n] for n in names]
        out = plist[0](originals[0]) if plist.is_tensor else plist[0](*originals)
        for p in list(plist)[1:]:
            out = p(out)
        return out

    return _zeros_kept(getattr(plist, stored_name), weight_of)


def find_prunable(model: nn.Module, include: list[str] | None = None,
                  exclude: list[str] | None = None) -> list[PrunableWeight]:
    """The prunable weights of `model` in parameter order; a tensor shared by modules counts once.

    `include`/`exclude` are fnmatch patterns on parameter names (e.g. ``"fc.*"``).
    """
    first_name: dict[int, str] = {}
    aliases: dict[int, list[str]] = {}
    found: dict[int, PrunableWeight] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, tensor in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            key = id(tensor)
            if key in first_name:
                if full != first_name[key]:
                    aliases[key].append(full)
                continue
            first_name[key], aliases[key] = full, []
            kind = _kind(module, param_name, tensor)
            if kind is None or not _selected(full, include, exclude):
                continue
            found[key] = PrunableWeight(full, module_name, kind, tuple(tensor.shape))
    for owner, kind, full, tensor, keeps in [*_parametrized_weights(model), *_hooked_weights(model)]:
        if id(tensor) in found or not _selected(full, include, exclude):
            continue
        found[id(tensor)] = PrunableWeight(full, owner, kind, tuple(tensor.shape), keeps_zeros=keeps)
        # A zero-keeping transform: the module applies this tensor's pattern under its own name.
        aliases.setdefault(id(tensor), []).extend([f"{owner}.weight"] if keeps else [])
    order = {id(t): i for i, t in enumerate(model.parameters())}
    weights = [replace(w, aliases=tuple(dict.fromkeys(aliases.get(k, ()))))
               for k, w in sorted(found.items(), key=lambda kw: order.get(kw[0], 0))]
    if not weights:
        raise CollapsekitError(f"{type(model).__name__} has no prunable weights "
                               "(no Conv*d/Linear weight or weight matrix matched)")
    return weights


def _selected(name: str, include, exclude) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def tensors(model: nn.Module, weights: list[PrunableWeight]) -> list[torch.Tensor]:
    """The live parameter tensors behind `weights`, in the same order."""
    return [model.get_parameter(w.name) for w in weights]
