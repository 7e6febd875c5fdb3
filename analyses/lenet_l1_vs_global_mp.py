"""LeNet-300-100: layer-wise L1 pruning without fine-tuning vs Global MP with fine-tuning.

Reproduces a widely repeated LeNet-300-100 / MNIST pruning study, which prunes
each layer by the same fraction with `torch.nn.utils.prune.l1_unstructured`
and does not fine-tune: accuracy 97.9 % dense, about 81 % at 90 % sparsity and
38 % at 95 % (LITERATURE below). Its conclusion, that such nets cannot be
pruned past ~90 %, comes from the method, not the net: Global MP (one
threshold for all layers, Gupta et al.) leaves the small output layer nearly
dense, and a short masked fine-tune recovers most of the rest. Here the same
784-300-100-10 net is trained on the bundled digits upsampled to 28 x 28 (no
download), then at each sparsity pruned four ways: layer-wise L1 and Global MP
(`ck.prune`), each without and with fine-tuning (`ck.finetune`, masks fixed).
`ck.analyze` adds whether Global MP is predicted to collapse there.

Run: python analyses/lenet_l1_vs_global_mp.py [--quick]
Writes analyses/results/lenet_l1_vs_global_mp/{table.csv,table.md,figure.png,summary.json}.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODEL = "lenet_300_100"
INPUT_SIZE = 28  # 784 inputs, as on MNIST
LITERATURE = {"dataset": "MNIST", "dense": 0.979, "layerwise_l1_no_finetune": {0.9: 0.81, 0.95: 0.38}}
FULL = dict(dense_epochs=20, finetune_epochs=10, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995))
QUICK = dict(dense_epochs=10, finetune_epochs=3, sparsities=(0.5, 0.9, 0.95, 0.99))


def layerwise_l1(model, sparsity: float) -> dict:
    """Masks (name -> bool keep) after `l1_unstructured` prunes `sparsity` of EVERY Linear weight; applied in place."""
    import torch.nn as nn
    from torch.nn.utils import prune as torch_prune

    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            torch_prune.l1_unstructured(module, "weight", amount=sparsity)
            masks[f"{name}.weight"] = module.weight_mask.detach().bool().clone()
            torch_prune.remove(module, "weight")  # back to a plain parameter holding the zeros
    return masks


def main(argv=None) -> int:
    args = _common.parse_args("lenet_l1_vs_global_mp", __doc__, argv)
    import copy

    import collapsekit as ck
    from collapsekit import data
    from collapsekit.training.train import defaults_for, evaluate

    cfg = QUICK if args.quick else FULL
    bundle = data.load("digits", input_size=INPUT_SIZE)
    model, dense = _common.train_on_digits(MODEL, bundle, cfg["dense_epochs"], args.seed)
    print(f"{MODEL} on digits {INPUT_SIZE}x{INPUT_SIZE}: dense accuracy {dense:.4f}", flush=True)
    report = ck.analyze(model, bundle.example_input(), sparsities=cfg["sparsities"], name=MODEL)
    hp = defaults_for(MODEL)
    tune = dict(lr=hp["lr"], batch_size=hp["batch_size"], device="cpu", seed=args.seed, progress=False)

    rows = []
    for s in cfg["sparsities"]:
        row = {"sparsity": s}
        for method in ("layerwise_l1", "global_mp"):
            net = copy.deepcopy(model)
            masks = layerwise_l1(net, s) if method == "layerwise_l1" else ck.prune(net, s).masks
            kept = {n: int(m.sum()) for n, m in masks.items()}
            row[f"{method}_no_finetune"] = evaluate(net, bundle.test, "cpu")
            row[f"{method}_finetuned"] = ck.finetune(net, masks, bundle, cfg["finetune_epochs"], **tune).accuracy
            row[f"{method}_fc3_kept"] = kept["fc3.weight"]
        level = report.at(s)
        row["global_mp_predicted"] = "collapsed" if level.collapsed else "alive"
        row["global_mp_emptied"] = len(level.emptied_layers)
        rows.append(row)
        print(f"  {s:g}: L1 {row['layerwise_l1_no_finetune']:.4f} -> {row['layerwise_l1_finetuned']:.4f} tuned; "
              f"Global MP {row['global_mp_no_finetune']:.4f} -> {row['global_mp_finetuned']:.4f} tuned "
              f"({row['global_mp_predicted']})", flush=True)
    _common.write_table(rows, args.out)
    _common.save_figure(figure(rows, dense, report.collapse_sparsity, cfg["finetune_epochs"]), args.out)
    _common.write_summary(args.out, {"model": MODEL, "data": f"digits {INPUT_SIZE}x{INPUT_SIZE}",
                                     "dense_accuracy": dense, "collapse_sparsity": report.collapse_sparsity,
                                     "finetune_epochs": cfg["finetune_epochs"], "literature": {
                                         **LITERATURE, "layerwise_l1_no_finetune": {
                                             f"{k:g}": v for k, v in LITERATURE["layerwise_l1_no_finetune"].items()}},
                                     "rows": rows}, args)
    _common.done(args.out, args)
    return 0


def figure(rows: list[dict], dense: float, collapse: float, epochs: int):
    """Accuracy against sparsity for the four prune / fine-tune combinations, the MNIST study's points starred."""
    from collapsekit.views import plots

    fig = plots.new_figure(7.0, 4.2)
    with plots.style():
        ax = fig.add_subplot()
    s = [r["sparsity"] for r in rows]
    styles = {"layerwise_l1_no_finetune": ("layer-wise L1, no fine-tuning", "#7f8c8d", "o", ":"),
              "layerwise_l1_finetuned": (f"layer-wise L1 + {epochs} ep. fine-tuning", "#7f8c8d", "o", "-"),
              "global_mp_no_finetune": ("Global MP, no fine-tuning", plots.BYPASSABLE, "s", ":"),
              "global_mp_finetuned": (f"Global MP + {epochs} ep. fine-tuning", plots.BYPASSABLE, "s", "-")}
    for key, (label, colour, marker, ls) in styles.items():
        ax.plot(s, [r[key] for r in rows], ls=ls, marker=marker, color=colour, label=label, gid=key)
    lit = LITERATURE["layerwise_l1_no_finetune"]
    ax.scatter(list(lit), list(lit.values()), marker="*", s=160, color="#e67e22", zorder=4,
               label=f"layer-wise L1, no fine-tuning, as reported on {LITERATURE['dataset']}")
    ax.axhline(dense, color="black", lw=0.8, ls="--", label=f"dense {dense:.3f}")
    if collapse < 1.0:
        ax.axvline(collapse, color=plots.COLLAPSED, lw=1, label=f"Global MP collapse sparsity {collapse:.4f}")
    plots.logit_sparsity_axis(ax, "x", 0.4, 0.998)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("sparsity (every layer for L1; global for Global MP)")
    ax.set_ylabel("test accuracy")
    ax.set_title("LeNet-300-100 on digits: layer-wise L1 vs Global MP", fontsize=11)
    ax.legend(fontsize=7, loc="lower left")
    return fig


if __name__ == "__main__":
    sys.exit(main())
