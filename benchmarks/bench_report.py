"""Time and peak memory of the default collapse report vs one torch.nn.utils.prune.global_unstructured call.

Goal (issue 13, scale): the whole default report (21 levels, critical
sparsities, flow at each level, exact collapse sparsity) costs at most 0.25x
one global_unstructured call, with peak extra memory (VmHWM delta, default
allocator) at most 1.5x the prunable weights' float32 bytes, on WRN-28-8 and on
a LLaMA-style 374 M decoder built from a `transformers` config. Each side runs
in a fresh process on the same model and seed; the report's time is split per
stage (Analysis.timings).

    python benchmarks/bench_report.py                       # wrn_28_8 and llama_374m
    python benchmarks/bench_report.py --models wrn_28_8 --pinned
    python benchmarks/bench_report.py --models gpt2_124m bert_110m vit_86m resnet56   # beyond the goal's two
"""
import argparse

from _measure import in_subprocess, table, verdict


def bench(model: str, input_size: int, pinned: bool) -> None:
    ours = in_subprocess("report", model=model, input_size=input_size)
    base = in_subprocess("torch_global", model=model, input_size=input_size, sparsity=0.9)
    mib = ours["prunable_mib"]
    rows = [["", "seconds", "peak extra MiB", "x prunable bytes"],
            [f"ck report ({ours['levels']} levels)", f"{ours['seconds']:.2f}", f"{ours['peak_extra_mib']:.0f}",
             f"{ours['peak_extra_mib'] / mib:.2f}"],
            ["torch global_unstructured", f"{base['seconds']:.2f}", f"{base['peak_extra_mib']:.0f}",
             f"{base['peak_extra_mib'] / mib:.2f}"]]
    print(f"\n{model}: {mib:.0f} MiB of prunable float32 weights; trace {ours['trace_method']}, "
          f"{'channel' if ours['channel_level'] else 'element'} level; "
          f"collapse sparsity {ours['collapse_sparsity']:.6f}")
    print(table(rows))
    print("report stages:")
    print(table([[name, f"{t['seconds']:.2f} s", f"{t['calls']} calls"] for name, t in ours["timings"].items()]))
    print(f"time ratio report / global_unstructured: {verdict(ours['seconds'] / base['seconds'], 0.25)}")
    print(f"memory ratio report / prunable bytes: {verdict(ours['peak_extra_mib'] / mib, 1.5)}")
    if pinned:
        again = in_subprocess("report", pinned=True, model=model, input_size=input_size)
        print(f"  (with the pinned glibc settings of _measure.ALLOCATOR_ENV: {again['peak_extra_mib'] / mib:.2f}x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["wrn_28_8", "llama_374m"])
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--pinned", action="store_true", help="also print the memory ratio under pinned glibc settings")
    args = ap.parse_args()
    for model in args.models:
        bench(model, args.input_size, args.pinned)


if __name__ == "__main__":
    main()
