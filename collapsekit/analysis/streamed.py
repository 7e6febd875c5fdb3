"""The streamed analysis's view of a checkpoint: its prunable tensors read on demand, and a skeleton to trace.

`files.stream.Checkpoint` reads tensors from the file; this module pairs them
with the model's prunable weights (names, aliases, shapes) and builds the copy
of the model that is traced while its weights stay in the file (docs/design.md,
Invariant 9: a streamed report equals the in-memory one).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from collapsekit.analysis.prunable import PrunableWeight
from collapsekit.errors import CollapsekitError
from collapsekit.files.stream import Checkpoint


class StreamedTensors(Sequence):
    """The prunable tensors of `weights`, each read from the checkpoint when indexed (nothing cached)."""

    def __init__(self, checkpoint: Checkpoint, weights: list[PrunableWeight], timings=None):
        self.checkpoint, self.timings = checkpoint, timings  # timings: adds "checkpoint reads" seconds
        self.names = []
        missing, wrong = [], []
        for w in weights:
            found = checkpoint.first_of((w.name, *w.aliases))
            if found is None:
                missing.append(w.name)
            elif checkpoint.shapes[found] != tuple(w.shape):
                wrong.append(f"{found}: {list(checkpoint.shapes[found])} in the file vs {list(w.shape)} in the model")
            self.names.append(found)
        if missing or wrong:
            problems = [f"{n}: missing" for n in missing] + wrong
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise CollapsekitError(f"checkpoint {checkpoint.path} does not fit the model: "
                                   f"{'; '.join(problems[:3])}{more}")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self.timings is None:
            return self.checkpoint.read(self.names[i])
        with self.timings.stage("checkpoint reads"):
            return self.checkpoint.read(self.names[i])


def skeleton(model: nn.Module, checkpoint: Checkpoint, weights: list[PrunableWeight]) -> tuple[nn.Module, list[str]]:
    """(a copy of `model` to trace, names zero-filled): every prunable weight and embedding table a
    one-element zero tensor expanded to its shape (no memory), every other parameter or buffer on the meta device read from
    the checkpoint (in the model's dtype), and those the file lacks (non-persistent buffers such as
    rotary frequencies) zero-filled. The user's model is not touched; its real tensors are shared,
    never copied.
    """
    prunable = {n for w in weights for n in (w.name, *w.aliases)}
    memo = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in prunable or p.is_meta:
            memo[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), p.requires_grad)
        else:
            memo[id(p)] = p  # shared: deepcopy keeps the real tensor as it is
    for b in model.buffers():
        if not b.is_meta:
            memo[id(b)] = b
    copy_ = copy.deepcopy(model, memo)
    zero_filled = []
    # A lookup table's values never decide structure (its output is live wherever its ids are):
    # like the prunable weights, it is traced without data, which spares a vocabulary-sized read.
    tables = {f"{m}.weight" if m else "weight" for m, mod in copy_.named_modules(remove_duplicate=False)
              if isinstance(mod, (nn.Embedding, nn.EmbeddingBag))}
    for name, tensor in [*copy_.named_parameters(remove_duplicate=False), *copy_.named_buffers(remove_duplicate=False)]:
        if not tensor.is_meta:
            continue
        if name in prunable or name in tables:
            value = torch.zeros((), dtype=tensor.dtype).expand(tensor.shape)
        elif name in checkpoint:
            if checkpoint.shapes[name] != tuple(tensor.shape):
                raise CollapsekitError(f"checkpoint {checkpoint.path} does not fit the model: {name}: "
                                       f"{list(checkpoint.shapes[name])} in the file vs {list(tensor.shape)}")
            value = checkpoint.read(name).to(tensor.dtype)
        else:
            value = torch.zeros(tensor.shape, dtype=tensor.dtype)
            zero_filled.append(name)
        _assign(copy_, name, value, isinstance(tensor, nn.Parameter))
    return copy_, zero_filled


def _assign(root: nn.Module, name: str, value: torch.Tensor, parameter: bool) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_name)
    if parameter:
        owner._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[attr] = value


__all__ = ["StreamedTensors", "skeleton"]
