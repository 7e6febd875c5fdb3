"""Benchmark jobs, each run in a fresh process by _measure.in_subprocess; prints one JSON line."""
from __future__ import annotations

import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _measure import measure  # noqa: E402

import collapsekit as ck  # noqa: E402
from collapsekit.prunable import find_prunable, tensors  # noqa: E402


def _model(name: str, input_size: int):
    torch.manual_seed(0)
    model = ck.models.create(name, num_classes=10, in_channels=3, input_size=input_size)
    weights = find_prunable(model)
    return model, weights, sum(w.numel for w in weights) * 4


def report(model: str, input_size: int = 32, sparsities=None) -> dict:
    net, _, prunable_bytes = _model(model, input_size)
    x = torch.randn(1, 3, input_size, input_size)
    holder = {}
    stats = measure(lambda: holder.setdefault("r", ck.analyze(net, x, sparsities=sparsities)))
    r = holder["r"]
    return {**stats, "prunable_mib": prunable_bytes / 2**20, "levels": len(r.levels),
            "collapse_sparsity": r.collapse_sparsity}


def torch_global(model: str, input_size: int = 32, sparsity: float = 0.9) -> dict:
    import torch.nn.utils.prune as tprune

    net, weights, prunable_bytes = _model(model, input_size)
    params = [(net.get_submodule(w.module), w.name.rsplit(".", 1)[1]) for w in weights]
    stats = measure(lambda: tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured,
                                                       amount=sparsity))
    return {**stats, "prunable_mib": prunable_bytes / 2**20}


def ck_prune(model: str, input_size: int = 32, sparsity: float = 0.9) -> dict:
    net, _, prunable_bytes = _model(model, input_size)
    stats = measure(lambda: ck.prune(net, sparsity=sparsity))
    return {**stats, "prunable_mib": prunable_bytes / 2**20}


JOBS = {"report": report, "torch_global": torch_global, "ck_prune": ck_prune}

if __name__ == "__main__":
    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(JOBS[name](**kwargs)))
