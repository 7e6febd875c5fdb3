"""Benchmark: ck.prune vs torch.nn.utils.prune.global_unstructured, wall time and peak extra memory.

Each measurement runs in a fresh subprocess: build the model, reset the peak RSS
(/proc/self/clear_refs "5"), prune, then read VmHWM. Peak extra memory is
VmHWM minus the RSS just before pruning, reported as a multiple of the prunable
weights' bytes (tracemalloc cannot see torch's allocations).

    python benchmarks/bench_prune.py            # WRN-28-8 (23.1M prunable weights)
    python benchmarks/bench_prune.py --quick    # ResNet-20
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(method: str, model_name: str, sparsity: float, threads: int) -> dict:
    import gc

    import torch

    import collapsekit as ck
    from collapsekit.prunable import find_prunable

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ck.models.create(model_name, num_classes=10, in_channels=3, input_size=32)
    weights = find_prunable(model)
    prunable_bytes = sum(w.numel for w in weights) * 4
    gc.collect()
    reset = _reset_peak()
    before = _status("VmRSS")
    start = time.perf_counter()
    if method == "collapsekit":
        result = ck.prune(model, sparsity)
        pruned = result.pruned
    else:
        import torch.nn.utils.prune as torch_prune

        params = [(model.get_submodule(w.module), w.name.rpartition(".")[2]) for w in weights]
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
        pruned = sum(int((getattr(m, f"{p}_mask") == 0).sum()) for m, p in params)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    baseline = before if reset else max(before, peak)  # without a reset the peak may predate pruning
    return {"method": method, "seconds": seconds, "peak_extra_bytes": peak - baseline,
            "prunable_bytes": prunable_bytes, "pruned": pruned, "peak_reset": reset}


def measure(method: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--model", args.model, "--sparsity", str(args.sparsity),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="zoo model (default wrn_28_8; resnet20 with --quick)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per method; the fastest time is kept")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=["collapsekit", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model = args.model or ("resnet20" if args.quick else "wrn_28_8")
    if args.child:
        print(json.dumps(child(args.child, args.model, args.sparsity, args.threads)))
        return 0
    rows = {}
    for method in ("collapsekit", "torch"):
        runs = [measure(method, args) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["seconds"])
        best["peak_extra_bytes"] = max(r["peak_extra_bytes"] for r in runs)
        rows[method] = best
    ck_row, torch_row = rows["collapsekit"], rows["torch"]
    mb = 1 << 20
    print(f"model {args.model}, sparsity {args.sparsity}, {ck_row['prunable_bytes'] / 4 / 1e6:.1f}M prunable "
          f"weights ({ck_row['prunable_bytes'] / mb:.0f} MiB), {args.threads} thread(s)")
    for row in (ck_row, torch_row):
        print(f"  {row['method']:<12} {row['seconds']:7.2f} s   peak extra {row['peak_extra_bytes'] / mb:8.0f} MiB"
              f" = {row['peak_extra_bytes'] / row['prunable_bytes']:5.2f}x prunable bytes   pruned {row['pruned']}")
    print(f"  time ratio torch/collapsekit {torch_row['seconds'] / ck_row['seconds']:.2f}x, "
          f"memory ratio torch/collapsekit {torch_row['peak_extra_bytes'] / max(ck_row['peak_extra_bytes'], 1):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
