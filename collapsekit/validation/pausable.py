"""One masked fine-tuning run that stops after a given number of optimizer steps and goes on when asked.

Successive halving gives a candidate a few steps, then more if it did well.
The run is `finetune.finetune` itself, executed in a thread that a
`train.Callback` holds still after the step asked for: the optimizer, the
learning-rate schedule and the place in the epoch stay exactly where they
were, so a run stopped and continued is the uninterrupted run (bit for bit on
CPU), and no engine code knows it was paused. While it waits, other runs use
the process: the global random state is put back on continuing, and only one
run computes at a time (the caller waits for each).
"""
from __future__ import annotations

import math
import random
import threading

import numpy as np
import torch

from collapsekit.errors import TrainingDiverged
from collapsekit.training.train import Callback
from collapsekit.training.finetune import finetune


class _Stop(Exception):
    """Raised inside a paused run to end it (the caller dropped the candidate)."""


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _set_rng_state(state: tuple) -> None:
    cpu, cuda, numpy_state, python_state = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


class PausableRun(Callback):
    """A fine-tuning run of `model` (pruned with `masks`) that `advance(steps)` takes to `steps` optimizer steps.

    `evaluate(model)` measures the metric wherever the run stops; `epoch_metric`
    names the per-epoch entry of `fit`'s metrics holding the same number (kept in
    `epoch_values` as (steps, value)), or None. `run_kwargs` go to
    `finetune.finetune`. `steps_done` counts the optimizer steps taken.
    """

    def __init__(self, model, masks, bundle, epochs: int, evaluate, epoch_metric: str | None = "test_acc",
                 **run_kwargs):
        self.model, self.masks, self.bundle, self.epochs = model, masks, bundle, epochs
        self.evaluate, self.epoch_metric, self.run_kwargs = evaluate, epoch_metric, run_kwargs
        self.steps_done, self.value, self.finished = 0, math.nan, False
        self.diverged = False  # its loss became NaN or infinite: it ended there, its metric NaN
        self.epoch_values: list[tuple[int, float]] = []
        self._target: int | None = None
        self._error: BaseException | None = None
        self._stop = False
        self._go, self._reached = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._main, name="collapsekit-finetune", daemon=True)

    # -- the caller's side -------------------------------------------------------------------------
    def advance(self, steps: int | None) -> float:
        """The metric after `steps` optimizer steps of the run (None, or past its end: the whole run)."""
        if self.finished or (steps is not None and steps <= self.steps_done and self._thread.is_alive()):
            return self.value
        self._target = steps
        self._reached.clear()
        if self._thread.is_alive():
            self._go.set()
        else:
            self._thread.start()
        self._reached.wait()
        if self._error is not None:
            raise self._error
        return self.value

    def close(self) -> None:
        """End the run where it stands (a paused thread unwinds, a training one at its next step)."""
        if self._thread.is_alive():
            self._stop = True
            self._go.set()
            self._thread.join()

    # -- the run's side ----------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            finetune(self.model, self.masks, self.bundle, self.epochs, callbacks=(self,), progress=False,
                     **self.run_kwargs)
            self.value, self.finished = self._measure(), True
        except _Stop:
            return
        except TrainingDiverged:  # a result, not a failure: the metric of a run that diverged is NaN (ranks last)
            self.value, self.finished, self.diverged = math.nan, True, True
        except BaseException as error:  # handed to the caller's thread
            self._error = error
        self._reached.set()

    def _measure(self) -> float:
        return float(self.evaluate(self.model))

    def on_step_end(self, optimizer, step: int) -> None:
        self.steps_done = step + 1
        if self._stop:  # closed while training (the caller was interrupted)
            raise _Stop
        if self._target is None or self.steps_done != self._target:
            return
        state = _rng_state()  # as the uninterrupted run has it here; the measurement must not move it
        training = self.model.training
        self.value = self._measure()
        self.model.train(training)
        self._go.clear()
        self._reached.set()
        while not self._go.wait(timeout=1.0) and not self._stop:
            pass
        if self._stop:
            raise _Stop
        _set_rng_state(state)

    def on_epoch_end(self, epoch: int, metrics: dict, optimizer) -> None:
        if self.epoch_metric in metrics:
            self.epoch_values.append((self.steps_done, float(metrics[self.epoch_metric])))


__all__ = ["PausableRun"]
