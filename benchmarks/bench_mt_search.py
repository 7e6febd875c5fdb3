"""Benchmark: `mt-search`'s successive halving against the full sweep, on digits nets the zoo does not have.

For each held-out net (a plain VGG-style stack with BN, a residual net with a
narrow head, a depthwise-separable stack; all written here): train it dense on
digits, prune at a sparsity just past its collapse sparsity (MT = 0 collapses)
and at one well before it, and run `search_mt` twice over the same candidate
MTs: by successive halving (the default) and exhaustively (`full=True`).
Prints one row per case: fine-tuning epochs each spent, the MT each picked, and
the picked MT's accuracy in the full sweep against the full sweep's best.

    python benchmarks/bench_mt_search.py                 # 3 nets x 2 sparsities, 10 dense epochs, 3 fine-tune
    python benchmarks/bench_mt_search.py --dense-epochs 3 --nets vgg_bn
    python benchmarks/bench_mt_search.py --quick         # one net, one sparsity
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.data import load
from collapsekit.training.train import evaluate, fit
from collapsekit.validation.mtsearch import search_mt


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def vgg_bn(num_classes: int = 10, in_channels: int = 1, input_size: int = 8) -> nn.Module:
    """conv16-conv16-pool-conv32-conv32-pool-fc64-fc: every layer a bottleneck."""
    return nn.Sequential(*_conv(in_channels, 16), *_conv(16, 16), nn.MaxPool2d(2), *_conv(16, 32), *_conv(32, 32),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * (input_size // 4) ** 2, 64), nn.ReLU(),
                         nn.Linear(64, num_classes))


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(*_conv(width, width), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width))

    def forward(self, x):
        return (x + self.body(x)).relu()


def residual(num_classes: int = 10, in_channels: int = 1, input_size: int = 8) -> nn.Module:
    """stem conv16, two identity blocks (bypassable), a 1x1 squeeze to 8 channels, pooled linear head."""
    return nn.Sequential(*_conv(in_channels, 16), _Residual(16), _Residual(16), *_conv(16, 8, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def separable(num_classes: int = 10, in_channels: int = 1, input_size: int = 8) -> nn.Module:
    """stem conv16, three depthwise 3x3 + pointwise 1x1 blocks (32, 64 stride 2, 64), pooled linear head."""
    def block(cin, cout, stride=1):
        return [*_conv(cin, cin, 3, stride, groups=cin), *_conv(cin, cout, 1)]

    return nn.Sequential(*_conv(in_channels, 16), *block(16, 32), *block(32, 64, 2), *block(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


NETS = {"vgg_bn": vgg_bn, "residual": residual, "separable": separable}
# Sparsities as a factor on the weights the collapse sparsity keeps: just past it (MT = 0 collapses), well before.
PLACES = {"past collapse": 0.95, "before collapse": 1.5}


def case(name: str, bundle, dense_epochs: int, epochs: int, place: str, seed: int) -> dict:
    """One net at one sparsity: both searches and the comparison."""
    torch.manual_seed(seed)
    model = NETS[name]()
    fit(model, bundle, epochs=dense_epochs, lr=0.05, batch_size=64, device="cpu", seed=seed, progress=False)
    collapse = ck.analyze(model, bundle.example_input(), sparsities=[0.5]).collapse_sparsity
    sparsity = round(1 - (1 - collapse) * PLACES[place], 5)
    started = time.perf_counter()
    halved = search_mt(model, bundle, sparsity, epochs=epochs, lr=0.05, device="cpu", seed=seed)
    middle = time.perf_counter()
    full = search_mt(model, bundle, sparsity, epochs=epochs, lr=0.05, device="cpu", seed=seed, full=True)
    accuracy = {p.mt: p.accuracy for p in full.points}
    pick, best = halved.suggestion["mt"], max(accuracy.values())
    return {"net": name, "dense_epochs": dense_epochs, "dense_accuracy": evaluate(model, bundle.test, "cpu"),
            "place": place, "sparsity": sparsity, "candidates": len(full.points),
            "collapsed": sum(p.predicted_collapsed for p in full.points), "epochs": epochs,
            "halving_epochs": halved.fine_tune_epochs, "full_epochs": full.fine_tune_epochs,
            "epoch_share": halved.fine_tune_epochs / full.fine_tune_epochs, "halving_mt": pick,
            "full_mt": full.suggestion["mt"], "pick_accuracy_in_full": accuracy[pick], "full_best_accuracy": best,
            "accuracy_ratio": accuracy[pick] / best, "forecast_mt": halved.suggestion["forecast_mt"],
            "forecast_mt_accuracy_in_full": accuracy.get(halved.suggestion["forecast_mt"]),
            "seconds": {"halving": middle - started, "full": time.perf_counter() - middle}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=list(NETS))
    parser.add_argument("--dense-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per candidate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the first net, just past its collapse")
    parser.add_argument("--json", action="store_true", help="print each row as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load("digits")
    nets, places = (args.nets[:1], ["past collapse"]) if args.quick else (args.nets, list(PLACES))
    print("| net | dense epochs | sparsity | candidates (collapsed) | halving / full epochs | picked MT (full's) "
          "| its accuracy in the full sweep / full's best |")
    print("|---|---|---|---|---|---|---|")
    for name in nets:
        for place in places:
            row = case(name, bundle, args.dense_epochs, args.epochs, place, args.seed)
            if args.json:
                print(json.dumps(row))
            print(f"| {name} | {row['dense_epochs']} | {row['sparsity']} ({place}) | {row['candidates']} "
                  f"({row['collapsed']}) | {row['halving_epochs']:.2f} / {row['full_epochs']:g} = "
                  f"{row['epoch_share']:.2f} | {row['halving_mt']} ({row['full_mt']}) | "
                  f"{row['pick_accuracy_in_full']:.4f} / {row['full_best_accuracy']:.4f} = "
                  f"{row['accuracy_ratio']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
