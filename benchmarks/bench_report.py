"""Time and peak memory of the default collapse report vs one torch.nn.utils.prune.global_unstructured call.

Measured as users meet it, as issue 23's bars are: each side in a fresh
process, cold (the report is the process's first analysis and pays collapsekit's
import and lazy first-call costs; global_unstructured is likewise its process's
first call), torch's default thread count. The report's time is split per stage
(Analysis.timings). `--loaded` repeats every measurement beside two busy
processes (a Python spin loop each) and prints the loaded/alone ratio; `--threads
N` adds, beside the honest figure, one with N intra-op threads on both sides.
Every ratio compares runs of the same repetition; `--repeat` gives the spread.
The CPU ratio beside the wall-clock one divides the report's user + system CPU seconds
(its forked workers' and index child's included; plus its import's seconds) by
global_unstructured's: it counts the work that the report's second process and threads
hide from wall time, so a change that only moves work onto the other CPU shows there.
The last column is the largest of the report's forked flow workers (collapsekit/analysis/forked.py, 0 where
it forked none): its resident growth over its RSS at the fork plus its private dirty pages when it left, an
upper bound of the memory it added (_measure.forked_children_measured).

Goals (issue 13 and 23): the whole default report costs at most 0.25x one
global_unstructured call with peak extra memory (VmHWM delta, default allocator)
at most 1.5x the prunable weights' float32 bytes, on WRN-28-8, a LLaMA-style 374 M
decoder and GPT-2/BERT/ViT at base size; the README's ResNet-20 report beside two
busy processes takes at most 2.3x its time alone.

    python benchmarks/bench_report.py                       # wrn_28_8 and llama_374m
    python benchmarks/bench_report.py --models resnet20 --loaded --threads 1
    python benchmarks/bench_report.py --models gpt2_124m bert_110m vit_86m --repeat 1
    python benchmarks/bench_report.py --models --cli runs/resnet20/model.safetensors --loaded   # the README's CLI call
    python benchmarks/bench_report.py --models wrn_28_8 --pinned
"""
import argparse
import os
import sys

from _measure import busy, command_seconds, import_seconds, in_subprocess, spread, table, verdict

IMPORTS = "collapsekit, collapsekit.analysis.analysis"


def _conditions(loaded: bool):
    import contextlib

    yield "alone", contextlib.nullcontext()
    if loaded:
        yield "beside 2 busy", busy(2)


def _run(model: str, input_size: int, threads):
    ours = in_subprocess("report", threads=threads, model=model, input_size=input_size, cold=True)
    base = in_subprocess("torch_global", threads=threads, model=model, input_size=input_size, sparsity=0.9,
                         cold=True)
    return ours, base


def bench(model: str, input_size: int, repeat: int, loaded: bool, threads: int | None, pinned: bool) -> None:
    variants = [("default threads", None)] + ([(f"{threads} thread(s)", threads)] if threads else [])
    runs = {}  # (condition, variant) -> list of (ours, base, import seconds)
    for _ in range(repeat):  # repetitions outermost: every condition sees the same machine state in turn
        for condition, ctx in _conditions(loaded):
            with ctx:
                for label, n in variants:
                    ours, base = _run(model, input_size, n)
                    runs.setdefault((condition, label), []).append((ours, base, import_seconds(IMPORTS)))
    ours0 = runs[("alone", "default threads")][0][0]
    mib = ours0["prunable_mib"]
    print(f"\n{model}: {mib:.0f} MiB of prunable float32 weights; trace {ours0['trace_method']}, "
          f"{'channel' if ours0['channel_level'] else 'element'} level; "
          f"collapse sparsity {ours0['collapse_sparsity']:.6f}; {repeat} run(s) each: median [min-max]")
    rows = [["", "report s", "+ import s", "global_unstructured s", "ratio (cold)", "CPU ratio",
             "report peak x prunable", "forked child <= x prunable"]]
    for (condition, label), rs in runs.items():
        rows.append([f"{condition}, {label}", spread([o["seconds"] for o, _, _ in rs]),
                     spread([i for _, _, i in rs]), spread([b["seconds"] for _, b, _ in rs]),
                     spread([(o["seconds"] + i) / b["seconds"] for o, b, i in rs]),
                     spread([(o["cpu_seconds"] + i) / b["cpu_seconds"] for o, b, i in rs]),
                     spread([o["peak_extra_mib"] / mib for o, _, _ in rs]),
                     spread([max(o["forked_children_mib"], default=0.0) / mib for o, _, _ in rs])])
    print(table(rows))
    print("report stages (first run alone):")
    print(table([[name, f"{t['seconds']:.2f} s", f"{t['calls']} calls"] for name, t in ours0["timings"].items()]))
    alone = runs[("alone", "default threads")]
    ratio = sorted((o["seconds"] + i) / b["seconds"] for o, b, i in alone)[len(alone) // 2]
    print(f"time ratio report (cold, with its imports) / global_unstructured: {verdict(ratio, 0.25)}")
    peak = sorted(o["peak_extra_mib"] / mib for o, _, _ in alone)[len(alone) // 2]
    print(f"memory ratio report / prunable bytes: {verdict(peak, 1.5)}")
    if loaded:
        for label, _ in variants:
            pairs = zip(runs[("beside 2 busy", label)], runs[("alone", label)])
            print(f"loaded / alone, {label}: report "
                  f"{spread([lo['seconds'] / al['seconds'] for (lo, _, _), (al, _, _) in pairs])}")
    if pinned:
        again = in_subprocess("report", pinned=True, model=model, input_size=input_size, cold=True)
        print(f"  (with the pinned glibc settings of _measure.ALLOCATOR_ENV: {again['peak_extra_mib'] / mib:.2f}x)")


def bench_cli(checkpoint: str, repeat: int, loaded: bool, threads: int | None) -> None:
    """The whole `collapsekit report --checkpoint` command, interpreter start and imports included."""
    argv = [sys.executable, "-m", "collapsekit", "report", "--checkpoint", checkpoint]
    variants = [("default threads", None)] + ([(f"{threads} thread(s)", threads)] if threads else [])
    runs = {}
    for _ in range(repeat):
        for condition, ctx in _conditions(loaded):
            with ctx:
                for label, n in variants:
                    env = dict(os.environ, **({"OMP_NUM_THREADS": str(n)} if n else {}))
                    if not n:
                        env.pop("OMP_NUM_THREADS", None)
                    runs.setdefault((condition, label), []).append(command_seconds(argv, env))
    print(f"\ncollapsekit report --checkpoint {checkpoint} (whole command, {repeat} run(s): median [min-max])")
    print(table([["", "seconds"]] + [[f"{c}, {label}", spread(v)] for (c, label), v in runs.items()]))
    if loaded:
        for label, _ in variants:
            ratios = [lo / al for lo, al in zip(runs[("beside 2 busy", label)], runs[("alone", label)])]
            print(f"loaded / alone, {label}: {spread(ratios)} (goal <= 2.3: "
                  f"{'met' if sorted(ratios)[len(ratios) // 2] <= 2.3 else 'MISSED'})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["wrn_28_8", "llama_374m"])
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="repetitions of every measurement (default 3)")
    ap.add_argument("--loaded", action="store_true", help="also measure beside two busy processes")
    ap.add_argument("--threads", type=int, help="also measure with this many intra-op threads on both sides")
    ap.add_argument("--cli", metavar="CHECKPOINT", help="also time `collapsekit report --checkpoint CHECKPOINT`")
    ap.add_argument("--pinned", action="store_true", help="also print the memory ratio under pinned glibc settings")
    args = ap.parse_args()
    for model in args.models:
        bench(model, args.input_size, args.repeat, args.loaded, args.threads, args.pinned)
    if args.cli:
        bench_cli(args.cli, args.repeat, args.loaded, args.threads)


if __name__ == "__main__":
    main()
