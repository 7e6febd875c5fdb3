"""Benchmark: training throughput of masked fine-tuning (`ck.finetune`) vs dense `train.fit`, same run, same settings.

Masked fine-tuning adds, per step, gradient masking before the optimizer step,
re-applying the masks and zeroing the optimizer state at pruned positions after
it (Invariant 3), plus per-epoch bookkeeping. Dense and masked runs alternate
`--repeats` times in one process; samples/s counts training samples over the
epochs' seconds (`fit`'s per-epoch timer; the test set is cut to one sample so
evaluation does not dilute the ratio). Goal: overhead <= 5 % on a GPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py                 # ResNet-20, digits 8x8, CPU
    python benchmarks/bench_finetune.py --model wrn_16_2 --input-size 32 --channels 3 --train-size 50000 \\
        --batch-size 128 --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys

import torch
from torch.utils.data import TensorDataset


def measure(args) -> dict:
    import collapsekit as ck
    from collapsekit import data, models
    from collapsekit.training.device import resolve_device
    from collapsekit.training.finetune import finetune
    from collapsekit.training.train import fit

    device = resolve_device(args.device)
    bundle = data.load(args.data, input_size=args.input_size, channels=args.channels)
    x, y = bundle.test.tensors
    train = bundle.train
    if args.train_size:  # tile the training set so an epoch has enough steps to time (GPU)
        index = torch.arange(args.train_size) % len(train)
        train = TensorDataset(*(t[index] for t in train.tensors))
    bundle = dataclasses.replace(bundle, train=train, test=TensorDataset(x[:1], y[:1]))
    torch.manual_seed(0)
    base = models.create(args.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                         input_size=bundle.input_size)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    masks = ck.prune(base, args.sparsity).masks
    hp = dict(lr=0.01, batch_size=args.batch_size, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
              lr_schedule="cosine", label_smoothing=0.1, device=device, progress=False)
    samples = len(bundle.train) * args.epochs
    rates: dict[str, list[float]] = {"dense": [], "masked": []}

    def fresh():
        model = models.create(args.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                              input_size=bundle.input_size)
        model.load_state_dict(state)
        return model

    for _ in range(args.warmup):  # first calls pay for allocator and kernel warm-up
        fit(fresh(), bundle, epochs=1, seed=0, **hp)
    for r in range(args.repeats):
        dense = fit(fresh(), bundle, epochs=args.epochs, seed=r, **hp)
        rates["dense"].append(samples / sum(h["seconds"] for h in dense.history))
        model = fresh()
        ck.prune(model, args.sparsity)
        masked = finetune(model, masks, bundle, args.epochs, seed=r, **hp)
        rates["masked"].append(samples / sum(h["seconds"] for h in masked.history))
    dense_rate, masked_rate = statistics.median(rates["dense"]), statistics.median(rates["masked"])
    # Runs of a pair are back to back, so the median of per-pair ratios resists load that drifts.
    pair_ratio = statistics.median(m / d for d, m in zip(rates["dense"], rates["masked"]))
    return {"model": args.model, "data": args.data, "input_size": bundle.input_size, "device": str(device),
            "threads": torch.get_num_threads(), "batch_size": args.batch_size, "epochs": args.epochs,
            "sparsity": args.sparsity, "repeats": args.repeats, "dense_samples_per_s": dense_rate,
            "masked_samples_per_s": masked_rate, "ratio": pair_ratio, "overhead": 1.0 / pair_ratio - 1.0,
            "train_size": len(train), "runs": rates}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="digits")
    p.add_argument("--input-size", type=int)
    p.add_argument("--channels", type=int)
    p.add_argument("--train-size", type=int, help="tile the training set to this many samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the JSON document only")
    args = p.parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} on {result['data']} {result['input_size']}x{result['input_size']} "
          f"({result['train_size']} training samples), {result['device']} "
          f"({result['threads']} threads), batch {result['batch_size']}, {result['epochs']} epochs x "
          f"{result['repeats']} repeats, sparsity {result['sparsity']}")
    print(f"  dense  fit       {result['dense_samples_per_s']:10.1f} samples/s  "
          f"(runs: {', '.join(f'{r:.0f}' for r in result['runs']['dense'])})")
    print(f"  masked finetune  {result['masked_samples_per_s']:10.1f} samples/s  "
          f"(runs: {', '.join(f'{r:.0f}' for r in result['runs']['masked'])})")
    print(f"  masked/dense throughput ratio {result['ratio']:.3f} (median of back-to-back pairs; overhead "
          f"{result['overhead']:+.1%}; goal <= 5 % on GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
