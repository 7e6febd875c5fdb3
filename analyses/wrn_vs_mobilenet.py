"""WRN vs MobileNet under Global MP: residual bypasses survive sparsities at which bottlenecks collapse the net.

Reproduces the contrast Gupta et al. ("Is Complexity Required for Neural
Network Pruning? A Case Study on Global Magnitude Pruning") draw between
WideResNet and MobileNet-V1: in a WRN most convs sit inside residual blocks
whose identity shortcut carries the signal around an emptied layer, so Global
MP can go very sparse before the network collapses; in MobileNet every layer is
a bottleneck (on every input-to-output path), so the first layer whose kept
paths all die makes the output constant and Minimum Threshold (MT) becomes
necessary. Here both nets (WRN-16-2 and MobileNet-V1 x0.25, small enough for
a CPU) are trained briefly on the bundled digits (upsampled to 16 x 16), analysed with `ck.analyze`
(collapse sparsity, bypassable vs bottleneck layers, emptied layers) and, at a
sparsity between the two collapse sparsities, really pruned and fine-tuned with
`ck.validate` to show the prediction holds: MobileNet stays at chance, WRN
trains.

Run: python analyses/wrn_vs_mobilenet.py [--quick]
Writes analyses/results/wrn_vs_mobilenet/{table.csv,table.md,validation.csv,validation.md,figure.png,summary.json}.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

INPUT_SIZE = 16
MODELS = {  # name -> (label, zoo kwargs, dense epochs full/quick, lr)
    "wrn_16_2": ("WRN-16-2", {}, (4, 2), 0.05),
    "mobilenet_v1": ("MobileNet-V1 x0.25", {"width_mult": 0.25}, (8, 4), 0.1),
}


def main(argv=None) -> int:
    args = _common.parse_args("wrn_vs_mobilenet", __doc__, argv)
    import torch

    import collapsekit as ck
    from collapsekit import data
    from collapsekit.views import plots
    from collapsekit.validation.validate import validate

    torch.manual_seed(args.seed)
    # 16 x 16 (upsampled from 8 x 8): MobileNet's four stride-2 stages leave it 1 x 1 at the end.
    bundle = data.load("digits", input_size=INPUT_SIZE)
    reports, models, rows, accuracy = {}, {}, [], {}
    for name, (label, kwargs, (full, quick), lr) in MODELS.items():
        model, acc = _common.train_on_digits(name, bundle, quick if args.quick else full, args.seed, lr=lr, **kwargs)
        report = ck.analyze(model, bundle.example_input(), name=label)
        reports[label], models[label], accuracy[label] = report, model, acc
        first = report.first_bottleneck
        s99 = report.at(0.99)
        rows.append({
            "model": label, "dense_accuracy": acc, "prunable_weights": report.total, "layers": len(report.layers),
            "bypassable": sum(lay.bypassable for lay in report.layers),
            "bottleneck": sum(not lay.bypassable for lay in report.layers),
            "collapse_sparsity": report.collapse_sparsity,
            "first_bottleneck": first.name if first else "-",
            "first_bottleneck_critical": first.critical_sparsity if first else 1.0,
            "emptied_at_0.99": len(s99.emptied_layers), "collapsed_at_0.99": s99.collapsed,
            "effective_at_0.99": s99.effective_sparsity,
        })
        print(f"{label}: dense accuracy {acc:.4f}, collapse sparsity {report.collapse_sparsity:.6f}, "
              f"{rows[-1]['bypassable']}/{rows[-1]['layers']} layers bypassable", flush=True)
    _common.write_table(rows, args.out)

    # Prune + fine-tune at a level where both nets live and at one between the two collapse sparsities
    # (a quarter of the way from the lower to the higher on a log scale of the weights left).
    wrn, mob = reports["WRN-16-2"], reports["MobileNet-V1 x0.25"]
    lo, hi = sorted([mob.collapse_sparsity, wrn.collapse_sparsity])
    between = round(float(1 - (1 - lo) ** 0.75 * (1 - hi) ** 0.25), 3)
    levels = sorted({round(min(0.8, lo - 0.1), 2), between})
    val_rows, validated = [], {}
    for label, model in models.items():
        epochs = 1 if args.quick else 3
        report = validate(model, bundle, levels, epochs=epochs, lr=0.05, device="cpu", name=label)
        validated[label] = report
        for lv in report.levels:
            val_rows.append({"model": label, "sparsity": lv.sparsity,
                             "predicted": "collapsed" if lv.predicted_collapsed else "alive",
                             "emptied_layers": len(lv.emptied_layers), "accuracy_pruned": lv.accuracy_pruned,
                             "accuracy_finetuned": lv.accuracy, "observed": "collapsed" if lv.observed_collapsed
                             else "alive", "agree": lv.agree})
    _common.write_table(val_rows, args.out, "validation")

    fig = plots.compare_reports(reports)
    _common.save_figure(fig, args.out)
    _common.save_figure(plots.critical_sparsity_plot(mob), args.out, "critical_mobilenet")
    _common.save_figure(plots.critical_sparsity_plot(wrn), args.out, "critical_wrn")
    summary = {
        "models": {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in rows},
        "between_sparsity": between,
        "validation": {label: {f"{lv.sparsity:g}": {"predicted_collapsed": lv.predicted_collapsed,
                                                      "accuracy": lv.accuracy, "agree": lv.agree}
                               for lv in rep.levels} for label, rep in validated.items()},
    }
    _common.write_summary(args.out, summary, args)
    for r in val_rows:
        print(f"  {r['model']} at {r['sparsity']:g}: predicted {r['predicted']}, fine-tuned accuracy "
              f"{r['accuracy_finetuned']:.4f}, observed {r['observed']}")
    _common.done(args.out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
