"""views.render: one aligned table for every command; the views print the result objects' own numbers."""
import pytest

from collapsekit.validation.mtsearch import MTPoint, MTSearchResult
from collapsekit.validation.validate import LevelValidation, ValidationReport
from collapsekit.views.render import md_table, mt_search_to_text, table, validation_to_text


def test_table_pads_each_column_to_its_widest_cell_on_the_requested_side():
    text = table(["name", "n", "note"], [["a", 5, ""], ["longer", 12345, "x"]], "lr")
    assert text.splitlines() == ["name        n  note",
                                 "------  -----  ----",
                                 "a           5",  # trailing blanks stripped
                                 "longer  12345  x"]


def test_md_table_marks_right_aligned_columns():
    assert md_table(["a", "b"], [[1, 2]], "lr").splitlines() == ["| a | b |", "|---|---:|", "| 1 | 2 |"]


def validation_report():
    def level(s, collapsed, acc, agree):
        return LevelValidation(sparsity=s, predicted_collapsed=collapsed, emptied_layers=("fc1.weight",) * collapsed,
                               effective_sparsity=1.0 if collapsed else s, dead_channel_count=0,
                               accuracy_pruned=acc, accuracy=acc, trained=acc > 0.2,
                               constant_after_prune=collapsed, observed_collapsed=collapsed, agree=agree,
                               forecast_trainable=not collapsed)

    return ValidationReport(model="lenet", mt=0, collapse_sparsity=0.99, dense_accuracy=0.95, chance=0.1,
                            margin=0.1, epochs=2, levels=(level(0.9, False, 0.91, True), level(0.999, True, 0.1, False)))


def test_validation_to_text_one_row_per_level_and_the_agreement():
    lines = validation_to_text(validation_report()).splitlines()
    assert lines[0].startswith("lenet: dense accuracy 0.9500, MT 0, predicted collapse sparsity 0.99")
    assert lines[1].split() == ["sparsity", "predicted", "emptied", "eff.sparsity", "forecast", "acc", "pruned", "acc",
                                "tuned", "trained", "observed", "agree", "structural"]
    assert lines[3].split() == ["0.9", "alive", "0", "0.9000", "trainable", "0.9100", "0.9100", "yes", "alive", "yes",
                                "yes"]
    assert lines[4].split() == ["0.999", "collapsed", "1", "1.0000", "untrainable", "0.1000", "0.1000", "no",
                                "collapsed", "yes", "no"]
    assert len({len(line) for line in lines[1:5]}) == 1  # right-aligned: every row ends at the same column
    # `agree` is the forecast against the outcome; the structural check keeps its own count.
    assert lines[5] == "agreement 2/2 (100%) forecast vs trained; structural 1/2 (50%)"


def test_mt_search_to_text_marks_the_best_point():
    points = tuple(MTPoint(mt=m, percent=m / 10, predicted_collapsed=m == 0, emptied_layers=int(m == 0),
                           accuracy_pruned=0.1, accuracy=acc, forecast_trainable=m > 0)
                   for m, acc in ((0, 0.1), (3, 0.8), (30, 0.8)))
    result = MTSearchResult(sparsity=0.99, suggestion={"mt": 3, "percent": 0.3, "total": 1000, "reason": "why",
                                                       "floor": 0, "seconds": 0.25}, points=points, epochs=2)
    lines = mt_search_to_text(result).splitlines()
    assert lines[0] == "sparsity 0.99: suggested MT 3 (0.3 % of 1000 prunable weights; why; 0.25 s), structural floor 0"
    rows = {int(line.split()[0]): line for line in lines[3:6]}
    assert rows[3].endswith("<- best, suggested") and "best" not in rows[0] + rows[30]  # ties go to the smaller MT
    assert rows[0].endswith("<- floor") and rows[0].split()[4] == "untrainable" and rows[3].split()[4] == "trainable"
    assert rows[0].split()[2] == "collapsed" and rows[30].split()[2] == "alive"
    assert lines[6] == "best MT 3 (0.3 %): accuracy 0.8000 (range 0.1000-0.8000 over 3 values, 2 epochs each)"


def test_validation_and_mt_search_of_a_language_model_print_perplexities():
    def level(s, collapsed, before, after):
        return LevelValidation(sparsity=s, predicted_collapsed=collapsed, emptied_layers=(), effective_sparsity=s,
                               dead_channel_count=0, accuracy_pruned=0.3, accuracy=0.4, trained=not collapsed,
                               constant_after_prune=collapsed, observed_collapsed=collapsed, agree=True,
                               forecast_trainable=not collapsed, perplexity_pruned=before, perplexity=after)

    report = ValidationReport(model="llama_tiny", mt=0, collapse_sparsity=0.99998, dense_accuracy=0.5,
                              chance=1 / 256, margin=0.5, epochs=1, metric="perplexity", unigram_perplexity=25.99,
                              dense_perplexity=6.39, levels=(level(0.5, False, 7.56, 6.08),
                                                             level(0.99999, True, 256.0, 256.0)))
    lines = validation_to_text(report).splitlines()
    assert lines[0] == ("llama_tiny: dense perplexity 6.390, unigram perplexity 25.990, MT 0, predicted collapse "
                        "sparsity 0.99998, 1 fine-tuning epochs, trained = closes 50% of the log gap from unigram "
                        "to dense")
    assert lines[1].split()[5:9] == ["ppl", "pruned", "ppl", "tuned"]
    assert lines[3].split()[5:7] == ["7.5600", "6.0800"] and lines[4].split()[5:7] == ["256.0000", "256.0000"]
    assert report.to_dict()["metric"] == "perplexity" and report.to_dict()["levels"][0]["perplexity"] == 6.08

    # A causal LM's points hold perplexities where a classifier's hold accuracies (the search's one metric).
    points = tuple(MTPoint(mt=m, percent=m / 10, predicted_collapsed=False, emptied_layers=0, accuracy_pruned=100.0,
                           accuracy=ppl, metric="perplexity")
                   for m, ppl in ((0, 16.8), (5, 16.7), (98, 63.5)))
    assert points[1].to_dict()["perplexity"] == 16.7 and points[1].to_dict()["perplexity_pruned"] == 100.0
    result = MTSearchResult(sparsity=0.99, suggestion={"mt": None, "percent": 0.0, "total": 1000, "reason": "why",
                                                       "floor": 0}, points=points, epochs=1, metric="perplexity",
                            baselines={"unigram_perplexity": 25.99, "dense_perplexity": 6.39})
    assert result.best.mt == 5  # lower perplexity wins, whatever the (higher) accuracy of MT 0
    assert result.to_dict()["best_perplexity"] == 16.7 and result.to_dict()["unigram_perplexity"] == 25.99
    lines = mt_search_to_text(result).splitlines()
    assert lines[1].split()[5:9] == ["ppl", "pruned", "ppl", "tuned"]
    assert lines[-1] == "best MT 5 (0.5 %): perplexity 16.7000 (range 16.7000-63.5000 over 3 values, 1 epochs each)"


@pytest.mark.parametrize("align", ["", "r", "lrl"])
def test_table_header_rule_and_rows_have_one_width_per_column(align):
    text = table(["aa", "b", "c"], [["x", "yyy", "z"]], align)
    header, rule, row = text.splitlines()
    assert [len(d) for d in rule.split("  ")] == [2, 3, 1]


def test_prune_to_text_reads_the_prune_document():
    from collapsekit.views.render import prune_to_text

    doc = {"pruned": 95, "total": 100, "sparsity": 0.95, "mt_count": 0, "threshold": 0.0123,
           "emptied_layers": ["b.weight"], "macs": {"dense": 1000, "kept": 50},
           "layers": [{"name": "a.weight", "size": 90, "kept": 5, "sparsity": 85 / 90, "emptied": False},
                      {"name": "b.weight", "size": 10, "kept": 0, "sparsity": 1.0, "emptied": True}]}
    lines = prune_to_text(doc, ["out/pruned.safetensors", "out/prune.json"]).splitlines()
    assert lines[:3] == ["pruned 95 of 100 weights (sparsity 95.0000%, MT 0 per layer, threshold |w| 0.0123)",
                         "MACs 1,000 -> 50 (5.00% of dense)", "emptied layers: b.weight"]
    assert lines[3].split() == ["layer", "size", "kept", "sparsity"]
    assert lines[5].split() == ["a.weight", "90", "5", "94.44%"]
    assert lines[6].split() == ["b.weight", "10", "0", "100.00%", "EMPTIED"]
    assert lines[7] == "wrote out/pruned.safetensors, out/prune.json"
