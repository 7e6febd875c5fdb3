"""Which weight tensors take part in the global magnitude ranking (DESIGN.md: prunable weight)."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

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
    if isinstance(module, _NOT_PRUNABLE) or tensor.ndim < 2:
        return None
    if isinstance(module, _CONV) and param_name == "weight":
        return "conv"
    if isinstance(module, nn.Linear) and param_name == "weight":
        return "linear"
    # Bare matrices (MultiheadAttention.in_proj_weight, q_proj_weight, a custom W) are
    # weights by name; positional embeddings and tokens are not.
    return "matrix" if "weight" in param_name.lower() else None


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
    weights = [PrunableWeight(w.name, w.module, w.kind, w.shape, tuple(dict.fromkeys(aliases[k])))
               for k, w in found.items()]
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
