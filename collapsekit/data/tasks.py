"""What a data set asks of a model: classification or causal language modelling, as one small `Task` object.

Training, fine-tuning, validation and the MT search ask the bundle's task
(`task_of(bundle)`) for everything that differs between the two: the loss, the
metric and which direction is better, when a run counts as `trained`, and the
baseline the best constant function reaches. A new kind of task is one new
subclass and one entry in TASKS, not an `if` in every loop.

The LM baseline is the unigram perplexity (docs/language-models.md): a constant
function of the input predicts the same distribution q at every position, and
its cross-entropy on the test targets, -sum_v f_v log q_v with f the test
targets' token frequencies, is smallest at q = f (Gibbs' inequality). So
exp(H(f)) is the best perplexity any constant function, a collapsed LM
included, can reach on the test text.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from collapsekit.errors import CollapsekitError


def model_logits(out) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, `.logits` (Hugging Face), a dict's "logits", or the first
    tensor of a tuple. The one place that knows how models hand back their predictions."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise CollapsekitError(f"the model returned {type(out).__name__} without logits: return a tensor, or an "
                               "object with .logits")
    return logits


class Task:
    """Classification: one label per example, top-1 accuracy (higher is better), chance = 1 / classes."""

    name = "classification"
    metric = "accuracy"  # the key of `score`'s dict that decides: trained, best MT
    higher_is_better = True
    default_margin = 0.1  # trained: accuracy > chance + margin
    default_label_smoothing = 0.1  # masked fine-tuning's default

    def flat(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([predictions, classes] logits, [predictions] targets): every scored prediction as one row."""
        return logits.flatten(1), y

    def batch_sums(self, out, y: torch.Tensor) -> tuple[float, int, int]:
        """(summed cross-entropy, correct top-1 predictions, predictions) of one batch: what `score` adds up."""
        logits, target = self.flat(model_logits(out), y)
        logits = logits.float()
        loss = F.cross_entropy(logits, target, reduction="sum")
        return float(loss), int((logits.argmax(1) == target).sum()), int(target.numel())

    def score(self, loss_sum: float, correct: int, count: int) -> dict:
        """{accuracy, loss} (+ perplexity for an LM) from summed batch results."""
        count = max(count, 1)
        return {"accuracy": correct / count, "loss": loss_sum / count}

    def value(self, scores: dict) -> float:
        """The task's metric from a `score` dict."""
        return float(scores[self.metric])

    def baseline(self, bundle) -> float:
        """What a constant function scores on `bundle`'s test set, as validate reports it: chance, 1 / classes."""
        return 1.0 / bundle.num_classes

    def trained(self, value: float, baseline: float, dense: float | None, margin: float | None = None) -> bool:
        """True when a fine-tuned model's metric `value` shows it learned: accuracy > chance + margin."""
        return value > baseline + (self.default_margin if margin is None else margin)

    def forecast_chance(self, y: torch.Tensor, num_classes: int) -> float:
        """The accuracy the forecast's "accurate right after pruning" must beat (before its margin)."""
        return 1.0 / num_classes

    def check_output(self, out, bundle) -> None:
        """Raise a one-line error unless `out` (a model's output on an example batch) fits `bundle`."""
        logits = model_logits(out)
        if logits.dim() != 2 or logits.shape[1] != bundle.num_classes:
            raise CollapsekitError(f"the model gives outputs of shape {list(logits.shape)}, but {bundle.name} has "
                                   f"{bundle.num_classes} classes (pass --num-classes {bundle.num_classes})")

    def describe(self, scores: dict) -> str:
        """`score`'s numbers for a progress line."""
        return f"{scores['accuracy']:.2%}"


class CausalLM(Task):
    """Next-token prediction: logits [batch, steps, vocab] against the inputs shifted by one, judged by perplexity.

    `trained` (docs/language-models.md): the fine-tuned model closes at least
    `margin` (default half) of the gap between the unigram and the dense model's
    cross-entropy, ln ppl <= ln U - margin (ln U - ln D): with margin 0.5 the
    perplexity is at most the geometric mean sqrt(U D).
    """

    name = "causal_lm"
    metric = "perplexity"
    higher_is_better = False
    default_margin = 0.5
    default_label_smoothing = 0.0  # smoothing would bias the perplexity it is judged by

    def flat(self, logits, y):
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)

    def score(self, loss_sum, correct, count):
        scores = super().score(loss_sum, correct, count)
        return {**scores, "perplexity": perplexity(scores["loss"])}

    def baseline(self, bundle) -> float:
        """The unigram perplexity of the test targets: the best any constant function reaches (module docstring)."""
        return unigram_perplexity(bundle.test.tensors[1], bundle.num_classes)

    def trained(self, value, baseline, dense, margin=None):
        frac = self.default_margin if margin is None else margin
        if dense is None or not dense < baseline:
            return value < baseline  # no dense model that learned: beating the unigram is all there is
        return math.log(value) <= math.log(baseline) - frac * (math.log(baseline) - math.log(dense))

    def forecast_chance(self, y, num_classes):
        # A constant prediction of the most frequent token is right that often (a space, in English text).
        return float(torch.bincount(y.reshape(-1), minlength=num_classes).max()) / max(y.numel(), 1)

    def check_output(self, out, bundle):
        logits = model_logits(out)
        x = bundle.example_input()
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x.shape) or logits.shape[2] < bundle.num_classes:
            raise CollapsekitError(f"a causal LM on {bundle.name} must give logits [batch, {x.shape[1]} steps, "
                                   f"{bundle.num_classes} tokens]; the model gives {list(logits.shape)} (a factory "
                                   "accepting vocab_size and context_length receives them)")

    def describe(self, scores):
        return f"perplexity {scores['perplexity']:.2f}"


def perplexity(mean_loss: float) -> float:
    """exp(mean next-token cross-entropy in nats); inf when it overflows."""
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


def unigram_perplexity(targets: torch.Tensor, vocab_size: int) -> float:
    """exp(H(f)) of the targets' token frequencies f: the perplexity of the best constant predictor on them."""
    counts = torch.bincount(targets.reshape(-1), minlength=vocab_size).double()
    f = counts[counts > 0] / counts.sum()
    return math.exp(float(-(f * f.log()).sum()))


TASKS: dict[str, Task] = {"classification": Task(), "causal_lm": CausalLM()}


def task_of(bundle) -> Task:
    """The Task of a DataBundle (classification unless it says otherwise)."""
    name = getattr(bundle, "task", "classification")
    if name not in TASKS:
        raise CollapsekitError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


__all__ = ["Task", "CausalLM", "TASKS", "task_of", "model_logits", "perplexity", "unigram_perplexity"]
