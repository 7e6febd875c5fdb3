"""Pruning schedules: the formulas (Zhu & Gupta's cubic, IMP's per-round rate) and their runs on one engine."""
import pytest

from collapsekit import models
from collapsekit.training import schedules as sch
from collapsekit.errors import CollapsekitError
from collapsekit.files.runstate import read_metrics
from collapsekit.training.finetune import prune_and_finetune
from collapsekit.training.train import EpochEnd


def test_cubic_sparsity_endpoints_and_shape():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
    assert sch.cubic_sparsity(2, 0.9, 0.1, t0=2, n=4, dt=1) == pytest.approx(0.1)
    assert sch.cubic_sparsity(6, 0.9, 0.1, t0=2, n=4, dt=1) == pytest.approx(0.9)
    assert sch.cubic_sparsity(4, 0.9, 0.1, t0=2, n=4, dt=1) == pytest.approx(0.9 - 0.8 / 8)
    assert sch.cubic_sparsity(0, 0.9, 0.1, t0=2, n=4) == pytest.approx(0.1)  # before t0: s_i
    assert sch.cubic_sparsity(99, 0.9, 0.1, t0=2, n=4) == pytest.approx(0.9)  # after: s_f
    steps = [sch.cubic_sparsity(t, 0.9, 0.0, n=6) for t in range(7)]
    gains = [b - a for a, b in zip(steps, steps[1:])]
    assert all(g > 0 for g in gains) and gains == sorted(gains, reverse=True)  # prunes fast, then slows


def test_imp_rate_and_cumulative_sparsity():
    assert sch.imp_rate(0.875, 3) == pytest.approx(0.5)
    assert [sch.imp_sparsity(0.875, r, 3) for r in (1, 2, 3)] == pytest.approx([0.5, 0.75, 0.875])
    s, n = 0.99, 4
    rate = sch.imp_rate(s, n)
    for r in range(1, n + 1):  # each round prunes `rate` of what the previous one kept
        assert 1 - sch.imp_sparsity(s, r, n) == pytest.approx((1 - sch.imp_sparsity(s, r - 1, n)) * (1 - rate))
    assert sch.imp_sparsity(0.9, 3, 3) == 0.9  # exact at the end


def test_plans():
    assert sch.oneshot(0.9, 3).events == ((1, 0.9),)
    g = sch.gradual(0.8, epochs=6)  # 3 steps after t = 0, 1, 2, 3 epochs; t = 0 prunes nothing (s_i = 0)
    assert [e for e, _ in g.events] == [2, 3, 4]
    assert [s for _, s in g.events] == pytest.approx([0.8 * (1 - (2 / 3) ** 3), 0.8 * (1 - (1 / 3) ** 3), 0.8])
    assert g.events[-1][1] == 0.8 and g.restarts == (1,)
    assert g.sparsity_at(1) == 0.0 and g.sparsity_at(5) == 0.8
    i = sch.imp(0.875, epochs=7, rounds=3)
    assert i.events == ((1, pytest.approx(0.5)), (3, pytest.approx(0.75)), (5, 0.875))
    assert i.restarts == (1, 3, 5) and i.segment(6) == (5, 3) and i.segment(2) == (1, 2)
    with pytest.raises(CollapsekitError, match="epochs"):
        sch.gradual(0.9, epochs=2, steps=2)
    with pytest.raises(CollapsekitError, match="rounds"):
        sch.imp(0.9, epochs=2, rounds=3)
    with pytest.raises(CollapsekitError, match="rise"):
        sch.PruningSchedule("x", 3, ((1, 0.9), (2, 0.5)))
    with pytest.raises(CollapsekitError, match="unknown"):
        sch.make("cyclic", 0.9, 3)


def fresh(dense):
    model = models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=8)
    model.load_state_dict(dense.state_dict())
    return model


@pytest.mark.parametrize("name", ["gradual", "imp"])
def test_schedule_masks_nested_and_exact(dense, digits, name, tmp_path):
    model = fresh(dense)
    names = ["fc1.weight", "fc2.weight", "fc3.weight"]
    total = sum(model.get_parameter(n).numel() for n in names)
    zeros = []

    def snapshot(epoch, metrics):
        zeros.append({n: model.get_parameter(n).detach() == 0 for n in names})

    result = prune_and_finetune(model, digits, 0.95, epochs=6, pruning_schedule=name, lr=0.05, device="cpu",
                                progress=False, callbacks=[EpochEnd(snapshot)], out=tmp_path)
    plan = sch.make(name, 0.95, 6)
    # Each epoch trains at exactly round(s_t * N) pruned weights of its plan.
    for metrics in result.history:
        s = plan.sparsity_at(metrics["epoch"])
        assert metrics["sparsity"] == pytest.approx(round(s * total) / total, abs=1e-12)
    assert [m["epoch"] for m in read_metrics(tmp_path)] == list(range(1, 7))
    # Nested: a weight zero (pruned) after one epoch stays zero after every later one.
    for before, after in zip(zeros, zeros[1:]):
        assert all(bool((before[n] & ~after[n]).sum() == 0) for n in names)
    final = result.masks
    assert sum(int((~final[n]).sum()) for n in names) == round(0.95 * total)
    for n in names:
        assert not model.get_parameter(n).detach()[~final[n]].any()
    assert result.accuracy > 0.6


def test_imp_learning_rate_restarts_each_round(dense, digits):
    model = fresh(dense)
    result = prune_and_finetune(model, digits, 0.9, epochs=4, pruning_schedule="imp", rounds=2, lr=0.1,
                                device="cpu", progress=False)
    # IMP defaults to a linear decay (Zimmer et al.) restarting at each round: 0.1, 0.05, 0.1, 0.05.
    assert [m["lr"] for m in result.history] == pytest.approx([0.1, 0.05, 0.1, 0.05])
    assert [m["sparsity"] for m in result.history][1:3] == pytest.approx(
        [sch.imp_sparsity(0.9, 1, 2), 0.9], abs=1e-4)
