"""Successive halving over a fixed set of candidates: the rung budgets, the promotion rule, and it as an Optuna pruner.

Jamieson & Talwalkar ("Non-stochastic Best Arm Identification and
Hyperparameter Optimization", AISTATS 2016, Algorithm 1): every candidate gets
a short budget, the better 1/eta go on with eta times more, and so on until
one is left, which gets the whole budget. Here the budget is optimizer steps of
one fixed fine-tuning run per candidate (the run `--full` would do), so a
candidate that goes on continues the same run, and the one left is, when the budget
pays for it, exactly the run the exhaustive sweep makes for it.

This is the synchronous form on purpose. Optuna's `SuccessiveHalvingPruner`
is asynchronous (Li et al., ASHA, MLSys 2020): a trial is promoted against the
trials that happen to have reached the rung before it, so which candidates go
on depends on the order the processes finish in. Here a rung is decided only
when every candidate still in it has reported, and by value (ties, and values
no better than a constant function's, in the forecast's order), so one
process or many, in any order, give the same answer (invariant 11,
docs/design.md). The rule reads only the values reported to the
study, which is why a rerun on a finished study decides without training.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

with warnings.catch_warnings():
    # Optuna imports tqdm.auto, which in a Jupyter kernel without ipywidgets warns "IProgress not found" into
    # the notebook at import time; collapsekit never draws Optuna's own bars (its bars: analysis.timing).
    warnings.filterwarnings("ignore", message="IProgress not found")
    import optuna

ETA = 2  # "the better half goes on"
SHORTEST = 4  # first rungs at most this many times shorter than the paper's before the last rung shrinks too


def rung_sizes(n: int, eta: int = ETA) -> list[int]:
    """Candidates alive at each rung: n, ceil(n / eta), ... down to 1 (one rung when n <= 1)."""
    sizes = [max(n, 1)]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / eta))
    return sizes


def rung_steps(n: int, total: int, target: float, eta: int = ETA) -> list[int]:
    """Optimizer steps each rung ends at, for `n` candidates whose whole run is `total` steps, costing <= `target`.

    The cost is every candidate's steps, a candidate that goes on counted once.
    When `target` pays for the last candidate's whole run and rungs at most
    SHORTEST times shorter than the paper's (total / eta^R, eta times more per
    rung), the last rung ends at `total` and the earlier ones at b0, eta b0, ...
    with b0 the largest that fits, up to the paper's. Otherwise (few candidates:
    one whole run is already most of the target) the paper's rungs are scaled
    down together until they fit, the last one too.
    """
    sizes = rung_sizes(n, eta)
    rungs = len(sizes) - 1
    # cost(b0, last) = last + b0 * sum_r eta^r (n_r - n_{r+1}): a candidate dropped after rung r ran b0 eta^r steps.
    weight = sum(eta ** r * (sizes[r] - sizes[r + 1]) for r in range(rungs))
    natural = total / eta ** rungs
    if rungs == 0:  # one candidate: nothing to decide, it trains as far as the target pays
        return [max(1, min(total, math.floor(target)))]
    b0 = min(natural, (target - total) / weight)
    if b0 >= natural / SHORTEST:
        ends = [b0 * eta ** r for r in range(rungs)] + [total]
    else:
        scale = min(1.0, target / (total + natural * weight))
        ends = [scale * natural * eta ** r for r in range(rungs + 1)]
    steps = [max(1, min(total, math.floor(e))) for e in ends]
    return [min(s, steps[-1]) for s in steps]


@dataclass(frozen=True)
class HalvingState:
    """Where a halving search stands, from the values reported so far.

    `need` maps each candidate still to be measured to the step its current rung
    ends at; `dropped` maps each candidate left behind to the rung step it was
    last measured at; `winner` is set once the last rung is decided.
    """

    need: dict
    dropped: dict
    alive: tuple
    winner: object = None

    @property
    def finished(self) -> bool:
        return self.winner is not None


def halving(candidates, steps: list[int], values: dict, maximize: bool = True, eta: int = ETA,
            floor: float | None = None) -> HalvingState:
    """HalvingState of successive halving over `candidates` with rungs ending at `steps` and `values` reported.

    `values[c][step]` is candidate c's metric after `step` optimizer steps (NaN
    for a run that diverged: it ranks last). A rung keeps the best
    ceil(alive / eta) by value, ties to the candidate listed first, and only
    once every alive candidate has its value there. Values no better than
    `floor` (what a constant function scores) all tie: they say nothing about
    which run will train, so the order of `candidates` (the forecast's) decides.
    With one rung (`steps == [total]`) every candidate runs to the end: the
    exhaustive sweep.
    """
    position = {c: i for i, c in enumerate(candidates)}

    def key(c, step):
        v = values[c][step]
        if floor is not None and not math.isnan(v):
            v = max(v, floor) if maximize else min(v, floor)
        return (math.isnan(v), -v if maximize else v, position[c])

    alive, dropped = list(candidates), {}
    for r, step in enumerate(steps):
        missing = [c for c in alive if step not in values.get(c, {})]
        if missing:
            return HalvingState(need={c: step for c in missing}, dropped=dropped, alive=tuple(alive))
        ranked = sorted(alive, key=lambda c: key(c, step))
        if r == len(steps) - 1:
            return HalvingState(need={}, dropped=dropped, alive=tuple(alive), winner=ranked[0])
        keep = ranked[:math.ceil(len(alive) / eta)]
        dropped.update({c: step for c in alive if c not in keep})
        alive = [c for c in alive if c in keep]
    raise ValueError("halving needs at least one rung")


def reported_values(trials, param: str = "mt") -> dict:
    """{candidate: {step: value}} over `trials` (Optuna FrozenTrials); a step's first report (lowest trial) wins.

    Every trial counts, a failed one too: a candidate's run is deterministic, so
    a value reported before a worker died is the value its retry would report,
    and keeping the first makes a decision already taken stay taken.
    """
    values: dict = {}
    for t in sorted(trials, key=lambda t: t.number):
        c = candidate_of(t, param)
        if c is None:
            continue
        for step, v in t.intermediate_values.items():
            values.setdefault(c, {}).setdefault(step, float(v))
    return values


def candidate_of(trial, param: str = "mt"):
    """The candidate a trial runs: its parameter, or the one it was enqueued with (None for a stray trial)."""
    if param in trial.params:
        return trial.params[param]
    return trial.system_attrs.get("fixed_params", {}).get(param)


class HalvingPruner(optuna.pruners.BasePruner):
    """Optuna pruner: a trial is pruned once the synchronous halving rule (`halving`) has left its candidate behind."""

    def __init__(self, candidates, steps: list[int], maximize: bool = True, param: str = "mt", eta: int = ETA,
                 floor: float | None = None):
        self.candidates, self.steps, self.maximize, self.param, self.eta = tuple(candidates), list(steps), maximize, \
            param, eta
        self.floor = floor

    def state_from(self, trials) -> HalvingState:
        """The halving state from every value reported to `trials` (a study's FrozenTrials)."""
        return halving(self.candidates, self.steps, reported_values(trials, self.param), self.maximize, self.eta,
                       self.floor)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        state = self.state_from(study.get_trials(deepcopy=False))
        c = candidate_of(trial, self.param)
        return c in state.dropped or (state.finished and c != state.winner)


__all__ = ["rung_sizes", "rung_steps", "halving", "HalvingState", "HalvingPruner", "reported_values",
           "candidate_of", "ETA"]
