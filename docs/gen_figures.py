"""Writes the figures of docs/concepts.md into docs/figures/ with `collapsekit.views.plots` (about a minute on a CPU).

A WRN-16-2 (2 epochs) and a MobileNet-V1 x0.25 (4 epochs) are trained on digits
upsampled to 16x16, analysed with `ck.analyze`, and drawn; MobileNet's MT
figure uses `ck.suggest_mt` at its first collapsed level. Small PNGs (dpi 72)
so they can live in git: run `python docs/gen_figures.py` to refresh them.
"""
from __future__ import annotations

import sys
from pathlib import Path

FIGURES = Path(__file__).resolve().parent / "figures"
DPI = 72


def main() -> int:
    import collapsekit as ck
    from collapsekit import data
    from collapsekit.views import plots
    from collapsekit.training.train import fit, seed_everything

    bundle = data.load("digits", input_size=16)
    x = bundle.example_input()
    reports, models = {}, {}
    for label, name, kwargs, epochs, lr in (("WRN-16-2", "wrn_16_2", {}, 2, 0.05),
                                            ("MobileNet-V1 x0.25", "mobilenet_v1", {"width_mult": 0.25}, 4, 0.1)):
        seed_everything(0)
        model = ck.models.create(name, num_classes=10, in_channels=1, input_size=16, **kwargs)
        fit(model, bundle, epochs=epochs, lr=lr, batch_size=32, device="cpu", seed=0, progress=False)
        models[label], reports[label] = model, ck.analyze(model, x, name=label)
    wrn, mob = reports["WRN-16-2"], reports["MobileNet-V1 x0.25"]
    s = next(lv.sparsity for lv in mob.levels if lv.collapsed)
    suggestion = ck.suggest_mt(models["MobileNet-V1 x0.25"], x, s)
    with_mt = ck.analyze(models["MobileNet-V1 x0.25"], x, sparsities=[s], mt=suggestion.mt, name=mob.model)
    figures = {
        "heatmap_mobilenet": plots.sparsity_heatmap(mob),
        "heatmap_wrn": plots.sparsity_heatmap(wrn),
        "critical_mobilenet": plots.critical_sparsity_plot(mob),
        "critical_wrn": plots.critical_sparsity_plot(wrn),
        "effective_mobilenet": plots.effective_vs_nominal(mob),
        "mt_effect_mobilenet": plots.mt_effect(mob, with_mt, s),
        "compare": plots.compare_reports(reports),
    }
    for stem, fig in figures.items():
        path = plots.save(fig, FIGURES / stem, formats=("png",), dpi=DPI)[0]
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    print(f"collapse sparsity: WRN-16-2 {wrn.collapse_sparsity:.6f}, MobileNet-V1 x0.25 {mob.collapse_sparsity:.6f}; "
          f"MT figure at {s:g} with suggest_mt's MT {suggestion.mt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
