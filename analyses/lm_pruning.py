"""Perplexity of a small LLaMA-style LM under Global MP vs layer-wise uniform pruning, and the MT that keeps it working.

Reproduces, at toy scale on CPU, what LLM pruning papers report of magnitude
pruning (Sun et al., "Wanda", 2023; Yin et al., "Outlier Weighed Layerwise
Sparsity (OWL)", 2023: LLaMA-7B at 70 % magnitude pruning goes from perplexity
5.68 to 48,419): it holds at 50 %, and perplexity right after pruning climbs
steeply from there, while how the sparsity is spread over layers (global or
uniform) changes the damage. A 2-layer `llama_tiny` (hidden 64, 4 heads) is
trained one epoch on the embedded text (`--data text`: the Python reference
manual's topics, byte tokens), then:

- the collapse report (`ck.analyze` with the text bundle: emptied layers, collapse sparsity, forecast);
- Global MP vs layer-wise uniform magnitude pruning (every prunable layer at the same sparsity) at
  50/70/90 %: test perplexity right after pruning and after a short masked fine-tune (one pass over a
  quarter of the training text, AdamW with warm-up and cosine);
- at 99 %, where Global MP empties layers, an MT sweep (`search_mt`: 0, `ck.suggest_mt(..., data=)`'s
  suggestion and floor, and a log grid up to the largest MT allowed): perplexity after fine-tuning per MT,
  and which MTs count as `trained` (closing half the log gap from the unigram to the dense perplexity,
  docs/language-models.md).

Run: python analyses/lm_pruning.py [--quick]
Writes analyses/results/lm_pruning/{table.csv,table.md,figure.png,summary.json} and mt_search.{csv,md}.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODEL = "llama_tiny"
FULL = dict(text_chars=None, context=128, finetune_fraction=0.25, sparsities=(0.5, 0.7, 0.9), mt_sparsity=0.99,
            mt_grid=4)
QUICK = dict(text_chars=120_000, context=64, finetune_fraction=0.25, sparsities=(0.5, 0.9), mt_sparsity=0.99,
             mt_grid=2)


def uniform_masks(model, names, sparsity: float) -> dict:
    """Layer-wise uniform magnitude pruning: each named weight keeps its largest round((1 - s) n) entries."""
    import torch

    masks = {}
    for name in names:
        w = model.get_parameter(name).detach().abs().flatten()
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[torch.argsort(w, descending=True, stable=True)[:int(round((1 - sparsity) * w.numel()))]] = True
        masks[name] = keep.view(model.get_parameter(name).shape)
    return masks


def main(argv=None) -> int:
    args = _common.parse_args("lm_pruning", __doc__, argv)
    import copy
    import dataclasses

    import numpy as np

    from torch.utils.data import TensorDataset

    import collapsekit as ck
    from collapsekit import data
    from collapsekit.data.tasks import task_of
    from collapsekit.data.text import embedded_corpus, text_bundle
    from collapsekit.pruning.prune import apply_masks
    from collapsekit.training.finetune import finetune
    from collapsekit.training.train import defaults_for, fit, score, seed_everything
    from collapsekit.validation import trainable
    from collapsekit.validation.mtsearch import search_mt
    from collapsekit.views.render import mt_search_to_text, report_to_text

    cfg = QUICK if args.quick else FULL
    bundle = (data.load("text", input_size=cfg["context"]) if cfg["text_chars"] is None
              else text_bundle(embedded_corpus()[:cfg["text_chars"]], "text", cfg["context"]))
    task = task_of(bundle)
    hp = defaults_for(MODEL, task)
    seed_everything(args.seed)
    model = ck.models.create(MODEL, num_classes=bundle.num_classes, in_channels=1, input_size=bundle.input_size,
                             **bundle.model_kwargs())
    fit(model, bundle, epochs=hp["epochs"], lr=hp["lr"], batch_size=hp["batch_size"], device="cpu", seed=args.seed,
        optimizer=hp["optimizer"], weight_decay=hp["weight_decay"], lr_schedule=hp["lr_schedule"], progress=False)
    model.eval()
    unigram, dense = task.baseline(bundle), score(model, bundle.test, task=task)["perplexity"]
    print(f"{MODEL}: dense perplexity {dense:.3f}, unigram perplexity {unigram:.3f}", flush=True)

    an = ck.Analysis(model, bundle.example_input())
    levels = sorted({*cfg["sparsities"], cfg["mt_sparsity"], 0.999})
    report = trainable.report(an, levels, data=bundle)  # levels carry the forecast
    print(report_to_text(report), flush=True)

    # Fine-tuning reads a fixed quarter of the training windows: one short pass per pruned copy.
    n = int(len(bundle.train) * cfg["finetune_fraction"])
    short = dataclasses.replace(bundle, train=TensorDataset(*(t[:n] for t in bundle.train.tensors)))
    tune = dict(lr=hp["lr"], batch_size=hp["batch_size"], optimizer=hp["optimizer"], weight_decay=hp["weight_decay"],
                lr_schedule=hp["lr_schedule"], device="cpu", seed=args.seed, progress=False)
    names = [w.name for w in an.weights]
    rows = []
    for s in cfg["sparsities"]:
        for method in ("global_mp", "uniform"):
            pruned = copy.deepcopy(model)
            masks = ck.prune(pruned, s).masks if method == "global_mp" else uniform_masks(pruned, names, s)
            apply_masks(pruned, masks)
            run = finetune(pruned, masks, short, epochs=1, **tune)
            emptied = sum(not bool(m.any()) for m in masks.values())
            rows.append({"sparsity": s, "method": method, "emptied_layers": emptied,
                         "perplexity_pruned": run.perplexity_before, "perplexity_finetuned": run.perplexity,
                         "trained": task.trained(run.perplexity, unigram, dense)})
            print(f"  {s:g} {method:9s}: perplexity {run.perplexity_before:.2f} pruned -> {run.perplexity:.2f} "
                  f"fine-tuned ({emptied} emptied layers)", flush=True)

    s = cfg["mt_sparsity"]
    suggestion = ck.suggest_mt(an, sparsity=s, data=bundle)
    grid = np.geomspace(1, max(suggestion.max_mt, 1), cfg["mt_grid"])  # log-spaced up to the largest MT allowed
    mts = sorted({0, suggestion.floor, suggestion.mt, *(int(round(v)) for v in grid)})
    result = search_mt(model, short, s, mts=mts, epochs=1, full=True, **{k: v for k, v in tune.items() if k != "progress"})
    print(mt_search_to_text(result), flush=True)
    mt_rows = [{"sparsity": s, "mt": p.mt, "mt_percent": p.percent, "emptied_layers": p.emptied_layers,
                "forecast_trainable": p.forecast_trainable, "perplexity_pruned": p.perplexity_pruned,
                "perplexity_finetuned": p.perplexity, "trained": p.trained} for p in result.points]

    _common.write_table(rows, args.out)
    _common.write_table(mt_rows, args.out, stem="mt_search")
    _common.save_figure(figure(rows, dense, unigram), args.out)
    by = {f"{r['method']}@{r['sparsity']:g}": r for r in rows}
    working = [p.mt for p in result.points if p.trained]
    _common.write_summary(args.out, {
        "model": MODEL, "data": bundle.name, "context": bundle.input_size, "train_windows": len(bundle.train),
        "finetune_windows": n, "dense_perplexity": dense, "unigram_perplexity": unigram,
        "collapse_sparsity": report.collapse_sparsity,
        "emptied_layers": {f"{lv.sparsity:g}": len(lv.emptied_layers) for lv in report.levels},
        "forecast_trainable": {f"{lv.sparsity:g}": lv.forecast.trainable for lv in report.levels},
        "levels": by, "mt_sparsity": s, "suggested_mt": suggestion.mt, "structural_floor": suggestion.floor,
        "mt_points": mt_rows, "best_mt": result.best.mt, "smallest_working_mt": min(working) if working else None,
    }, args)
    _common.done(args.out, args)
    return 0


def figure(rows: list[dict], dense: float, unigram: float):
    """Perplexity (log scale) against sparsity: both methods, right after pruning and fine-tuned."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"global_mp": ("Global MP", "#c0392b"), "uniform": ("layer-wise uniform", "#2980b9")}
    for method, (label, colour) in styles.items():
        pts = [r for r in rows if r["method"] == method]
        xs = [r["sparsity"] for r in pts]
        ax.plot(xs, [r["perplexity_pruned"] for r in pts], ":o", color=colour, label=f"{label}, pruned")
        ax.plot(xs, [r["perplexity_finetuned"] for r in pts], "-o", color=colour, label=f"{label}, fine-tuned")
    ax.axhline(unigram, color="#7f8c8d", ls="--", lw=1, label=f"unigram (best constant) {unigram:.1f}")
    ax.axhline(dense, color="#27ae60", ls="--", lw=1, label=f"dense {dense:.1f}")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("test perplexity (lower is better)")
    ax.set_title("llama_tiny on the embedded text")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
