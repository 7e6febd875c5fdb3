"""Does the trainability forecast (one forward and backward pass at the pruned weights) predict masked fine-tuning?

Reproduces the finding behind collapsekit's data-aware tier, after Lee et al.
("A Signal Propagation Perspective for Pruning Neural Networks at
Initialization", 2020): a kept path is not enough to train; how much signal
and gradient the pruned weights still propagate decides it, and can be
measured before any fine-tuning. Zoo models (LeNet-5, LeNet-300-100,
ResNet-20, MobileNet-V1 x0.25) are trained densely on the bundled digits for a
short and a longer time, pruned with Global MP at sparsities around each
model's collapse and at a sweep of Minimum Thresholds, forecast
(`Analysis.forecast`, `ck.suggest_mt(..., data=bundle)`), then fine-tuned
with masks for 3 epochs (validate's defaults). Calibration runs (seed 0) set
the thresholds in collapsekit/analysis/forecast.py; test runs (seed 1: other
initialisations, other dense training lengths) are never used to set them.
Only levels below the structural collapse count: above it structure decides.

Run: python analyses/trainability_forecast.py [--quick]
Writes analyses/results/trainability_forecast/{table.csv,table.md,confusion.md,suggestion.md,figure.png,
summary.json}; fine-tune outcomes and dense weights are cached there (finetunes.json, dense/), so a rerun
after changing the rule only re-forecasts.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

EPOCHS, LR, BATCH = 3, 0.01, 64  # validate's fine-tuning defaults
MARGIN = 0.1  # validate's: trained = accuracy > chance + margin
WIDTH = {"mobilenet_v1": {"width_mult": 0.25}}

# (model, dense epochs): a short (under-trained) and a longer dense run per model.
CALIBRATION = [("lenet5", 1), ("lenet5", 5), ("lenet_300_100", 1), ("lenet_300_100", 5),
               ("mobilenet_v1", 2), ("mobilenet_v1", 6), ("resnet20", 1), ("resnet20", 3)]
TEST = [("lenet5", 2), ("lenet5", 8), ("lenet_300_100", 2), ("lenet_300_100", 8),
        ("mobilenet_v1", 3), ("mobilenet_v1", 8), ("resnet20", 1), ("resnet20", 2)]
QUICK_CALIBRATION, QUICK_TEST = [("lenet5", 5)], [("lenet_300_100", 3)]
SEEDS = {"calibration": 0, "test": 1}


def level_grid(collapse: float, quick: bool) -> list[float]:
    """Sparsities to validate: fixed ones, and ones approaching the collapse sparsity from below."""
    fixed = (0.5, 0.9) if quick else (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
    near = (4, 1.5) if quick else (8, 4, 2, 1.4, 1.1)
    return sorted({s for s in fixed if s < collapse} | {round(1 - (1 - collapse) * f, 5) for f in near})


class Outcomes:
    """Fine-tune outcomes cached in OUT/finetunes.json, keyed by run, sparsity and MT (fine-tuning is deterministic)."""

    def __init__(self, out: Path):
        self.path = out / "finetunes.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, model, an, k: int, bundle) -> dict:
        if key not in self.data:
            import collapsekit as ck

            from collapsekit.pruning.prune import apply_masks

            net = copy.deepcopy(model)
            masks = an.masks(k=k)
            apply_masks(net, masks)
            run = ck.finetune(net, masks, bundle, EPOCHS, LR, BATCH, device="cpu", seed=0, progress=False)
            self.data[key] = {"accuracy": run.accuracy, "accuracy_before": run.accuracy_before}
            from collapsekit.files.atomic import atomic_write_text

            atomic_write_text(self.path, json.dumps(self.data, indent=1))
        return self.data[key]


def dense_model(name: str, epochs: int, seed: int, bundle, out: Path):
    """(model, accuracy): trained once, then read from OUT/dense/ (safetensors)."""
    import collapsekit as ck
    from safetensors.torch import load_file, save_file
    from collapsekit.training.train import evaluate

    path = out / "dense" / f"{name}_e{epochs}_s{seed}.safetensors"
    if path.exists():
        model = ck.models.create(name, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                                 input_size=bundle.input_size, **WIDTH.get(name, {}))
        model.load_state_dict(load_file(str(path)))
        return model.eval(), evaluate(model, bundle.test)
    model, acc = _common.train_on_digits(name, bundle, epochs, seed, **WIDTH.get(name, {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, acc


def run(name: str, epochs: int, split: str, bundle, outcomes: Outcomes, quick: bool, out: Path) -> tuple[list, list]:
    """(rows, suggestion rows) for one dense model: every level and MT point, forecast beside outcome."""
    import collapsekit as ck

    seed = SEEDS[split]
    model, dense = dense_model(name, epochs, seed, bundle, out)
    an = ck.Analysis(model, bundle.example_input(), name=name)
    collapse = an.collapse_sparsity()
    chance = 1.0 / bundle.num_classes
    tag = f"{name}|e{epochs}|s{seed}"
    base = dict(split=split, model=name, dense_epochs=epochs, seed=seed, dense_accuracy=dense,
                collapse_sparsity=collapse)

    def point(kind: str, s: float, mt: int) -> dict:
        a = an.with_mt(mt)
        k = a.count(s)
        collapsed = a.collapsed_at(k)
        started = time.perf_counter()
        f = a.forecast(bundle, k, collapsed)
        seconds = time.perf_counter() - started
        o = outcomes.get(f"{tag}|{s:.6g}|{mt}", model, a, k, bundle)
        ev = f.evidence
        kept = "-".join(str(int(m.sum())) for m in a.masks(k=k).values())  # MTs that change nothing share it
        return {**base, "kind": kind, "sparsity": s, "mt": mt, "collapsed": collapsed, "prune": kept,
                "forecast_trainable": f.trainable, "trained": o["accuracy"] > chance + MARGIN,
                "accuracy": o["accuracy"], "accuracy_before": o["accuracy_before"],
                **{key: ev.get(key, 0.0) for key in EVIDENCE}, "forecast_seconds": seconds, "reason": f.reason}

    rows = [point("level", s, 0) for s in level_grid(collapse, quick)]
    for r in rows:
        print(f"  {tag} s={r['sparsity']:.5g}: forecast {r['forecast_trainable']}, acc {r['accuracy']:.3f} "
              f"(signal {r['signal']:.3g}, class {r['class_signal']:.3g}; {r['reason']})", flush=True)
    sugs = [sweep_mt(an, round(1 - (1 - collapse) * f, 5), point, tag, quick, bundle)
            for f in ((1.5,) if quick else (2.0, 1.1))]  # MT matters most below collapse
    for sug, sweep in sugs:
        rows += sweep
    return rows, [sug for sug, _ in sugs]


def sweep_mt(an, s_mt: float, point, tag: str, quick: bool, bundle) -> tuple[dict, list]:
    """(suggestion row, MT point rows): suggest_mt with data at `s_mt`, then mt-search's sweep plus every
    candidate the suggestion forecast, each fine-tuned."""
    import collapsekit as ck
    from collapsekit.validation.mtsearch import default_mts

    suggestion = ck.suggest_mt(an, sparsity=s_mt, data=bundle)
    mts = sorted({0, suggestion.floor, suggestion.mt} if quick else
                 {*default_mts(suggestion), *(f["mt"] for f in suggestion.forecasts)})
    sweep = [point("mt", s_mt, mt) for mt in mts]
    best = max(sweep, key=lambda r: (r["accuracy"], -r["mt"]))  # over every MT tried (the stricter bar)
    default = set(default_mts(suggestion))  # what `collapsekit mt-search` sweeps by default
    search_best = max((r for r in sweep if r["mt"] in default), key=lambda r: (r["accuracy"], -r["mt"]))
    picked = next(r for r in sweep if r["mt"] == suggestion.mt)
    floor = next((r for r in sweep if r["mt"] == suggestion.floor), None)
    print(f"  {tag} MT sweep at {s_mt:g}: suggested {suggestion.mt} (acc {picked['accuracy']:.3f}), floor "
          f"{suggestion.floor}, best {best['mt']} (acc {best['accuracy']:.3f}); {suggestion.seconds:.2f} s",
          flush=True)
    first = sweep[0]
    sug = {"split": first["split"], "model": first["model"], "dense_epochs": first["dense_epochs"],
           "seed": first["seed"], "sparsity": s_mt,
           "floor_mt": suggestion.floor, "floor_accuracy": None if floor is None else floor["accuracy"],
           "suggested_mt": suggestion.mt, "suggested_accuracy": picked["accuracy"], "best_mt": best["mt"],
           "best_accuracy": best["accuracy"], "ratio": picked["accuracy"] / best["accuracy"],
           "within_90": picked["accuracy"] >= 0.9 * best["accuracy"],
           "mt_search_best_mt": search_best["mt"], "mt_search_best_accuracy": search_best["accuracy"],
           "within_90_of_mt_search": picked["accuracy"] >= 0.9 * search_best["accuracy"],
           "suggest_seconds": suggestion.seconds,
           "candidates": json.dumps(list(suggestion.forecasts))}
    return sug, sweep


EVIDENCE = ("signal", "signal_eval", "class_signal", "ncm_accuracy", "accuracy_pruned", "gradient_norm",
            "gradient_min", "gradient_reach", "gradient_relative_min", "gradient_relative_median", "batch_norm")


def distinct(rows: list[dict]) -> list[dict]:
    """Rows not decided by structure (below collapse), one per distinct prune: a level and an MT point with
    the same kept counts per layer (MT 0, or an MT smaller than every layer keeps anyway) count once."""
    seen, out = set(), []
    for r in rows:
        key = (r["split"], r["model"], r["dense_epochs"], r["sparsity"], r["prune"])
        if not r["collapsed"] and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def confusion(rows: list[dict]) -> dict:
    """Forecast vs outcome counts over the distinct prunes not decided by structure."""
    alive = distinct(rows)
    c = {f"forecast_{f}_trained_{t}": sum(r["forecast_trainable"] == f and r["trained"] == t for r in alive)
         for f in (True, False) for t in (True, False)}
    agree = sum(r["forecast_trainable"] == r["trained"] for r in alive)
    return {**c, "counted": len(alive), "agreement": agree / len(alive) if alive else 1.0}


def main(argv=None) -> int:
    args = _common.parse_args("trainability_forecast", __doc__, argv)
    import torch

    torch.set_num_threads(1)
    from collapsekit import data

    bundle = data.load("digits")
    outcomes = Outcomes(args.out)
    plan = {"calibration": QUICK_CALIBRATION if args.quick else CALIBRATION,
            "test": QUICK_TEST if args.quick else TEST}
    rows, suggestions = [], []
    for split, runs in plan.items():
        for name, epochs in runs:
            r, s = run(name, epochs, split, bundle, outcomes, args.quick, args.out)
            rows += r
            suggestions += s
    _common.write_table(rows, args.out)
    _common.write_table(suggestions, args.out, stem="suggestion")
    per_split = {split: confusion([r for r in rows if r["split"] == split]) for split in plan}
    suggest = {split: sum(s["within_90"] for s in suggestions if s["split"] == split)
               / max(1, sum(s["split"] == split for s in suggestions)) for split in plan}
    suggest_search = {split: sum(s["within_90_of_mt_search"] for s in suggestions if s["split"] == split)
                      / max(1, sum(s["split"] == split for s in suggestions)) for split in plan}
    lines = ["| split | counted | forecast yes, trained | forecast yes, not trained | forecast no, trained | "
             "forecast no, not trained | agreement | suggestion within 90 % of the best MT tried | "
             "... of mt-search's default sweep |", "|" + "---|" * 9]
    for split, c in per_split.items():
        lines.append(f"| {split} | {c['counted']} | {c['forecast_True_trained_True']} | "
                     f"{c['forecast_True_trained_False']} | {c['forecast_False_trained_True']} | "
                     f"{c['forecast_False_trained_False']} | {c['agreement']:.1%} | {suggest[split]:.0%} | "
                     f"{suggest_search[split]:.0%} |")
    (args.out / "confusion.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _common.save_figure(figure(rows), args.out)
    _common.write_summary(args.out, {"confusion": per_split, "suggestion_within_90": suggest,
                                     "suggestion_within_90_of_mt_search": suggest_search,
                                     "suggestions": suggestions, "finetune": {"epochs": EPOCHS, "lr": LR,
                                                                               "batch_size": BATCH,
                                                                               "margin": MARGIN}}, args)
    _common.done(args.out, args)
    return 0


def figure(rows: list[dict]):
    """The rule's two measurements, one point per distinct prune below collapse, by outcome; thresholds drawn."""
    from collapsekit.analysis import forecast
    from collapsekit.views import plots

    fig = plots.new_figure(9.0, 4.2)
    with plots.style():
        axes = fig.subplots(1, 2, sharey=True)
    floor = 1e-6  # zeros drawn at the bottom of the log axes
    for ax, regime in zip(axes, ("plain", "batch_norm")):
        alive = [r for r in distinct(rows) if bool(r["batch_norm"]) == (regime == "batch_norm")]
        for trained, colour, label in ((True, plots.BYPASSABLE, "trained above chance"),
                                       (False, plots.COLLAPSED, "stayed at chance")):
            pts = [r for r in alive if r["trained"] == trained]
            xy = [(max(r["signal"], floor), max(r["gradient_relative_min"], floor)) for r in pts]
            ax.scatter(*zip(*xy), s=16, color=colour, label=label, alpha=0.8) if xy else None
            wrong = [p for p, r in zip(xy, pts) if r["forecast_trainable"] != trained]
            if wrong:
                ax.scatter(*zip(*wrong), s=60, facecolors="none", edgecolors="black", lw=0.8)
        least = forecast.THRESHOLDS[regime]
        ax.axvline(least["signal"], color="black", lw=0.8, ls="--")
        ax.axhline(least["gradient_relative_min"], color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("signal (logit spread / dense)")
        ax.set_title(f"{regime.replace('_', ' ')}: forecast trainable up and right of the dashes", fontsize=9)
    axes[0].set_ylabel("weakest bottleneck gradient / dense")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Forecast vs 3-epoch masked fine-tune (circled: forecast wrong; accurate-after-pruning "
                 "prunes are trainable anywhere)", fontsize=9)
    return fig


if __name__ == "__main__":
    sys.exit(main())
