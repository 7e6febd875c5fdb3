"""Benchmark: CPU latency of the compacted model vs the masked dense one at high sparsity.

Prunes a zoo model with Global MP + MT (by default the top of ck.suggest_mt's
search range, 8x the smallest MT that keeps the net from collapsing), re-estimates its batch-norm statistics
(so the pruned net is a live one), compacts it and times both forward passes
(median of several runs, one thread, no_grad, eval mode). Also checks that the
outputs agree (Invariant 5) and that they still vary with the input.

    python benchmarks/bench_compact.py            # MobileNet-V1 on 32x32 at 95 %
    python benchmarks/bench_compact.py --model wrn_16_2 --sparsity 0.99 --mt 5
    python benchmarks/bench_compact.py --quick    # MobileNet-V1 on 16x16 at 95 %
    python benchmarks/bench_compact.py --model resnet20 --sparsity 0.97   # residual: ~1.0x
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN builds its kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--sparsity", type=float, default=None)
    parser.add_argument("--mt", default=None, help="MT count or percent (default: ck.suggest_mt's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    name = args.model or "mobilenet_v1"
    size = args.input_size or (16 if args.quick else 32)
    sparsity = args.sparsity or 0.95

    import torch

    import collapsekit as ck
    from collapsekit.validation import probe

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ck.models.create(name, num_classes=10, in_channels=3, input_size=size).eval()
    mt = args.mt
    if mt is None:  # the top of suggest_mt's search range: the smallest MT alone tends to leave a
        # single thin path that a ReLU can close (value-level collapse)
        suggestion = ck.suggest_mt(model, torch.randn(1, 3, size, size), sparsity)
        mt = suggestion.search_range[-1] if suggestion.search_range else suggestion.mt
    result = ck.prune(model, sparsity, mt=mt)
    for m in model.modules():  # BN recalibration after one-shot pruning
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(64, 3, size, size))
    model.eval()
    start = time.perf_counter()
    small = ck.compact(model, result.masks, torch.randn(1, 3, size, size))
    t_compact = time.perf_counter() - start
    x = torch.randn(args.batch, 3, size, size)
    with torch.no_grad():
        diff = (model(x) - small(x)).abs().max().item()
        live = not probe.output_is_constant(model, (x[:1],))
        t_masked = _median_seconds(lambda: model(x), args.repeats)
        t_small = _median_seconds(lambda: small(x), args.repeats)
    n_model = sum(p.numel() for p in model.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    print(f"model {name} on {size}x{size}, sparsity {result.sparsity:.4f}, MT {result.mt_count}, "
          f"batch {args.batch}, {args.threads} thread(s)")
    print(f"  parameters  masked dense {n_model:,}  compacted {n_small:,} ({n_small / n_model:.1%})")
    print(f"  latency     masked dense {t_masked * 1e3:8.2f} ms  compacted {t_small * 1e3:8.2f} ms  "
          f"speed-up {t_masked / t_small:.2f}x")
    print(f"  compact took {t_compact:.2f} s; max |output difference| {diff:.2e}; "
          f"output {'varies with the input' if live else 'CONSTANT: the pruned net collapsed'}")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
