"""Accuracy vs Minimum Threshold (MT) after Global MP + fine-tuning: it rises, then falls.

Reproduces the MT ablation of Gupta et al. ("Is Complexity Required for Neural
Network Pruning? A Case Study on Global Magnitude Pruning"): keeping at least
MT weights in every layer first helps (layers Global MP would empty, or nearly
empty, keep a few weights), then hurts (a large MT hands the sparse budget out
evenly, starving the wide layers that need it), so MT is searched like any
hyper-parameter. Here a ResNet-20 trained on the bundled digits is pruned at a
very high sparsity with MT = 0 (plain Global MP) and a log-spaced grid of MT
counts up to the largest the sparsity allows, each copy fine-tuned with masks
held fixed (`collapsekit.validation.mtsearch.search_mt`, i.e. `ck.prune` +
`ck.finetune`); `ck.suggest_mt` gives the smallest MT that avoids structural
collapse.

Run: python analyses/mt_ablation.py [--quick]
Writes analyses/results/mt_ablation/{table.csv,table.md,figure.png,summary.json}
(full run: one figure per sparsity, figure_s<S>.png).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODEL = "resnet20"
FULL = dict(dense_epochs=4, sparsities=(0.995, 0.997), grid=7, epochs=5)
QUICK = dict(dense_epochs=3, sparsities=(0.997,), grid=4, epochs=3)


def mt_grid(max_mt: int, n: int) -> list[int]:
    """0 plus `n` log-spaced MT counts from 1 to `max_mt` (distinct integers)."""
    import numpy as np

    return sorted({0, *(int(round(v)) for v in np.geomspace(1, max(max_mt, 1), n))})


def main(argv=None) -> int:
    args = _common.parse_args("mt_ablation", __doc__, argv)
    import collapsekit as ck
    from collapsekit import data
    from collapsekit.views import plots
    from collapsekit.validation.mtsearch import search_mt
    from collapsekit.views.render import mt_search_to_text
    from collapsekit.training.train import defaults_for

    cfg = QUICK if args.quick else FULL
    bundle = data.load("digits")
    model, dense = _common.train_on_digits(MODEL, bundle, cfg["dense_epochs"], args.seed)
    print(f"{MODEL} dense accuracy {dense:.4f}", flush=True)
    lr = defaults_for(MODEL)["lr"]
    rows, curves = [], {}
    for s in cfg["sparsities"]:
        suggestion = ck.suggest_mt(model, bundle.example_input(), s)
        result = search_mt(model, bundle, s, mts=mt_grid(suggestion.max_mt, cfg["grid"]), epochs=cfg["epochs"],
                           lr=lr, device="cpu", seed=args.seed)
        print(mt_search_to_text(result), flush=True)
        for p in result.points:
            rows.append({"sparsity": s, "mt": p.mt, "mt_percent": p.percent,
                         "predicted": "collapsed" if p.predicted_collapsed else "alive",
                         "emptied_layers": p.emptied_layers, "accuracy_pruned": p.accuracy_pruned,
                         "accuracy_finetuned": p.accuracy})
        acc = [p.accuracy for p in result.points]
        best = result.best
        curves[f"{s:g}"] = {
            "suggested_mt": suggestion.mt, "max_mt": suggestion.max_mt,
            "mt": [p.mt for p in result.points], "accuracy": acc,
            "accuracy_mt0": acc[0], "best_mt": best.mt, "best_accuracy": best.accuracy,
            "accuracy_max_mt": acc[-1], "emptied_layers_mt0": result.points[0].emptied_layers,
            "rises_then_falls": bool(acc[0] < best.accuracy > acc[-1]),
        }
        stem = "figure" if s == cfg["sparsities"][-1] else f"figure_s{s:g}"
        _common.save_figure(plots.mt_search_curve(result), args.out, stem)
    _common.write_table(rows, args.out)
    _common.write_summary(args.out, {"model": MODEL, "data": "digits", "dense_accuracy": dense,
                                     "finetune_epochs": cfg["epochs"], "curves": curves}, args)
    _common.done(args.out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
