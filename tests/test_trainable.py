"""Data-aware entry points: ck.analyze(..., data=) and ck.suggest_mt(..., data=) compose the analysis with the forecast."""
import json

import collapsekit as ck
from collapsekit.validation import forecast, trainable


def test_analyze_with_data_carries_forecasts(dense, digits):
    x = digits.example_input()
    report = ck.analyze(dense, x, sparsities=[0.5, 0.999], data=digits)
    alive, dead = report.at(0.5), report.at(0.999)
    assert alive.forecast.trainable and alive.forecast.evidence["accuracy_pruned"] > 0.5
    assert dead.collapsed and not dead.forecast.trainable and dead.forecast.reason.startswith("collapsed")
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["levels"][0]["forecast"]["trainable"] is True
    assert set(doc["levels"][0]["forecast"]["evidence"]) >= {"signal", "gradient_min", "accuracy_pruned",
                                                             *forecast.FEATURES}
    assert doc["levels"][0]["forecast"]["probability"] >= 0.5 and doc["levels"][1]["forecast"]["probability"] == 0.0
    plain = ck.analyze(dense, x, sparsities=[0.5])
    assert plain.at(0.5).forecast is None and plain.to_dict()["levels"][0]["forecast"] is None
    from collapsekit.views.render import report_to_markdown as to_markdown, report_to_text as to_text

    text = to_text(report)
    assert "forecast" in text and "untrainable (collapsed: no kept path)" in text
    assert "| forecast |" in to_markdown(report) and "forecast" not in to_text(plain).split("layer ")[0]


def test_choose_prefers_the_probe_where_it_ran_and_the_probability_otherwise():
    cands = [{"mt": 4, "probability": 0.99, "probe_short_loss_after": 1.2},
             {"mt": 9, "probability": 0.97, "probe_short_loss_after": 0.8},
             {"mt": 20, "probability": 0.3, "probe_short_loss_after": 0.1}]
    assert trainable.choose(cands)["mt"] == 9  # trainable, and furthest along after the steps; p 0.3 is not a pick
    plain = [{k: v for k, v in c.items() if k != "probe_short_loss_after"} for c in cands]
    assert trainable.choose(plain)["mt"] == 4  # no probe: the likeliest
    assert trainable.choose([{"mt": 3, "probability": 0.2}, {"mt": 5, "probability": 0.2}])["mt"] == 3  # ties: smallest


def test_suggest_mt_with_data_keeps_the_floor(dense, digits):
    x = digits.example_input()
    an = ck.Analysis(dense, x)
    s = 0.97
    structural = ck.suggest_mt(an, sparsity=s)
    aware = ck.suggest_mt(an, sparsity=s, data=digits)
    assert structural.forecast_trainable is None and structural.forecasts == ()
    assert aware.floor == structural.mt == structural.floor and aware.mt >= aware.floor
    assert aware.seconds > 0 and len(aware.forecasts) >= 5
    assert all(aware.floor <= f["mt"] <= aware.max_mt for f in aware.forecasts)
    assert any(f["trainable"] for f in aware.forecasts) and aware.forecast_trainable  # this LeNet trains at 0.97
    assert all(f["trainable"] == (f["probability"] >= 0.5) for f in aware.forecasts)
    # With data the probe ran for each candidate: of those forecast trainable, the lowest loss after its steps.
    probed = [f for f in aware.forecasts if f["trainable"]]
    assert probed and all("probe_short_loss_after" in f for f in aware.forecasts)
    assert aware.mt == min(probed, key=lambda f: (f["probe_short_loss_after"], f["mt"]))["mt"]
    assert "trains furthest in the probe's steps" in aware.reason
    assert aware.mt in trainable.candidate_mts(structural)
    # Each candidate's forecast was made once: asking again (another copy of the analysis, the same MT and count)
    # returns it without measuring, as mt-search asks for its candidates.
    k = an.count(s)
    made = trainable.forecast(an.with_mt(aware.mt), digits, k)
    assert made is trainable.forecast(an.with_mt(aware.mt), digits, k) and made.probability == next(
        f["probability"] for f in aware.forecasts if f["mt"] == aware.mt)
    assert trainable.forecast(an.with_mt(aware.mt), digits, an.count(s)).trainable  # the same, asked directly
    doc = aware.to_dict()
    assert doc["floor"] == structural.mt and doc["mt"] == aware.mt and doc["forecast_trainable"] is True


def test_the_analysis_layer_does_not_import_the_forecast():
    """The forecast runs the model on data and trains a probe: it sits above analysis, which never imports it."""
    from pathlib import Path

    import collapsekit.analysis as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        imports = [line for line in path.read_text().splitlines() if line.lstrip().startswith(("from ", "import "))]
        assert not any("collapsekit.validation" in line or "collapsekit.training" in line for line in imports), path
