"""Does the trainability forecast (one forward and backward pass at the pruned weights) predict masked fine-tuning,
on architectures it was not calibrated on?

Reproduces the finding behind collapsekit's data-aware tier, after Lee et al.
("A Signal Propagation Perspective for Pruning Neural Networks at
Initialization", 2020): a kept path is not enough to train; how much signal
and gradient the pruned weights still propagate decides it, and can be
measured before any fine-tuning, and the first steps of the fine-tune itself (the probe) say more. Eleven
small classifier families (plain MLPs with and without batch norm, a wide shallow and a deep narrow MLP, plain,
batch-norm and narrow batch-norm VGG-style conv stacks, a LeNet-style net, a residual net with a narrow head, a
depthwise-separable net and a one-block transformer; analyses/_nets.py) are trained densely on digits for a
short and a normal time (Adam 3 and 12 epochs; SGD lr 0.05 2 and 10 epochs, the "family@sgd" runs), and on
synthetic image and sequence clusters; three small causal LMs (the zoo's `llama_tiny`, a GPT-2 and an OPT from
`transformers` configs) are trained on the embedded text (`--data text`) for 1 epoch with the LM task's
defaults. Each is pruned with Global MP at sparsities approaching its collapse and at sweeps of Minimum
Thresholds, measured (`collapsekit.validation.forecast`, probe included for classifiers), and fine-tuned with
masks: classifiers 3 epochs (validate's defaults), language models 1 epoch with the LM defaults (AdamW,
warm-up + cosine), labelled by the task's `trained` (accuracy above chance + 0.1; an LM closing half the
log-perplexity gap from unigram to dense). One model per task is fitted, and scored
LEAVE-ONE-ARCHITECTURE-OUT: each family (all its trainings) is scored by a model fitted on the others only, and
so is the data-aware suggestion. The models shipped in collapsekit are the fits on every family. Two held-out
sets are never fitted on: five zoo nets (HELD_OUT) and, added last and scored once after every choice was made,
the three digits nets of benchmarks/bench_mt_search.py trained as it trains them (HELD_OUT_NEW), and three
families written for the check (HELD_OUT_FRESH, `_nets.FRESH`), scored once after the suggestion rule was
chosen, and three more (HELD_OUT_FRESH2, `_nets.FRESH2`) written and fine-tuned before the probe was made
adaptive and scored once after. Only prunes
below the structural collapse count: above it structure decides.

Run: python analyses/trainability_forecast.py [--quick] [--refit]
The runs (every prune's evidence and fine-tuned accuracy) are kept in analyses/forecast_runs.json (committed):
a rerun only measures and fine-tunes what is missing, and `--refit` re-measures the evidence from the cached
dense weights (analyses/results/trainability_forecast/dense/) without fine-tuning again. Writes
analyses/results/trainability_forecast/{table.csv,table.md,loao.md,suggestion.csv,summary.json,figure.png}.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _nets  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_mt_search  # noqa: E402

EPOCHS, LR, BATCH = 3, 0.01, 64  # validate's fine-tuning defaults
MARGIN = 0.1  # validate's: trained = accuracy > chance + margin
RUNS_FILE = Path(__file__).resolve().parent / "forecast_runs.json"

# (architecture, data, dense epochs): digits for a short and a normal time, synthetic clusters for variety.
RUNS = [(a, "digits", e) for a in _nets.ARCHITECTURES if "@" not in a for e in (3, 12)] + [
    (a, "synthetic", 3) for a in ("mlp", "cnn", "vgg_bn", "resnet", "dwsep")] + [
    (a, "synthetic_seq", 3) for a in ("transformer", "mlp", "mlp_bn")] + [
    (a, "digits", e) for a in _nets.ARCHITECTURES if "@" in a for e in (2, 10)]  # SGD-trained, short and normal
# Causal LMs on the embedded text (context 128), dense-trained one epoch (the LM default); every prune fine-tuned
# LM_EPOCHS with the LM defaults, as `collapsekit validate --data text --epochs 1` does.
LM_RUNS = [(a, "text", 1) for a in ("llama_tiny", *_nets.LM_ARCHITECTURES)]
LM_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)  # from holding the language to losing it
LM_SWEEPS = (0.99,)  # where Global MP empties attention layers of llama_tiny
LM_EPOCHS = 1
LM_KEYS = ("task", "perplexity", "perplexity_before", "unigram_perplexity", "dense_perplexity")  # table columns
QUICK_RUNS = [("mlp", "digits", 2), ("cnn", "digits", 2)]
# Held out of every fit: zoo nets (their own families' dense training), scored by the model fitted on all RUNS.
HELD_OUT = [("lenet5", "digits", 2), ("lenet5", "digits", 8), ("lenet_300_100", "digits", 2),
            ("mobilenet_v1", "digits", 3), ("resnet20", "digits", 1)]
ZOO_KWARGS = {"mobilenet_v1": {"width_mult": 0.25}}
# Held out of every fit and of every choice made on the runs above (added last, scored once): the three digits nets
# of benchmarks/bench_mt_search.py (issue 21's own held-out nets), trained as it trains them (SGD lr 0.05, seed 0)
# for a short and a normal time.
NEW_NETS = {f"heldout_{name}": factory for name, factory in bench_mt_search.NETS.items()}
HELD_OUT_NEW = [(a, "digits", e) for a in NEW_NETS for e in (2, 10)]
# And three families written for this check (`_nets.FRESH`: LayerNorm + GELU MLP, conv + dropout, a residual net with
# a projection shortcut and no narrow head), added after the suggestion rule was chosen and scored once.
FRESH_NETS = {f"fresh_{name}": factory for name, factory in _nets.FRESH.items()}
HELD_OUT_FRESH = [(a, "digits", e) for a in FRESH_NETS for e in (2, 10)]
# A second fresh set (`_nets.FRESH2`: GroupNorm conv net, inverted-residual net, gated (SwiGLU) MLP), written and
# fine-tuned before the probe was extended and scored once after every choice of that change.
FRESH2_NETS = {f"fresh2_{name}": factory for name, factory in _nets.FRESH2.items()}
HELD_OUT_FRESH2 = [(a, "digits", e) for a in FRESH2_NETS for e in (2, 10)]
HELD_NETS = {**NEW_NETS, **FRESH_NETS, **FRESH2_NETS}


def level_grid(collapse: float, quick: bool, lm: bool = False) -> list[float]:
    """Sparsities to validate: fixed ones and ones approaching the collapse sparsity from below (0.9.. if none);
    for a language model LM_LEVELS below its collapse."""
    if lm:
        return [s for s in LM_LEVELS if s < collapse]
    if collapse >= 1.0:
        return [0.95, 0.99] if quick else [0.9, 0.95, 0.98, 0.99, 0.995]
    fixed = (0.5,) if quick else (0.5, 0.8, 0.9, 0.95)
    near = (4, 1.4) if quick else (8, 4, 2, 1.4, 1.1)
    near = {round(1 - (1 - collapse) * f, 5) for f in near}
    return sorted({s for s in (*fixed, *near) if 0.3 <= s < collapse})


def sweep_levels(collapse: float, quick: bool, lm: bool = False) -> list[float]:
    """Sparsities of the MT sweeps: where MT matters, just below the collapse (an LM's: LM_SWEEPS)."""
    if lm:
        return [s for s in LM_SWEEPS if s < collapse]
    if collapse >= 1.0:
        return [0.99] if quick else [0.99, 0.995]
    return [s for s in (round(1 - (1 - collapse) * f, 5) for f in ((1.5,) if quick else (3.0, 1.3))) if s >= 0.3]


class Runs:
    """Every measured prune, kept in RUNS_FILE keyed by run, sparsity and MT (fine-tuning is deterministic)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def save(self) -> None:
        from collapsekit.files.atomic import atomic_write_text

        atomic_write_text(self.path, json.dumps(self.data, indent=0, sort_keys=True) + "\n")

    def outcome(self, key: str, model, masks, bundle) -> dict:
        """{"accuracy", "accuracy_before"} (+ "perplexity", "perplexity_before" for an LM) of masked fine-tuning
        (`finetune_args`), fine-tuned on the first ask."""
        entry = self.data.setdefault(key, {})
        if "accuracy" not in entry:
            import collapsekit as ck
            from collapsekit.pruning.prune import apply_masks

            net = copy.deepcopy(model)
            apply_masks(net, masks)
            bundle, kwargs = finetune_args(bundle)
            run = ck.finetune(net, masks, bundle, device="cpu", seed=0, progress=False, **kwargs)
            entry.update(accuracy=run.accuracy, accuracy_before=run.accuracy_before)
            if run.perplexity is not None:
                entry.update(perplexity=run.perplexity, perplexity_before=run.perplexity_before)
            self.save()
        return entry


def finetune_args(bundle):
    """(bundle to fine-tune on, `ck.finetune` keywords): validate's 3 epochs for a classifier; for a causal LM
    the LM family's defaults for LM_EPOCHS (`collapsekit validate --data text --epochs 1`)."""
    from collapsekit.data.tasks import task_of
    from collapsekit.training.train import defaults_for

    task = task_of(bundle)
    if task.name == "classification":
        return bundle, dict(epochs=EPOCHS, lr=LR, batch_size=BATCH)
    hp = defaults_for("", task)
    return bundle, dict(epochs=LM_EPOCHS, lr=hp["lr"], batch_size=hp["batch_size"], optimizer=hp["optimizer"],
                        weight_decay=hp["weight_decay"], lr_schedule=hp["lr_schedule"])


def load_data(name: str):
    from collapsekit import data

    return data.load(name)


def dense_model(arch: str, data: str, epochs: int, bundle, out: Path):
    """(model, test accuracy): trained once (seed 0), then read from OUT/dense/ (safetensors)."""
    from safetensors.torch import load_file, save_file

    from collapsekit.training.train import evaluate, fit, seed_everything

    import collapsekit as ck

    image = bundle.train.tensors[0].ndim == 4
    path = out / "dense" / f"{arch}_{data}_e{epochs}.safetensors"
    seed_everything(0)
    if bundle.task == "causal_lm":
        return lm_model(arch, epochs, bundle, path)
    if arch in HELD_NETS:  # a new held-out net, trained as benchmarks/bench_mt_search.py trains it
        model = HELD_NETS[arch](bundle.num_classes, bundle.in_channels, bundle.input_size)
        if path.exists():
            model.load_state_dict(load_file(str(path)))
            return model.eval(), evaluate(model, bundle.test)
        seed_everything(0)
        result = fit(model, bundle, epochs=epochs, lr=0.05, batch_size=64, device="cpu", seed=0, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return model.eval(), result.accuracy
    if arch not in _nets.ARCHITECTURES:  # a zoo net, trained with its family's defaults
        model = ck.models.create(arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                                 input_size=bundle.input_size, **ZOO_KWARGS.get(arch, {}))
        if path.exists():
            model.load_state_dict(load_file(str(path)))
            return model.eval(), evaluate(model, bundle.test)
        model, acc = _common.train_on_digits(arch, bundle, epochs, 0, **ZOO_KWARGS.get(arch, {}))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return model, acc
    model = _nets.create(arch, bundle, image)
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval(), evaluate(model, bundle.test)
    _, _, optimizer, lr = _nets.ARCHITECTURES[arch]
    result = fit(model, bundle, epochs=epochs, lr=lr, batch_size=64, device="cpu", seed=0, optimizer=optimizer,
                 weight_decay=0.0 if optimizer == "adam" else 5e-4, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval(), result.accuracy


def lm_model(arch: str, epochs: int, bundle, path: Path):
    """(causal LM, test accuracy): zoo or `_nets.LM_ARCHITECTURES` model trained with the LM task's defaults."""
    from safetensors.torch import load_file, save_file

    import collapsekit as ck
    from collapsekit.data.tasks import task_of
    from collapsekit.training.train import defaults_for, evaluate, fit

    kw = bundle.model_kwargs()
    model = (_nets.LM_ARCHITECTURES[arch](kw["vocab_size"], kw["context_length"]) if arch in _nets.LM_ARCHITECTURES
             else ck.models.create(arch, num_classes=bundle.num_classes, in_channels=1, input_size=bundle.input_size,
                                   **kw))
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval(), evaluate(model, bundle.test, task=task_of(bundle))
    hp = defaults_for(arch, task_of(bundle))
    result = fit(model, bundle, epochs=epochs, lr=hp["lr"], batch_size=hp["batch_size"], device="cpu", seed=0,
                 optimizer=hp["optimizer"], weight_decay=hp["weight_decay"], lr_schedule=hp["lr_schedule"],
                 progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path))  # clone: tied heads
    return model.eval(), result.accuracy


def collect(arch: str, data: str, epochs: int, runs: Runs, quick: bool, out: Path, refit: bool,
            split: str = "calibration") -> list[dict]:
    """Rows for one dense model: every level and MT-sweep point, evidence beside outcome."""
    import collapsekit as ck
    from collapsekit.validation import trainable

    from collapsekit.data.tasks import task_of
    from collapsekit.training.train import score

    bundle = load_data(data)
    task = task_of(bundle)
    lm = task.name == "causal_lm"
    model, dense = dense_model(arch, data, epochs, bundle, out)
    an = ck.Analysis(model, bundle.example_input(), name=arch)
    collapse = an.collapse_sparsity()
    tag = f"{arch}|{data}|e{epochs}"
    base = dict(split=split, arch=arch, data=data, dense_epochs=epochs, dense_accuracy=dense, collapse_sparsity=collapse,
                chance=1.0 / bundle.num_classes, task=task.name)
    if lm:
        base.update(unigram_perplexity=task.baseline(bundle),
                    dense_perplexity=score(model, bundle.test, task=task)["perplexity"])
    rows = []

    def point(kind: str, s: float, mt: int, floor: int = 0) -> dict:
        a = an.with_mt(mt)
        k = a.count(s)
        masks = a.masks(k=k)
        key = f"{tag}|{s:.6g}|{mt}"
        entry = runs.outcome(key, model, masks, bundle)
        stale = not lm and entry.get("evidence") and "probe_extended" not in entry["evidence"]  # an older probe's
        if "collapsed" not in entry or "evidence" not in entry or refit or stale:
            collapsed = a.collapsed_at(k)
            started = time.perf_counter()
            f = trainable.forecast(a, bundle, k, collapsed, probe=not lm)  # an LM's model reads the one pass
            entry.update(collapsed=collapsed, evidence=dict(f.evidence), forecast_seconds=time.perf_counter() - started,
                         prune="-".join(str(int(m.sum())) for m in masks.values()))
            runs.save()
        return {**base, "key": key, "kind": kind, "sparsity": s, "mt": mt, "floor": floor, **entry}

    for s in level_grid(collapse, quick, lm):
        rows.append(point("level", s, 0))
    for s in sweep_levels(collapse, quick, lm):
        structural = ck.suggest_mt(an, sparsity=s)
        for mt in trainable.sweep_mts(an, structural):
            rows.append(point(f"mt@{s:.6g}", s, mt, structural.mt))
    print(f"  {tag}: dense {dense:.3f}, collapse {collapse:.4f}, {len(rows)} prunes", flush=True)
    return rows


def distinct(rows: list[dict]) -> list[dict]:
    """Rows not decided by structure (below collapse), one per distinct prune (same kept counts count once)."""
    seen, out = set(), []
    for r in rows:
        key = (r["arch"], r["data"], r["dense_epochs"], r["sparsity"], r["prune"])
        if not r["collapsed"] and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def trained(r: dict) -> bool:
    """The task's `trained` (collapsekit.data.tasks): accuracy above chance + MARGIN; an LM closing half the
    log-perplexity gap from the unigram to its dense model."""
    if r.get("task") == "causal_lm":
        from collapsekit.data.tasks import TASKS

        return TASKS["causal_lm"].trained(r["perplexity"], r["unigram_perplexity"], r["dense_perplexity"])
    return r["accuracy"] > r["chance"] + MARGIN


class Rule:
    """One fitted model pair per task, applied as the Forecaster does: a classifier's probe model decides wherever the
    probe ran (in PROBE_BAND), an LM's one-pass model always (`forecast.models_for`)."""

    def __init__(self, models: dict):
        self.models = models  # task -> (one-pass model, probe model or None)

    @classmethod
    def fitted(cls, rows: list[dict]) -> "Rule":
        from collapsekit.validation import forecast

        models = {}
        for task in sorted({r.get("task", "classification") for r in rows}):
            mine = [r for r in rows if r.get("task", "classification") == task]
            labels = [trained(r) for r in mine]
            one = forecast.fit([r["evidence"] for r in mine], labels,
                               forecast.LM_FEATURES if task == "causal_lm" else forecast.FEATURES)
            probe = None if task == "causal_lm" else forecast.fit([r["evidence"] for r in mine], labels,
                                                                   forecast.PROBE_FEATURES)
            models[task] = (one, probe)
        return cls(models)

    @property
    def one(self):
        return self.models["classification"][0]

    @property
    def probe(self):
        return self.models["classification"][1]

    def probability(self, evidence: dict, probe: bool = True, task: str | None = None) -> float:
        from collapsekit.validation import forecast

        if not evidence:  # structurally collapsed
            return 0.0
        one, probed = self.models[task or "classification"]
        p = one.probability(evidence)
        lo, hi = forecast.PROBE_BAND
        if probe and probed is not None and lo <= p <= hi and "probe_steps" in evidence:
            p = probed.probability(evidence)
        return p


def family(arch: str) -> str:
    """The architecture a run's net is built from: 'cnn@sgd' (cnn trained another way) is family 'cnn'."""
    return arch.split("@")[0]


def loao(rows: list[dict]) -> dict:
    """Leave-one-architecture-out: per architecture family, agreement of the rule fitted on every other family of the
    same task (one pass alone, and with the probe wherever it ran)."""
    alive = distinct(rows)
    per, rules = {}, {}
    for arch in sorted({family(r["arch"]) for r in alive}):
        rule = rules[arch] = Rule.fitted([r for r in alive if family(r["arch"]) != arch])
        test = [r for r in alive if family(r["arch"]) == arch]
        one = [(rule.probability(r["evidence"], False, r["task"]) >= 0.5) == trained(r) for r in test]
        both = [(rule.probability(r["evidence"], True, r["task"]) >= 0.5) == trained(r) for r in test]
        probed = sum("probe_steps" in r["evidence"] and r["task"] != "causal_lm" for r in test)
        per[arch] = {"counted": len(test), "agree_one_pass": sum(one), "agree": sum(both), "probed": probed}
    total = sum(c["counted"] for c in per.values())
    return {"per_architecture": per, "counted": total, "rules": rules,
            "agreement_one_pass": sum(c["agree_one_pass"] for c in per.values()) / max(1, total),
            "agreement": sum(c["agree"] for c in per.values()) / max(1, total),
            "probed": sum(c["probed"] for c in per.values())}


def by_task(rows: list[dict], per_architecture: dict) -> dict:
    """LOAO agreement per task (classification, causal_lm): the per-architecture counts added up by task."""
    task = {family(r["arch"]): r.get("task", "classification") for r in rows}
    out = {}
    for arch, c in per_architecture.items():
        g = out.setdefault(task[arch], {"counted": 0, "agree_one_pass": 0, "agree": 0, "probed": 0})
        for k in g:
            g[k] += c[k]
    for g in out.values():
        g["agreement_one_pass"] = g["agree_one_pass"] / max(1, g["counted"])
        g["agreement"] = g["agree"] / max(1, g["counted"])
    return dict(sorted(out.items()))


def suggestions(rows: list[dict], rules: dict | None, rule: Rule | None = None) -> list[dict]:
    """Per MT sweep: the data-aware suggestion (by the rule fitted without the sweep's architecture, from `rules`,
    else `rule`) against the best MT fine-tuned."""
    from collapsekit.validation import trainable

    sweeps = {}
    for r in rows:  # classifiers' sweeps: an LM's best MT is its lowest perplexity, not comparable to 90 % of accuracy
        if r["kind"].startswith("mt@") and r.get("task", "classification") == "classification":
            sweeps.setdefault((r["arch"], r["data"], r["dense_epochs"], r["sparsity"]), []).append(r)
    out = []
    for (arch, data, epochs, s), pts in sweeps.items():
        judge = rule if rules is None else rules[family(arch)]
        floor = pts[0]["floor"]  # the structural floor: MT 0 below it is the collapse baseline, not a candidate
        cands = []
        for r in sorted(pts, key=lambda r: r["mt"]):
            if r["mt"] >= floor:
                p = judge.probability(r["evidence"])
                loss = r["evidence"].get(trainable.SHORT_LOSS)  # what `trainable_mt` ranks by
                cands.append({"mt": r["mt"], "probability": p, "trainable": p >= 0.5,
                              **({} if loss is None else {trainable.SHORT_LOSS: loss})})
        pick = trainable.choose(cands)
        by_mt = {r["mt"]: r for r in pts}
        best = max(pts, key=lambda r: (r["accuracy"], -r["mt"]))
        acc = by_mt[pick["mt"]]["accuracy"]
        out.append({"arch": arch, "data": data, "dense_epochs": epochs, "sparsity": s, "floor_mt": floor,
                    "suggested_mt": pick["mt"],
                    "suggested_probability": pick["probability"], "suggested_accuracy": acc, "best_mt": best["mt"],
                    "best_accuracy": best["accuracy"], "some_mt_trains": trained(best),
                    "within_90": acc >= 0.9 * best["accuracy"]})
    return out


def main(argv=None) -> int:
    args = _common.parse_args("trainability_forecast", __doc__, argv, {
        "--refit": "measure the evidence again from the cached dense weights (no fine-tuning)",
        "--no-new": "leave out the new held-out nets (HELD_OUT_NEW, HELD_OUT_FRESH): what the choices were made on"})
    import torch

    torch.set_num_threads(1)
    runs = Runs(args.out / "forecast_runs.json" if args.quick else RUNS_FILE)
    rows = []
    for arch, data, epochs in (QUICK_RUNS if args.quick else RUNS + LM_RUNS):
        rows += collect(arch, data, epochs, runs, args.quick, args.out, args.refit)
    for arch, data, epochs in (() if args.quick else HELD_OUT):
        rows += collect(arch, data, epochs, runs, args.quick, args.out, args.refit, "held-out")
    for arch, data, epochs in (() if args.quick or args.no_new else HELD_OUT_NEW):
        rows += collect(arch, data, epochs, runs, args.quick, args.out, args.refit, "held-out-new")
    for arch, data, epochs in (() if args.quick or args.no_new else HELD_OUT_FRESH):
        rows += collect(arch, data, epochs, runs, args.quick, args.out, args.refit, "held-out-fresh")
    for arch, data, epochs in (() if args.quick or args.no_new else HELD_OUT_FRESH2):
        rows += collect(arch, data, epochs, runs, args.quick, args.out, args.refit, "held-out-fresh2")
    report(rows, args)
    return 0


def report(rows: list[dict], args) -> dict:
    """Tables, LOAO agreement, suggestion hit rates, the rule fitted on everything, and the summary; held-out
    rows (each held-out split on its own) are scored by the rule fitted on every calibration architecture and
    never fitted on."""
    held_out = [r for r in rows if r["split"] != "calibration"]
    rows = [r for r in rows if r["split"] == "calibration"]
    held = loao(rows)
    alive = distinct(rows)
    everything = Rule.fitted(alive)

    def prob(rule, r):
        return rule.probability(r["evidence"], True, r.get("task"))

    unseen = {}
    for split in sorted({r["split"] for r in held_out}):
        mine = [r for r in held_out if r["split"] == split]
        per = {}
        for r in distinct(mine):
            c = per.setdefault(f"{r['arch']} ({r['dense_epochs']} epochs)", {"agree": 0, "counted": 0})
            c["agree"] += (prob(everything, r) >= 0.5) == trained(r)
            c["counted"] += 1
        sugs = suggestions(mine, None, everything)
        unseen[split] = {"agreement": sum(c["agree"] for c in per.values()) / max(1, len(distinct(mine))),
                         "agree": sum(c["agree"] for c in per.values()), "counted": len(distinct(mine)),
                         "per_run": per, "suggestion": hit(sugs), "sweeps": sugs}
    in_sample = sum((prob(everything, r) >= 0.5) == trained(r) for r in alive) / max(1, len(alive))
    shown = (*everything.one.features, "accuracy_kept", "probe_loss_kept", "probe_accuracy_kept")
    table = [dict.fromkeys(LM_KEYS) | {k: v for k, v in r.items() if k != "evidence"} | {
        "trained": trained(r), "probability_loao": prob(held["rules"][family(r["arch"])], r)
        if r["split"] == "calibration" and family(r["arch"]) in held["rules"] else prob(everything, r),
        "probability": prob(everything, r), **{f"ev_{k}": r["evidence"].get(k, 0.0) for k in shown}}
        for r in rows + held_out]
    _common.write_table(table, args.out)
    sug_loao, sug_in = suggestions(rows, held["rules"]), suggestions(rows, None, everything)
    for split, u in unseen.items():
        if u["sweeps"]:
            _common.write_table(u.pop("sweeps"), args.out, stem=f"suggestion_{split.replace('-', '_')}")
    _common.write_table(sug_loao, args.out, stem="suggestion")

    lines = ["| architecture | prunes counted | one pass (LOAO) | with the probe (LOAO) | probed |",
             "|---|---|---|---|---|"]
    for arch, c in held["per_architecture"].items():
        lines.append(f"| {arch} | {c['counted']} | {c['agree_one_pass']}/{c['counted']} | {c['agree']}/{c['counted']} "
                     f"| {c['probed']} |")
    groups = by_task(rows, held["per_architecture"])
    for task, g in groups.items():
        lines.append(f"| *{task}* | {g['counted']} | {g['agreement_one_pass']:.1%} | {g['agreement']:.1%} | "
                     f"{g['probed']} |")
    (args.out / "loao.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    summary = {"loao_agreement": held["agreement"], "loao_agreement_one_pass": held["agreement_one_pass"],
               "loao_by_task": groups, "in_sample_agreement": in_sample, "counted": len(alive),
               "per_architecture": held["per_architecture"],
               "suggestion_loao": hit(sug_loao), "suggestion_in_sample": hit(sug_in), "probe": probe_cost(rows),
               "held_out": unseen,
               "model": everything.models.get("classification", next(iter(everything.models.values())))[0].to_dict(),
               "models": {task: {"one_pass": one.to_dict(), "probe": None if probe is None else probe.to_dict()}
                          for task, (one, probe) in everything.models.items()},
               "runs": [list(r) for r in (QUICK_RUNS if args.quick else RUNS + LM_RUNS)],
               "held_out_runs": [] if args.quick else [list(r) for r in HELD_OUT + HELD_OUT_NEW + HELD_OUT_FRESH + HELD_OUT_FRESH2],
               "finetune": {"epochs": EPOCHS, "lr": LR, "batch_size": BATCH, "margin": MARGIN},
               "finetune_lm": {"epochs": LM_EPOCHS, "defaults": "lm family"}}
    print(json.dumps({k: v for k, v in summary.items() if k not in ("per_architecture", "runs", "held_out_runs")},
                     indent=1))
    _common.save_figure(figure(table), args.out)
    _common.write_summary(args.out, summary, args)
    _common.done(args.out, args)
    return summary


def hit(sugs: list[dict]) -> dict:
    """Suggestion hit rate: sweeps where the suggested MT reaches 90 % of the best MT's accuracy, among those where
    some MT trains."""
    live = [s for s in sugs if s["some_mt_trains"]]
    return {"hits": sum(s["within_90"] for s in live), "sweeps": len(live), "all_sweeps": len(sugs)}


def figure(table: list[dict]):
    """Fine-tuned accuracy against the LOAO probability, one point per distinct prune below collapse."""
    from collapsekit.views import plots

    fig = plots.new_figure(6.5, 4.2)
    with plots.style():
        ax = fig.subplots()
    for ok, colour, label in ((True, plots.BYPASSABLE, "trained above chance"),
                              (False, plots.COLLAPSED, "stayed at chance")):
        pts = [(r["probability_loao"], r["accuracy"]) for r in distinct(table)
               if r["trained"] == ok and r["split"] == "calibration" and r.get("task") != "causal_lm"]
        if pts:
            ax.scatter(*zip(*pts), s=12, color=colour, label=label, alpha=0.7)
    ax.axvline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xlabel("forecast probability (rule fitted without the architecture)")
    ax.set_ylabel("accuracy after 3 epochs of masked fine-tuning")
    ax.legend(fontsize=7, loc="upper left")
    return fig


def probe_cost(rows: list[dict]) -> dict:
    """How often the probe ran, and its cost as a fraction of one fine-tune epoch (evidence `probe_epochs`)."""
    ran = [r["evidence"] for r in distinct(rows) if r["evidence"].get("probe_epochs", 0) > 0]
    return {"ran": len(ran), "epochs_max": max((e["probe_epochs"] for e in ran), default=0.0),
            "epochs_mean": float(np.mean([e["probe_epochs"] for e in ran])) if ran else 0.0}


if __name__ == "__main__":
    sys.exit(main())
