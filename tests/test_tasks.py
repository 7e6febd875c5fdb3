"""collapsekit.data.tasks: the loss, metric, baseline and `trained` of classification and causal LMs."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from collapsekit.data import DataBundle
from collapsekit.data.tasks import TASKS, model_logits, task_of, unigram_perplexity
from collapsekit.errors import CollapsekitError
from collapsekit.training.train import score

LM = TASKS["causal_lm"]


class Bigram(nn.Module):
    """Logits for the next token read from a table row of the current token (a bigram model)."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Embedding.from_pretrained(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, ids):
        return SimpleNamespace(logits=self.table(ids))  # as a Hugging Face model returns them


def test_perplexity_is_exp_of_the_mean_next_token_cross_entropy_by_hand():
    table = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    x = torch.tensor([[0, 1, 2], [2, 2, 0]])
    y = torch.tensor([[1, 2, 0], [0, 1, 1]])
    by_hand = []
    for a, b in zip(x.flatten().tolist(), y.flatten().tolist()):
        row = table[a]
        by_hand.append(-(row[b] - math.log(sum(math.exp(v) for v in row))))
    expected = math.exp(sum(by_hand) / len(by_hand))
    # Scored in batches of one sequence: sums over tokens, not a mean of per-batch means.
    scores = score(Bigram(table), TensorDataset(x, y), batch_size=1, task=LM)
    assert scores["perplexity"] == pytest.approx(expected, rel=1e-6)
    assert scores["loss"] == pytest.approx(sum(by_hand) / 6, rel=1e-6)
    # Next-token accuracy: argmax rows are 0, 1, and 0 (ties go to the first) -> hits at 2 of 6.
    assert scores["accuracy"] == pytest.approx(2 / 6)


def test_unigram_perplexity_is_the_best_constant_predictor():
    y = torch.tensor([[0, 0, 1, 2]])
    # f = (1/2, 1/4, 1/4): H = 1.5 ln 2, so the unigram perplexity is 2^1.5.
    assert unigram_perplexity(y, 3) == pytest.approx(2 ** 1.5)
    data = TensorDataset(torch.zeros(1, 4, dtype=torch.int64), y)
    at_f = score(Bigram([[math.log(0.5), math.log(0.25), math.log(0.25)]] * 3), data, task=LM)["perplexity"]
    assert at_f == pytest.approx(2 ** 1.5)
    for q in ([1.0, 1.0, 1.0], [0.0, 2.0, 0.0], [0.7, 0.2, 0.1]):  # any other constant does worse
        assert score(Bigram([q] * 3), data, task=LM)["perplexity"] > 2 ** 1.5


def test_trained_for_an_lm_closes_half_the_log_gap_from_unigram_to_dense():
    unigram, dense = 26.0, 9.0  # threshold sqrt(26 * 9) = 15.3
    assert LM.trained(15.2, unigram, dense) and not LM.trained(15.4, unigram, dense)
    assert LM.trained(20.0, unigram, dense, margin=0.2) and not LM.trained(20.0, unigram, dense, margin=0.3)
    assert not LM.trained(26.5, unigram, dense)  # a collapsed LM cannot beat the unigram
    assert LM.trained(25.0, unigram, None) and not LM.trained(27.0, unigram, 30.0)  # no dense model that learned
    classification = TASKS["classification"]
    assert classification.trained(0.21, 0.1, 0.9) and not classification.trained(0.19, 0.1, 0.9)
    assert (LM.higher_is_better, classification.higher_is_better) == (False, True)


def test_model_logits_reads_every_output_form_in_one_place():
    t = torch.randn(2, 3)
    assert model_logits(t) is t
    assert model_logits(SimpleNamespace(logits=t)) is t
    assert model_logits({"logits": t, "loss": None}) is t
    assert model_logits((t, torch.zeros(1))) is t
    with pytest.raises(CollapsekitError, match="without logits"):
        model_logits({"hidden": t})


def test_task_of_a_bundle_and_its_output_check():
    x = torch.zeros(4, 5, dtype=torch.int64)
    lm = DataBundle("t", TensorDataset(x, x), TensorDataset(x, x), 7, 1, 5, task="causal_lm")
    assert task_of(lm) is LM and lm.vocab_size == 7 and lm.context_length == 5
    LM.check_output(torch.zeros(1, 5, 7), lm)
    with pytest.raises(CollapsekitError, match=r"logits \[batch, 5 steps, 7 tokens\]"):
        LM.check_output(torch.zeros(1, 7), lm)
    with pytest.raises(CollapsekitError, match="unknown task 'regression'"):
        task_of(SimpleNamespace(task="regression"))
