"""Benchmark: checkpoint size at 90 % sparsity, collapsekit sparse file vs dense vs torch.nn.utils.prune.

Three files of the same pruned model: the dense state_dict (safetensors), the
collapsekit sparse file (kept values + bitmask/index, one safetensors file) and
the state_dict torch.nn.utils.prune leaves (weight_orig + weight_mask, torch.save).

    python benchmarks/bench_export.py            # WRN-28-8
    python benchmarks/bench_export.py --quick    # ResNet-20
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="zoo model (default wrn_28_8; resnet20 with --quick)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    name = args.model or ("resnet20" if args.quick else "wrn_28_8")

    import torch
    from safetensors.torch import save_model

    import collapsekit as ck
    from collapsekit.pruning.export import load_sparse, save_sparse
    from collapsekit.pruning.masks import to_torch_prune

    torch.manual_seed(0)
    model = ck.models.create(name, num_classes=10, in_channels=3, input_size=32)
    result = ck.prune(model, args.sparsity)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dense = tmp / "dense.safetensors"
        save_model(model, str(dense))
        start = time.perf_counter()
        sparse = save_sparse(model, result.masks, tmp / "sparse.safetensors")
        t_save = time.perf_counter() - start
        start = time.perf_counter()
        state = load_sparse(sparse)
        t_load = time.perf_counter() - start
        identical = all(torch.equal(state[k].view(torch.uint8) if state[k].is_floating_point() else state[k],
                                    v.contiguous().view(torch.uint8) if v.is_floating_point() else v)
                        for k, v in model.state_dict().items())
        to_torch_prune(model, result.masks)  # torch's own form of the same masks
        torch_file = tmp / "torch_prune.pt"
        torch.save(model.state_dict(), torch_file)
        sizes = {"dense safetensors": dense, "collapsekit sparse": sparse, "torch.nn.utils.prune": torch_file}
        sizes = {k: os.path.getsize(v) for k, v in sizes.items()}
    base = sizes["dense safetensors"]
    print(f"model {name}, sparsity {result.sparsity:.4f} ({result.total / 1e6:.1f}M prunable weights)")
    for label, size in sizes.items():
        print(f"  {label:<22} {size / (1 << 20):9.2f} MiB  {size / base:7.1%} of dense")
    print(f"  sparse save {t_save:.2f} s, load {t_load:.2f} s, round trip bit-identical: {identical}")
    print(f"  collapsekit is {sizes['collapsekit sparse'] / base:.1%} of dense and "
          f"{sizes['torch.nn.utils.prune'] / sizes['collapsekit sparse']:.1f}x smaller than torch's pruned state_dict")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
