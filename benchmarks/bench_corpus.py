"""The corpus of third-party architectures: analysis time, conservative ops and precision per model.

Goal (issue 11): every model of tests/corpus.py analyses; the default report
(21 levels, exact collapse sparsity) takes under 30 s each; and the channels
the flow keeps alive although the structural oracle sees them dead (precision
lost where an op was interpreted conservatively) are counted over the
Invariant 4 levels (0.5, 0.9, 0.99 and the predicted boundary).

    python benchmarks/bench_corpus.py [NAME ...] [--no-precision]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

from _measure import table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import collapsekit as ck  # noqa: E402
from corpus import CORPUS, build  # noqa: E402
from invariants import check_levels  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="corpus models (default: all)")
    ap.add_argument("--no-precision", action="store_true", help="skip the oracle runs (time only)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [["model", "trace", "seconds (21 levels)", "collapse sparsity", "dead missed / oracle dead",
             "conservative ops"]]
    total_missed = total_dead = 0
    slowest = 0.0
    for name in args.names or list(CORPUS):
        model, inputs = build(name)
        start = time.perf_counter()
        report = ck.analyze(model, inputs)
        seconds = time.perf_counter() - start
        slowest = max(slowest, seconds)
        precision = "-"
        if not args.no_precision:
            stats = {"missed": 0, "dead": 0}
            check_levels(model, inputs, (0.5, 0.9, 0.99), boundary=True, stats=stats)
            total_missed, total_dead = total_missed + stats["missed"], total_dead + stats["dead"]
            precision = f"{stats['missed']} / {stats['dead']}"
        ops = ", ".join(f"{op} x{n}" for op, n in report.conservative_ops.items()) or "-"
        rows.append([name, report.trace_method, f"{seconds:.1f}", f"{report.collapse_sparsity:.6f}", precision, ops])
        print(f"{name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    print(table(rows))
    print(f"\n{len(rows) - 1} models analysed; slowest default report {slowest:.1f} s (goal < 30 s)")
    if total_dead:
        print(f"structurally dead channels missed: {total_missed} of {total_dead} "
              f"({100 * total_missed / total_dead:.2f} %; predicted-dead channels that vary: 0, asserted)")


if __name__ == "__main__":
    main()
