"""Pruning schedules (one-shot, gradual, IMP) as plans of prune events that the masked fine-tune engine runs.

A PruningSchedule says before which epoch to prune to which global sparsity and
where the learning rate starts over; `finetune.finetune(..., plan=...)` executes
it (`finetune.prune_and_finetune` builds the plan by name), pruning with
`ck.prune` (Global MP over the current weights, + MT) at each event. Weights
already zero go first in Global MP, so each event's masks lie inside the
previous ones.
"""
from __future__ import annotations

from dataclasses import dataclass

from collapsekit.errors import CollapsekitError
from collapsekit.training.train import lr_segment

NAMES = ("oneshot", "gradual", "imp")


@dataclass(frozen=True)
class PruningSchedule:
    """A plan: prune to `sparsity` before 1-based epoch `epoch` for each event; the LR restarts at `restarts`."""

    name: str
    epochs: int
    events: tuple[tuple[int, float], ...]  # (epoch, target global sparsity), epochs ascending
    restarts: tuple[int, ...] = (1,)  # epochs where the learning-rate schedule starts from the peak again

    def __post_init__(self):
        if self.epochs < 1:
            raise CollapsekitError(f"a pruning schedule needs at least one epoch (got {self.epochs})")
        epochs = [e for e, _ in self.events]
        if epochs != sorted(set(epochs)) or any(not 1 <= e <= self.epochs for e in epochs):
            raise CollapsekitError(f"schedule events must be at distinct epochs in 1..{self.epochs}: {epochs}")
        levels = [s for _, s in self.events]
        if any(not 0.0 <= s < 1.0 for s in levels) or levels != sorted(levels):
            raise CollapsekitError(f"schedule sparsities must rise within [0, 1): {levels}")
        if 1 not in self.restarts or any(not 1 <= e <= self.epochs for e in self.restarts):
            raise CollapsekitError(f"learning-rate restarts must include epoch 1 and lie in 1..{self.epochs}")

    @property
    def sparsity(self) -> float:
        """The final target sparsity (0.0 for a plan without events)."""
        return self.events[-1][1] if self.events else 0.0

    def sparsity_at(self, epoch: int) -> float:
        """Target sparsity during 1-based `epoch` (the last event at or before it)."""
        return max((s for e, s in self.events if e <= epoch), default=0.0)

    def segment(self, epoch: int) -> tuple[int, int]:
        """(first epoch, number of epochs) of the learning-rate segment holding `epoch`."""
        return lr_segment(epoch, self.restarts, self.epochs)

    def to_dict(self) -> dict:
        return {"name": self.name, "epochs": self.epochs, "events": [list(e) for e in self.events],
                "restarts": list(self.restarts), "sparsity": self.sparsity}


def cubic_sparsity(t: float, final: float, initial: float = 0.0, t0: float = 0.0, n: int = 1,
                   dt: float = 1.0) -> float:
    """Target sparsity at step t of Zhu & Gupta's gradual pruning ("To prune, or not to prune", 2017, eq. 1).

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 for t in [t0, t0 + n dt];
    s_i before t0 and s_f after.
    """
    if n < 1 or dt <= 0:
        raise CollapsekitError(f"gradual pruning needs n >= 1 steps and dt > 0 (got n={n}, dt={dt})")
    progress = min(max((t - t0) / (n * dt), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def imp_rate(sparsity: float, rounds: int) -> float:
    """Fraction of the remaining weights each IMP round prunes, 1 - (1 - s)^(1/n), so n rounds reach s."""
    return 1.0 - (1.0 - sparsity) ** (1.0 / rounds)


def imp_sparsity(sparsity: float, rnd: int, rounds: int) -> float:
    """Cumulative sparsity after IMP round `rnd` of `rounds`: 1 - (1 - s)^(r/n), exactly s after the last."""
    return float(sparsity) if rnd >= rounds else 1.0 - (1.0 - sparsity) ** (rnd / rounds)


def oneshot(sparsity: float, epochs: int) -> PruningSchedule:
    """Prune to `sparsity` once before epoch 1, then fine-tune `epochs` epochs with fixed masks."""
    _check_sparsity(sparsity)
    return PruningSchedule("oneshot", epochs, ((1, float(sparsity)),))


def gradual(sparsity: float, epochs: int, steps: int | None = None, initial_sparsity: float = 0.0,
            start: int = 0, every: int = 1) -> PruningSchedule:
    """Zhu & Gupta's cubic schedule in epochs: prune after t = start, start + every, ..., start + steps * every epochs.

    Pruning at t epochs means before epoch t + 1. By default `steps` =
    max(1, epochs // 2), so the second half of the run fine-tunes at the final
    sparsity. The LR schedule spans the whole run (no restarts).
    """
    _check_sparsity(sparsity)
    steps = max(1, epochs // 2) if steps is None else int(steps)
    if steps < 1 or every < 1 or start < 0:
        raise CollapsekitError(f"gradual pruning needs steps >= 1, every >= 1, start >= 0 "
                               f"(got {steps}, {every}, {start})")
    last = start + steps * every
    if last >= epochs:
        raise CollapsekitError(f"gradual pruning with {steps} steps every {every} epochs from epoch {start} needs "
                               f"more than {last} epochs (got {epochs}); raise --epochs or lower the steps")
    events = []
    for i in range(steps + 1):
        t = start + i * every
        s = cubic_sparsity(t, sparsity, initial_sparsity, start, steps, every)
        if i == steps:
            s = float(sparsity)  # exact, whatever the float rounding of the cubic
        if s > 0.0:
            events.append((t + 1, s))
    return PruningSchedule("gradual", epochs, tuple(events))


def imp(sparsity: float, epochs: int, rounds: int = 3) -> PruningSchedule:
    """Iterative magnitude pruning: `rounds` rounds of prune (per-round rate 1-(1-s)^(1/n)) + short retraining.

    Each round retrains epochs // rounds epochs (the last takes the remainder)
    with its own learning-rate decay from the peak (Zimmer et al.: a linear decay
    recovers most accuracy in few epochs).
    """
    _check_sparsity(sparsity)
    if rounds < 1 or epochs < rounds:
        raise CollapsekitError(f"IMP needs 1 <= rounds <= epochs (got {rounds} rounds, {epochs} epochs)")
    per = epochs // rounds
    starts = tuple(1 + r * per for r in range(rounds))
    events = tuple((e, imp_sparsity(sparsity, r + 1, rounds)) for r, e in enumerate(starts))
    return PruningSchedule("imp", epochs, events, restarts=starts)


def make(name: str, sparsity: float, epochs: int, rounds: int | None = None, steps: int | None = None,
         ) -> PruningSchedule:
    """The PruningSchedule called `name` ("oneshot", "gradual" or "imp")."""
    if name == "oneshot":
        return oneshot(sparsity, epochs)
    if name == "gradual":
        return gradual(sparsity, epochs, steps=steps)
    if name == "imp":
        return imp(sparsity, epochs, rounds=3 if rounds is None else rounds)
    raise CollapsekitError(f"unknown pruning schedule {name!r} (use {', '.join(NAMES)})")


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= float(sparsity) < 1.0:
        raise CollapsekitError(f"sparsity must lie in [0, 1), got {sparsity}")


__all__ = ["PruningSchedule", "cubic_sparsity", "imp_rate", "imp_sparsity", "oneshot", "gradual", "imp", "make",
           "NAMES"]
