"""Benchmark: everything `collapsekit prune --out` writes at 90 % sparsity, as a share of the dense file, beside its goal.

For each model, `collapsekit prune --sparsity 0.9 --out DIR` runs in this
process and every file it writes is counted (pruned.safetensors, the one model
file that carries the masks, plus prune.json, the small report). The share is of
the dense safetensors file of the same weights. Beside it: the floor (kept
values + each mask's entropy n * H(density) + the dense tensors), what a one
bit per weight bitmask would have cost, torch.nn.utils.prune's state_dict
(weight_orig + weight_mask, torch.save; --torch), save/load times and a bit for
bit round-trip check (values, +0.0 at pruned positions, masks).

Goals (issue 14): WRN-16-2 and WRN-28-8 <= 12.5 % (moonshot: the masks'
entropy, ~11.5 %), ResNet-20 <= 15 %. Magnitude pruning of random init gives
near-random masks, so "random" rows are the hard case for the mask code;
"trained" is WRN-16-2 after `collapsekit train --data digits --epochs 3`.

    python benchmarks/bench_export.py                   # ResNet-20, WRN-16-2, WRN-28-8 random; WRN-16-2 trained
    python benchmarks/bench_export.py --quick           # ResNet-20 and WRN-16-2, random init
    python benchmarks/bench_export.py --trained RUN/model.safetensors   # reuse a trained WRN-16-2
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"resnet20": 0.15, "wrn_16_2": 0.125, "wrn_28_8": 0.125}


def _entropy_bytes(mask) -> float:
    p = float(mask.float().mean())
    return 0.0 if p in (0.0, 1.0) else mask.numel() * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8


def _bits(t):
    import torch

    return t.view(torch.uint8) if t.is_floating_point() else t


def measure(name: str, weights: str, tmp: Path, checkpoint: str | None, sparsity: float, torch_prune: bool) -> dict:
    """Sizes, times and the round-trip verdict of `prune --out` on one model."""
    import torch

    import collapsekit as ck
    from collapsekit.cli import main as cli
    from collapsekit.files import checkpoint as ckpt

    run = tmp / f"{name}-{weights}"
    if checkpoint is None:  # random init, saved the way `collapsekit train` saves, sidecar included
        torch.manual_seed(0)
        shapes = {"num_classes": 10, "in_channels": 3, "input_size": 32}
        checkpoint = str(ckpt.save(ck.models.create(name, **shapes), run / "dense.safetensors",
                                   {"model": name, **shapes}))
    meta = ckpt.read_meta(checkpoint)
    model = ck.models.create(name, **{k: meta[k] for k in ("num_classes", "in_channels", "input_size")})
    ckpt.load_into(model, checkpoint)
    args = ["prune", "--checkpoint", checkpoint, "--sparsity", str(sparsity), "--out", str(run / "out"),
            "--format", "json"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        if cli(args) != 0:
            raise SystemExit(f"prune failed on {name}")
    t_prune = time.perf_counter() - start
    files = {p.name: os.path.getsize(p) for p in (run / "out").iterdir()}
    pruned = run / "out" / "pruned.safetensors"
    start = time.perf_counter()
    state, masks = ck.load_sparse(pruned), ck.masks.load(pruned)
    t_load = time.perf_counter() - start
    result = ck.prune(model, sparsity)  # the same Global MP, here, to check the file against
    identical = list(state) == list(model.state_dict()) and all(
        torch.equal(_bits(state[k]), _bits(v.contiguous())) for k, v in model.state_dict().items()) and all(
        torch.equal(masks[n], result.masks[n]) for n in result.masks)
    kept_bytes = sum(int(m.sum()) * model.get_parameter(n).element_size() for n, m in result.masks.items())
    masked = set(result.masks)
    other = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k not in masked)
    entropy = sum(_entropy_bytes(m) for m in result.masks.values())
    row = {"model": name, "weights": weights, "dense": os.path.getsize(checkpoint), "files": files,
           "written": sum(files.values()), "floor": kept_bytes + entropy + other,
           "bitmask": kept_bytes + sum((m.numel() + 7) // 8 for m in result.masks.values()) + other,
           "prune_s": t_prune, "load_s": t_load, "identical": identical}
    if torch_prune:
        from collapsekit.pruning.masks import to_torch_prune

        to_torch_prune(model, result.masks)
        torch.save(model.state_dict(), run / "torch_prune.pt")
        row["torch_prune"] = os.path.getsize(run / "torch_prune.pt")
    return row


def train_wrn_16_2(tmp: Path) -> str:
    """Path of WRN-16-2 trained 3 epochs on digits by the `collapsekit train` CLI."""
    from collapsekit.cli import main as cli

    out = tmp / "trained"
    print("training wrn_16_2 on digits, 3 epochs ...", file=sys.stderr)
    with contextlib.redirect_stdout(io.StringIO()):
        if cli(["train", "--model", "wrn_16_2", "--data", "digits", "--epochs", "3", "--out", str(out),
                "--no-progress"]) != 0:
            raise SystemExit("training failed")
    return str(out / "model.safetensors")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--quick", action="store_true", help="ResNet-20 and WRN-16-2 at random init only")
    parser.add_argument("--trained", metavar="PATH", help="a trained WRN-16-2 checkpoint (default: train one)")
    parser.add_argument("--torch", action="store_true", help="also size torch.nn.utils.prune's state_dict")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("resnet20", "wrn_16_2") + (() if args.quick else ("wrn_28_8",)):
            rows.append(measure(name, "random", tmp, None, args.sparsity, args.torch))
        if not args.quick:
            trained = args.trained or train_wrn_16_2(tmp)
            rows.append(measure("wrn_16_2", "trained", tmp, trained, args.sparsity, args.torch))
    print(f"everything `collapsekit prune --sparsity {args.sparsity} --out` writes, as a share of the dense file")
    head = (f"{'model':<9} {'weights':<8} {'dense MB':>9} {'model file':>10} {'prune.json':>10} {'written':>8} "
            f"{'goal':>6} {'ok':>3} {'floor':>6} {'bitmask':>7} {'prune s':>7} {'load s':>6} {'bit-exact':>9}")
    print(head + ("  torch.nn.utils.prune" if args.torch else ""))
    ok = True
    for r in rows:
        d = r["dense"]
        goal = GOALS[r["model"]]
        passed = r["written"] <= goal * d
        ok &= passed and r["identical"]
        line = (f"{r['model']:<9} {r['weights']:<8} {d / 1e6:9.2f} {r['files']['pruned.safetensors'] / d:10.2%} "
                f"{r['files']['prune.json'] / d:10.2%} {r['written'] / d:8.2%} {goal:6.1%} "
                f"{'yes' if passed else 'NO':>3} {r['floor'] / d:6.2%} {r['bitmask'] / d:7.2%} "
                f"{r['prune_s']:7.1f} {r['load_s']:6.2f} {str(r['identical']):>9}")
        if "torch_prune" in r:
            line += f"  {r['torch_prune'] / d:.0%}"
        print(line)
    print("floor: kept values + masks' entropy + dense tensors; bitmask: the same with one bit per weight "
          "(the masks' share before issue 14, when they were also written a second time)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
