"""PausableRun: a fine-tune stopped mid-epoch and continued is the uninterrupted run, bit for bit on CPU."""
import copy

import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.data import load
from collapsekit.training.finetune import finetune
from collapsekit.training.train import evaluate
from collapsekit.validation.pausable import PausableRun


def test_a_paused_and_continued_run_equals_the_uninterrupted_run():
    bundle = load("synthetic")
    torch.manual_seed(0)
    # Dropout draws from the global random state: a pause must give it back as it was.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    masks = ck.prune(copy.deepcopy(model), 0.8).masks
    kwargs = dict(lr=0.05, batch_size=64, device="cpu", seed=3)
    straight = copy.deepcopy(model)
    ck.prune(straight, 0.8)
    finetune(straight, masks, bundle, 2, progress=False, **kwargs)

    paused_model = copy.deepcopy(model)
    ck.prune(paused_model, 0.8)
    run = PausableRun(paused_model, masks, bundle, 2, evaluate=lambda m: evaluate(m, bundle.test, "cpu"), **kwargs)
    other = PausableRun(copy.deepcopy(straight), masks, bundle, 2,
                        evaluate=lambda m: evaluate(m, bundle.test, "cpu"), **{**kwargs, "seed": 9})
    first = run.advance(3)  # 8 steps an epoch: stop inside epoch 1
    assert run.steps_done == 3 and not run.finished and 0.0 <= first <= 1.0
    torch.manual_seed(12345)  # the process's random state moves while the run waits ...
    other.advance(5)  # ... and another run trains meanwhile
    assert run.advance(11) == evaluate(paused_model, bundle.test, "cpu") and run.steps_done == 11
    assert run.epoch_values == [(8, run.epoch_values[0][1])]  # epoch 1's test accuracy, at its step
    final = run.advance(None)
    assert run.finished and run.steps_done == 16
    for (name, a), b in zip(straight.state_dict().items(), paused_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert final == evaluate(straight, bundle.test, "cpu")
    other.close()
    assert not other._thread.is_alive()
