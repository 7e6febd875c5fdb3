"""Global MP in place: exact counts, optional Minimum Threshold (MT), masks as plain bool tensors.

Global MP (Gupta et al., "Is Complexity Required for Neural Network Pruning?
A Case Study on Global Magnitude Pruning") zeroes the `round(s * N)` smallest
magnitudes of all N prunable weights (Invariant 1; order and ties as in
`collapsekit.analysis.magnitudes`: |w| ascending, then layer order, then flat index, so
weights already zero go first).

MT (Invariant 2): every layer keeps its `min(MT, size)` largest weights, and the
rest of the budget is given by ONE global threshold over the unprotected
weights, so the total pruned is still exactly `round(s * N)`. The reference
code of Gupta et al. instead rescales per-layer sparsities after protecting MT
weights per layer; its total can miss the target sparsity. With the same MT our
kept set differs from theirs only where the two budgets differ.

Masks are `dict[str, torch.BoolTensor]` keyed by parameter name (a tied tensor
under its first name), True = kept. Applying them is an in-place masked write
under `no_grad` (STYLE.md 10: no torch.nn.utils.prune reparametrisation). It
writes +0.0, not the -0.0 that `w.mul_(mask)` leaves on negative weights, so a
pruned weight is bit-for-bit zero and sparse exports round-trip exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.analysis.magnitudes import MagnitudeIndex, resolve_mt, sparsity_to_count
from collapsekit.analysis.prunable import PrunableWeight, find_prunable, tensors


# -- results -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PrunedLayer:
    """One prunable weight after pruning: its size and how many weights it keeps."""

    name: str
    size: int
    kept: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.size if self.size else 0.0

    @property
    def emptied(self) -> bool:
        return self.kept == 0

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "kept": self.kept,
                "sparsity": self.sparsity, "emptied": self.emptied}


@dataclass(frozen=True)
class PruneResult:
    """The masks Global MP applied, with per-layer counts (DESIGN.md terms)."""

    masks: dict[str, torch.Tensor]  # parameter name -> bool keep-mask (True = kept)
    layers: tuple[PrunedLayer, ...]
    target_sparsity: float
    mt_count: int
    threshold: float  # |w| of the last weight pruned (0.0 when nothing was)

    @property
    def total(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def pruned(self) -> int:
        return sum(layer.size - layer.kept for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """The achieved global sparsity, `pruned / total` (= round(s * N) / N)."""
        return self.pruned / self.total

    @property
    def emptied_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.emptied]

    def to_dict(self) -> dict:
        return {"target_sparsity": self.target_sparsity, "sparsity": self.sparsity, "mt_count": self.mt_count,
                "total": self.total, "pruned": self.pruned, "threshold": self.threshold,
                "emptied_layers": self.emptied_layers, "layers": [layer.to_dict() for layer in self.layers]}


# -- pruning -----------------------------------------------------------------------------
def prune(model: nn.Module, sparsity: float, mt=None, include: list[str] | None = None,
          exclude: list[str] | None = None) -> PruneResult:
    """PruneResult of Global MP (+ MT) applied to `model` in place; exactly round(s * N) weights pruned.

    `mt` is a per-layer count (int) or a percent of all prunable weights (float or
    "0.05%"), as `magnitudes.resolve_mt`. Everything is validated before the model
    is touched: a bad sparsity, an MT too large for it or NaN weights raise
    CollapsekitError and leave the weights as they were. Extra memory: the
    magnitude index (one float32 copy of the prunable weights) plus the bool
    masks, built and applied one layer at a time.
    """
    weights = find_prunable(model, include, exclude)
    total = sum(w.numel for w in weights)
    k = sparsity_to_count(sparsity, total)
    mt_count = resolve_mt(mt, total)
    _check_budget(weights, k, mt_count, sparsity)
    live = tensors(model, weights)
    index = MagnitudeIndex(weights, live)  # raises on NaN; the model is still untouched
    alloc = index.allocate(k, mt_count)
    masks: dict[str, torch.Tensor] = {}
    layers = []
    for (i, keep), w, t in zip(index.layer_masks(alloc, live), weights, live):
        _masked_write(t, keep)
        masks[w.name] = keep
        layers.append(PrunedLayer(w.name, w.numel, w.numel - int(alloc.pruned[i])))
        _release_layer(index, i)
    del index
    return PruneResult(masks, tuple(layers), float(sparsity), mt_count, alloc.threshold)


def _release_layer(index: MagnitudeIndex, i: int) -> None:
    # A layer's sorted magnitudes are dead once its mask exists; dropping them as we
    # go keeps the peak near one float32 copy instead of copy + all masks
    # (WRN-28-8: ~1.1x instead of ~1.45x).
    index.release(i)


def _check_budget(weights: list[PrunableWeight], k: int, mt_count: int, sparsity) -> None:
    sizes = np.array([w.numel for w in weights], dtype=np.int64)
    prunable = int((sizes - np.minimum(sizes, mt_count)).sum())
    if k > prunable:
        most = prunable / sizes.sum()
        raise CollapsekitError(
            f"MT={mt_count} per layer leaves only {prunable} of {int(sizes.sum())} weights prunable "
            f"(sparsity <= {most:.6g}), fewer than the {k} that sparsity {sparsity} needs; "
            "lower the MT or the sparsity")


def _masked_write(tensor: torch.Tensor, keep: torch.Tensor) -> None:
    # where(out=) writes +0.0 in place with no temporary; mul_ would leave -0.0.
    with torch.no_grad():
        zero = torch.zeros((), dtype=tensor.dtype, device=tensor.device)
        torch.where(keep.to(tensor.device), tensor, zero, out=tensor.data)


def check_masks(model: nn.Module, masks: dict) -> None:
    """Returns None when every mask names a parameter of `model` with its shape; else CollapsekitError."""
    if not isinstance(masks, dict) or not masks:
        raise CollapsekitError("masks must be a non-empty dict of parameter name -> bool tensor")
    params = dict(model.named_parameters(remove_duplicate=False))
    problems = []
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            problems.append(f"{name}: not a bool tensor")
        elif name not in params:
            problems.append(f"{name}: no such parameter")
        elif tuple(mask.shape) != tuple(params[name].shape):
            problems.append(f"{name}: mask {list(mask.shape)} vs parameter {list(params[name].shape)}")
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CollapsekitError(f"masks do not fit {type(model).__name__}: {'; '.join(problems[:3])}{more}")


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """`model` with every masked weight zeroed in place (+0.0); checks the masks first.

    Fine-tuning calls this after each optimizer step (Invariant 3). Keep the masks
    on the weights' device to avoid a copy per call.
    """
    check_masks(model, masks)
    for name, keep in masks.items():
        _masked_write(model.get_parameter(name), keep)
    return model


# -- MT suggestion -------------------------------------------------------------------------
@dataclass(frozen=True)
class MTSuggestion:
    """The smallest per-layer MT count that keeps the net from collapsing structurally at `sparsity`."""

    sparsity: float
    mt: int  # 0 when no MT is needed, or none helps (see `reason`)
    percent: float  # `mt` as a percent of all prunable weights (the reference --min-threshold)
    search_range: tuple[int, ...]  # MT counts to try, log-spaced from mt to max(8*mt, reference 0.05 %)
    collapses_without_mt: bool
    max_mt: int  # the largest MT the sparsity leaves room for
    total: int
    evaluations: int  # structural flow runs spent
    reason: str

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "mt": self.mt, "percent": self.percent,
                "search_range": list(self.search_range), "collapses_without_mt": self.collapses_without_mt,
                "max_mt": self.max_mt, "total": self.total, "evaluations": self.evaluations,
                "reason": self.reason}


def suggest_mt(model: nn.Module, example_inputs, sparsity: float, include: list[str] | None = None,
               exclude: list[str] | None = None, require: str = "every_output") -> MTSuggestion:
    """MTSuggestion: the smallest MT count with which Global MP at `sparsity` keeps the net alive.

    `require="every_output"` (default) asks that a kept path reach every output
    element (every class logit can still move); `"any_output"` only that the
    network does not collapse, which can leave a net that predicts one class.

    Bisection over the count between 0 and the largest MT the sparsity allows,
    each step one forward structural flow (`flow.run_flow(backward=False)`) on the
    masks Global MP + MT would produce; the model is traced and indexed once and
    never changed. Collapse need not be monotone in MT, so the answer is a
    verified boundary: `mt` does not collapse and `mt - 1` does.
    """
    from collapsekit.analysis.flow import run_flow
    from collapsekit.analysis.trace import trace

    if require not in ("every_output", "any_output"):
        raise CollapsekitError(f"require must be 'every_output' or 'any_output', got {require!r}")
    weights = find_prunable(model, include, exclude)
    total = sum(w.numel for w in weights)
    k = sparsity_to_count(sparsity, total)
    live = tensors(model, weights)
    index = MagnitudeIndex(weights, live)
    traced = trace(model, example_inputs)
    runs = 0

    def collapses(mt_count: int) -> bool:
        nonlocal runs
        runs += 1
        alloc = index.allocate(k, mt_count)
        keep = [mask.cpu() for _, mask in index.layer_masks(alloc, live)]  # the flow runs on the CPU
        flow = run_flow(traced, weights, keep, backward=False)
        return flow.collapsed if require == "any_output" else flow.output_alive < 1.0

    max_mt = _largest_mt(index, k)
    base = dict(sparsity=float(sparsity), total=total, max_mt=max_mt)
    if not collapses(0):
        return MTSuggestion(mt=0, percent=0.0, search_range=(), collapses_without_mt=False, evaluations=runs,
                            reason="every output stays reachable at this sparsity without MT" if require == "every_output"
                            else "the network does not collapse at this sparsity without MT", **base)
    if max_mt == 0 or collapses(max_mt):
        return MTSuggestion(mt=0, percent=0.0, search_range=(), collapses_without_mt=True, evaluations=runs,
                            reason=f"no MT helps: even MT={max_mt}, the largest this sparsity leaves room "
                                   "for, cuts an output; lower the sparsity", **base)
    lo, hi = 0, max_mt  # collapses(lo) and not collapses(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if collapses(mid):
            lo = mid
        else:
            hi = mid
    # Candidates for the empirical (accuracy) search, each checked not to collapse: from
    # the floor up to 8x it, or to the reference code's default (0.05 % of the prunable
    # weights) when that is larger; a floor this thin often keeps paths too weak to train.
    top = min(max(8 * hi, reference_mt(total)), max_mt)
    grid = sorted({int(round(v)) for v in np.geomspace(hi, top, 5)}) if top > hi else [hi]
    search = tuple(m for m in grid if m == hi or not collapses(m))
    return MTSuggestion(mt=hi, percent=100.0 * hi / total, search_range=search, collapses_without_mt=True,
                        evaluations=runs, reason=f"MT={hi} keeps a path to every output; MT={lo} does not" if require == "every_output"
                        else f"MT={hi} keeps a path; MT={lo} collapses", **base)


def reference_mt(total: int) -> int:
    """The reference code's default Minimum Threshold, 0.05 % of the prunable weights, as a count."""
    return resolve_mt(0.05, total)


def _largest_mt(index: MagnitudeIndex, k: int) -> int:
    """The largest MT count with which `k` weights can still be pruned (max_count is non-increasing)."""
    lo, hi = 0, int(index.sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if index.max_count(mid) >= k:
            lo = mid
        else:
            hi = mid - 1
    return lo


# -- cost --------------------------------------------------------------------------------
def count_macs(traced, masks: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, int]]:
    """Per conv/linear module: {"weight": name, "dense": MACs, "kept": MACs counting only kept weights}.

    A conv's MACs are its (kept) weights times its output's spatial positions; a
    linear's are its (kept) weights times its output's positions other than the
    feature axis (1 for a [batch, features] input). Shapes come from the traced
    graph's ShapeProp metadata (batch of one).
    """
    gm = traced.gm
    out: dict[str, dict[str, int]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            continue
        shape = tuple(meta.shape)
        positions = int(np.prod(shape[2:])) if not isinstance(module, nn.Linear) else int(np.prod(shape[1:-1]))
        name = f"{node.target}.weight"
        size = module.weight.numel()
        kept = int(masks[name].sum()) if masks and name in masks else size
        entry = out.setdefault(node.target, {"weight": name, "dense": 0, "kept": 0})
        entry["dense"] += size * positions
        entry["kept"] += kept * positions
    return out


__all__ = ["prune", "PruneResult", "PrunedLayer", "apply_masks", "check_masks", "suggest_mt", "MTSuggestion",
           "count_macs"]
