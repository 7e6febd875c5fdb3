"""Time and peak memory of the default collapse report vs one torch.nn.utils.prune.global_unstructured call.

Goal (issue: static analyzer): the whole default report (21 levels, critical
sparsities, channel flow at each level, exact collapse sparsity) on WRN-28-8
costs at most half the time of one global_unstructured call, with peak extra
memory at most 1.5x the prunable weights' bytes. Each side runs in a fresh
process on the same model and seed.

    python benchmarks/bench_report.py [--model wrn_28_8] [--input-size 32]
"""
import argparse

from _measure import in_subprocess, table


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="wrn_28_8")
    ap.add_argument("--input-size", type=int, default=32)
    args = ap.parse_args()
    ours = in_subprocess("report", model=args.model, input_size=args.input_size)
    base = in_subprocess("torch_global", model=args.model, input_size=args.input_size, sparsity=0.9)
    mib = ours["prunable_mib"]
    rows = [["", "seconds", "peak extra MiB", "x prunable bytes"],
            [f"ck.analyze ({ours['levels']} levels)", f"{ours['seconds']:.2f}", f"{ours['peak_extra_mib']:.0f}",
             f"{ours['peak_extra_mib'] / mib:.2f}"],
            ["torch global_unstructured", f"{base['seconds']:.2f}", f"{base['peak_extra_mib']:.0f}",
             f"{base['peak_extra_mib'] / mib:.2f}"]]
    print(f"{args.model} at {args.input_size}px: {mib:.0f} MiB of prunable weights; "
          f"collapse sparsity {ours['collapse_sparsity']:.6f}")
    print(table(rows))
    print(f"time ratio report / global_unstructured: {ours['seconds'] / base['seconds']:.2f} (goal <= 0.5)")
    print(f"memory ratio report / prunable bytes: {ours['peak_extra_mib'] / mib:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
