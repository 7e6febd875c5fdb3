"""What every analysis script shares: its command line, its output folder, tables, figures, a dense model on digits."""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(name: str, doc: str, argv=None, flags: dict[str, str] | None = None) -> argparse.Namespace:
    """--quick (a reduced run for CI), --out (default analyses/results/NAME), --seed, and `flags` ({--flag: help},
    store_true) of the script's own."""
    parser = argparse.ArgumentParser(prog=f"python analyses/{name}.py", description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and levels: a smoke run for CI")
    parser.add_argument("--out", type=Path, default=RESULTS / name, help=f"output folder (default {RESULTS / name})")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and training (default 0)")
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.started = time.perf_counter()
    return args


def write_table(rows: list[dict], out: Path, stem: str = "table", floatfmt: str = ".4f") -> tuple[Path, Path]:
    """(csv path, markdown path): `rows` (dicts with the same keys) written as OUT/STEM.csv and OUT/STEM.md."""
    from collapsekit.files.atomic import atomic_write, atomic_write_text
    from collapsekit.views.render import md_table

    keys = list(rows[0])
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

    def cell(v) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    atomic_write(csv_path, write_csv)  # an interrupted run leaves the last complete table, never half of one
    atomic_write_text(md_path, md_table(keys, [[cell(r[k]) for k in keys] for r in rows]) + "\n")
    return csv_path, md_path


def write_summary(out: Path, summary: dict, args: argparse.Namespace) -> Path:
    """OUT/summary.json: the headline numbers, whether the run was --quick, and how long it took."""
    summary = {**summary, "quick": bool(args.quick), "seed": args.seed,
               "seconds": round(time.perf_counter() - args.started, 1)}
    from collapsekit.files.atomic import atomic_write_text

    return atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def save_figure(fig, out: Path, stem: str = "figure") -> Path:
    """OUT/STEM.png."""
    from collapsekit.views import plots

    return plots.save(fig, out / stem, formats=("png",))[0]


def train_on_digits(name: str, bundle, epochs: int, seed: int, lr: float | None = None, **model_kwargs):
    """(model, test accuracy): zoo model `name` built for `bundle` and trained densely with its family defaults."""
    import collapsekit as ck
    from collapsekit.training.train import defaults_for, fit, seed_everything

    seed_everything(seed)
    model = ck.models.create(name, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                             input_size=bundle.input_size, **model_kwargs)
    hp = defaults_for(name)
    result = fit(model, bundle, epochs=epochs, lr=lr or hp["lr"], batch_size=hp["batch_size"], device="cpu",
                 seed=seed, optimizer=hp["optimizer"], weight_decay=hp["weight_decay"], progress=False)
    return model.eval(), result.accuracy


def done(out: Path, args: argparse.Namespace) -> None:
    print(f"wrote {out} in {time.perf_counter() - args.started:.0f} s")
