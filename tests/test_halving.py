"""Successive halving: rung budgets within the search's share, and a promotion rule that ignores report order."""
import itertools
import math

import optuna
import pytest

from collapsekit.validation.halving import HalvingPruner, halving, reported_values, rung_sizes, rung_steps


def cost(n, steps):
    """Optimizer steps the search trains: each candidate up to the rung it is dropped at, the last to the end."""
    sizes = rung_sizes(n)
    return steps[-1] + sum(steps[r] * (sizes[r] - sizes[r + 1]) for r in range(len(sizes) - 1))


@pytest.mark.parametrize("n", [4, 5, 6, 7, 8, 12])
@pytest.mark.parametrize("total", [24, 69, 690])
def test_rungs_double_end_at_the_whole_run_and_cost_at_most_the_share(n, total):
    steps = rung_steps(n, total, target=n * total / 3)
    assert len(steps) == len(rung_sizes(n)) and steps[-1] == total
    assert all(0 < a <= b for a, b in zip(steps, steps[1:]))
    assert cost(n, steps) <= n * total / 3 + n  # within a step per candidate of the third (rounding down)
    assert steps[-2] <= total / 2  # the budgets grow by eta = 2 per rung at least at the top


def test_rung_sizes_halve_to_one():
    assert rung_sizes(7) == [7, 4, 2, 1] and rung_sizes(8) == [8, 4, 2, 1] and rung_sizes(1) == [1]


@pytest.mark.parametrize("n, runs", [(1, 2), (2, 2), (2, 3), (3, 3)])
def test_too_few_candidates_for_a_whole_run_shrink_every_rung_to_stay_within_the_share(n, runs):
    # `runs` candidates in the sweep, `n` of them racing: a third of the sweep cannot pay for one whole run.
    steps = rung_steps(n, 690, target=runs * 690 / 3)
    assert steps[-1] < 690 and cost(n, steps) <= runs * 690 / 3
    assert all(b == 2 * a or b == 2 * a + 1 for a, b in zip(steps, steps[1:]))  # still doubling


def test_the_rule_keeps_the_better_half_and_ties_go_to_the_earlier_candidate():
    steps = [10, 20, 40]
    values = {1: {10: 0.5}, 2: {10: 0.9}, 3: {10: 0.5}, 4: {10: 0.1}}
    state = halving([1, 2, 3, 4], steps, values)
    assert state.need == {1: 20, 2: 20} and state.dropped == {3: 10, 4: 10} and not state.finished
    values[2][20], values[1][20] = 0.7, 0.8
    state = halving([1, 2, 3, 4], steps, values)
    assert state.need == {1: 40} and state.dropped == {3: 10, 4: 10, 2: 20}
    values[1][40] = 0.85
    assert halving([1, 2, 3, 4], steps, values).winner == 1
    # lower-is-better (perplexity): the other way round
    assert halving([1, 2, 3, 4], [10], {c: {10: v[10]} for c, v in values.items()}, maximize=False).winner == 4


def test_values_no_better_than_a_constant_functions_tie_and_the_forecasts_order_decides():
    # At 0.3 epochs every candidate scores what a constant does (0.1 vs 0.1028, the largest class share: one test
    # image apart); the forecast ranks 42 first.
    values = {0: {10: 0.1028}, 8: {10: 0.1}, 42: {10: 0.1}, 46: {10: 0.1}}
    state = halving([42, 46, 0, 8], [10, 20], values, floor=0.1028)
    assert set(state.need) == {42, 46} and set(state.dropped) == {0, 8}
    assert set(halving([42, 46, 0, 8], [10, 20], values).need) == {0, 42}  # without a floor, one image decides
    values = {0: {10: 0.15}, 8: {10: 0.1}, 42: {10: 0.12}, 46: {10: 0.1}}
    assert set(halving([42, 46, 0, 8], [10, 20], values, floor=0.1028).need) == {0, 42}  # above it: by value
    # lower is better (perplexity): everything at or above the floor ties
    assert set(halving([3, 1, 2], [10, 20], {1: {10: 90.0}, 2: {10: 400.0}, 3: {10: 500.0}}, maximize=False,
                       floor=300.0).need) == {1, 3}


def test_a_rung_waits_for_every_candidate_and_nan_ranks_last():
    state = halving([1, 2, 3], [10, 20], {1: {10: 0.9}, 2: {10: 0.8}})
    assert state.need == {3: 10} and state.dropped == {}  # nothing decided before the rung is complete
    state = halving([1, 2, 3], [10, 20], {1: {10: math.nan}, 2: {10: 0.1}, 3: {10: 0.2}})
    assert set(state.need) == {3, 2} and state.dropped == {1: 10}


def _trials(order, values):
    """FrozenTrials reporting `values` ({mt: {step: value}}), numbered in `order`."""
    out = []
    for number, mt in enumerate(order):
        t = optuna.trial.create_trial(params={"mt": mt}, distributions={
            "mt": optuna.distributions.CategoricalDistribution(sorted(values))},
            intermediate_values=dict(values[mt]), state=optuna.trial.TrialState.PRUNED)
        t.number = number
        out.append(t)
    return out


def test_the_answer_does_not_depend_on_the_order_trials_were_made_or_reported_in():
    values = {7: {4: 0.3}, 12: {4: 0.35, 8: 0.5}, 20: {4: 0.4, 8: 0.6, 16: 0.8}, 33: {4: 0.2}}
    pruner = HalvingPruner([7, 12, 20, 33], [4, 8, 16])
    winners = {pruner.state_from(_trials(order, values)).winner for order in itertools.permutations(values)}
    assert winners == {20}
    # A later trial of the same candidate (a retry) never overrides the first report of a step.
    retry = _trials([7, 12, 20, 33, 20], {**values, 20: {4: 0.4, 8: 0.6, 16: 0.8}})
    retry[-1].intermediate_values[8] = 0.0
    assert reported_values(retry)[20][8] == 0.6
