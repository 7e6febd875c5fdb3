"""Benchmark: ck.prune vs torch.nn.utils.prune.global_unstructured, wall time and peak extra memory.

Each side runs in a fresh process (benchmarks/jobs.py) on the same model and
seed, after a warm-up call on a tiny model; peak extra memory is the VmHWM
over the RSS just before the call, default allocator (see _measure.py),
reported as a multiple of the prunable weights' bytes.
Goal (issues: pruning engine, 13 scale): ck.prune's peak extra memory <= 1.5x
the prunable bytes on WRN-28-8 (global_unstructured: ~13x), masks included.

    python benchmarks/bench_prune.py            # WRN-28-8 (23.1M prunable weights)
    python benchmarks/bench_prune.py --quick    # ResNet-20
"""
from __future__ import annotations

import argparse

from _measure import in_subprocess, table, verdict


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="zoo model (default wrn_28_8; resnet20 with --quick)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=1, help="runs per side; the fastest time is kept")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pinned", action="store_true", help="also print ck.prune's memory under pinned glibc settings")
    args = parser.parse_args(argv)
    model = args.model or ("resnet20" if args.quick else "wrn_28_8")
    rows = {}
    for job in ("ck_prune", "torch_global"):
        runs = [in_subprocess(job, model=model, sparsity=args.sparsity) for _ in range(args.repeats)]
        rows[job] = {"seconds": min(r["seconds"] for r in runs),
                     "peak_extra_mib": max(r["peak_extra_mib"] for r in runs),
                     "prunable_mib": runs[0]["prunable_mib"]}
    ours, base = rows["ck_prune"], rows["torch_global"]
    mib = ours["prunable_mib"]
    print(f"{model} at sparsity {args.sparsity}: {mib:.0f} MiB of prunable weights")
    print(table([["", "seconds", "peak extra MiB", "x prunable bytes"]] + [
        [name, f"{r['seconds']:.2f}", f"{r['peak_extra_mib']:.0f}", f"{r['peak_extra_mib'] / mib:.2f}"]
        for name, r in (("ck.prune", ours), ("torch global_unstructured", base))]))
    print(f"time ratio global_unstructured / ck.prune: {base['seconds'] / ours['seconds']:.1f}x")
    print(f"memory ratio ck.prune / prunable bytes: {verdict(ours['peak_extra_mib'] / mib, 1.5)}")
    if args.pinned:
        again = in_subprocess("ck_prune", pinned=True, model=model, sparsity=args.sparsity)
        print(f"  (with the pinned glibc settings of _measure.ALLOCATOR_ENV: {again['peak_extra_mib'] / mib:.2f}x)")


if __name__ == "__main__":
    main()
