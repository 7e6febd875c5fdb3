"""Benchmark jobs, each run in a fresh process by _measure.in_subprocess; prints one JSON line."""
from __future__ import annotations

import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _measure import measure  # noqa: E402

import collapsekit as ck  # noqa: E402
import collapsekit.analysis.analysis  # noqa: E402,F401  (imports stay outside the measured region)
from collapsekit.analysis.prunable import find_prunable  # noqa: E402


def _model(name: str, input_size: int):
    torch.manual_seed(0)
    model = ck.models.create(name, num_classes=10, in_channels=3, input_size=input_size).eval()
    with torch.no_grad():  # warm-up: one forward pass, as any model that was used has had
        model(torch.randn(1, 3, input_size, input_size))
    weights = find_prunable(model)
    return model, weights, sum(w.numel for w in weights) * 4


def _warm_up(fn) -> None:
    """One call on a tiny model first: library start-up (lazy imports, op registrations) is not the call's cost."""
    torch.manual_seed(1)
    fn(ck.models.create("lenet5", num_classes=10, in_channels=3, input_size=8))


def report(model: str, input_size: int = 32, sparsities=None) -> dict:
    _warm_up(lambda m: ck.analyze(m, torch.randn(1, 3, 8, 8), sparsities=[0.5, 0.99]))
    net, _, prunable_bytes = _model(model, input_size)
    x = torch.randn(1, 3, input_size, input_size)
    holder = {}
    stats = measure(lambda: holder.setdefault("r", ck.analyze(net, x, sparsities=sparsities)))
    r = holder["r"]
    return {**stats, "prunable_mib": prunable_bytes / 2**20, "levels": len(r.levels),
            "collapse_sparsity": r.collapse_sparsity}


def torch_global(model: str, input_size: int = 32, sparsity: float = 0.9) -> dict:
    import torch.nn.utils.prune as tprune

    def params_of(net, weights):
        return [(net.get_submodule(w.module), w.name.rsplit(".", 1)[1]) for w in weights]

    _warm_up(lambda m: tprune.global_unstructured(params_of(m, find_prunable(m)), pruning_method=tprune.L1Unstructured,
                                                  amount=sparsity))
    net, weights, prunable_bytes = _model(model, input_size)
    params = params_of(net, weights)
    stats = measure(lambda: tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured,
                                                       amount=sparsity))
    return {**stats, "prunable_mib": prunable_bytes / 2**20}


def ck_prune(model: str, input_size: int = 32, sparsity: float = 0.9) -> dict:
    _warm_up(lambda m: ck.prune(m, sparsity=sparsity))
    net, _, prunable_bytes = _model(model, input_size)
    holder = {}
    stats = measure(lambda: holder.setdefault("r", ck.prune(net, sparsity=sparsity)))
    return {**stats, "prunable_mib": prunable_bytes / 2**20, "pruned": holder["r"].pruned}


JOBS = {"report": report, "torch_global": torch_global, "ck_prune": ck_prune}

if __name__ == "__main__":
    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(JOBS[name](**kwargs)))
