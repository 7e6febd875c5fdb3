"""The trainability probe: a few masked SGD steps on the pruned copy, read against the dense net's same steps."""
import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.training.train import fit
from collapsekit.validation import forecast, sgdprobe
from collapsekit.validation.forecast import Forecaster


@pytest.fixture(scope="module")
def setup():
    bundle = ck.data.load("synthetic")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(model, bundle, epochs=3, lr=0.05, batch_size=64, device="cpu", seed=0, progress=False)
    return model.eval(), bundle, Forecaster.from_bundle(model, bundle)


def masks_keeping(model, fraction: float) -> dict:
    """Keep the largest `fraction` of each weight matrix (a layer-wise magnitude prune)."""
    out = {}
    for name, p in model.named_parameters():
        if p.ndim > 1:
            k = max(1, int(fraction * p.numel()))
            threshold = p.detach().abs().flatten().kthvalue(p.numel() - k + 1).values
            out[name] = p.detach().abs() >= threshold
    return out


def test_cost_is_bounded_and_stated(setup):
    model, bundle, fc = setup
    ev = fc(masks_keeping(model, 1.0), probe=True).evidence
    n = len(bundle.train)  # 512: half an epoch is 4 steps of 64
    assert ev["probe_steps"] == min(sgdprobe.PROBE_STEPS, int(sgdprobe.MAX_EPOCHS * n / sgdprobe.PROBE_BATCH)) == 4
    assert ev["probe_epochs"] == pytest.approx(ev["probe_steps"] * ev["probe_batch"] / n)
    assert ev["probe_epochs"] <= sgdprobe.MAX_EPOCHS


def test_dense_masks_keep_the_dense_gain_and_the_model_is_untouched(setup):
    model, bundle, fc = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ev = fc(masks_keeping(model, 1.0), probe=True).evidence
    # The same steps on the same examples as the dense reference: the same loss after them.
    assert ev["probe_loss_kept"] == pytest.approx(1.0, abs=1e-4) and ev["probe_drop"] == pytest.approx(0.0, abs=1e-6)
    assert ev["probe_loss_before"] == pytest.approx(fc.dense.loss, rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_gutted_net_keeps_less_than_a_mildly_pruned_one(setup):
    model, _, fc = setup
    mild = fc(masks_keeping(model, 0.5), probe=True).evidence
    gutted = fc(masks_keeping(model, 0.002), probe=True).evidence
    assert gutted["probe_loss_kept"] < 0.3 < mild["probe_loss_kept"]
    assert gutted["after_loss_kept"] < mild["after_loss_kept"]  # the one-pass reading after the steps
    assert gutted["probe_accuracy_kept"] < 0.3 < mild["probe_accuracy_kept"]
    assert forecast.PROBE_MODEL.probability(gutted) < 0.5 < forecast.PROBE_MODEL.probability(mild)


def test_the_steps_leave_the_measurement_batch_aside(setup):
    """The probe's steps train on training examples the measurement batch does not hold: its readings after
    them are on examples it has not fitted."""
    model, bundle, fc = setup
    probe = sgdprobe.Probe(fc, forecast.FEATURES)
    measured = {tuple(v.tolist()) for v in fc.x.flatten(1)}
    stepped = {tuple(v.tolist()) for x, _ in probe.batches for v in x.flatten(1)}
    assert measured and stepped and not measured & stepped
    assert probe.epochs <= sgdprobe.MAX_EPOCHS and sgdprobe.LR == 0.01  # the fine-tune's own learning rate


def test_masks_stay_exact_through_the_probe_steps(setup, monkeypatch):
    """The probe trains with training's MaskCallback: pruned weights are +0.0 after every step."""
    model, bundle, fc = setup
    masks = masks_keeping(model, 0.1)
    seen = []
    original = sgdprobe.Probe._loss

    def spy(self, net):
        seen.append({n: net.get_parameter(n).detach().clone() for n in masks})
        return original(self, net)

    monkeypatch.setattr(sgdprobe.Probe, "_loss", spy)
    sgdprobe.Probe(fc, forecast.FEATURES)(masks)
    after = seen[-1]  # the loss read after the steps
    assert all(bool((w[~masks[n]] == 0).all()) for n, w in after.items())
    assert any(not torch.equal(w[masks[n]], model.get_parameter(n).detach()[masks[n]]) for n, w in after.items())


def test_an_undecided_prune_is_probed_longer_up_to_the_cap_and_a_decided_one_is_not(setup):
    """Below the `trained` bar after the short probe, the probe goes on (a short probe's length at a time) up to
    EXTEND x its steps and EXTENDED_EPOCHS; above it, it stops. The extended readings are the ones a forced run
    takes at the same step (the same examples, seeded), and the short probe's are kept beside them."""
    model, bundle, fc = setup
    mild = fc(masks_keeping(model, 0.5), probe=True).evidence
    assert mild["probe_extended"] == 0.0 and mild["probe_steps"] == 4 and mild["probe_accuracy_margin"] >= 0
    assert mild["probe_short_loss_after"] == mild["probe_loss_after"]
    gutted_masks = masks_keeping(model, 0.002)
    gutted = fc(gutted_masks, probe=True).evidence
    n = len(bundle.train)  # 512: 4 steps a half epoch; at most 3 x 4 = 12 steps, 1.5 epochs
    assert gutted["probe_extended"] == 1.0 and gutted["probe_short_accuracy_margin"] < 0
    assert gutted["probe_steps"] == sgdprobe.EXTEND * 4 == 12
    assert gutted["probe_epochs"] == pytest.approx(12 * 64 / n) and gutted["probe_epochs"] <= sgdprobe.EXTENDED_EPOCHS
    forced = sgdprobe.Probe(fc, forecast.FEATURES).readings(gutted_masks, lambda reading: True)
    assert [r["probe_steps"] for r in forced] == [4, 8, 12]
    assert forced[-1]["probe_loss_after"] == gutted["probe_loss_after"]
    assert forced[0]["probe_loss_after"] == gutted["probe_short_loss_after"]
