"""Stopping criteria: composition, determinism at round boundaries, and the pruning-set bandit."""

from __future__ import annotations

import numpy as np
import pytest
from estimator_games import AdditiveGame, CountingGame, ThresholdGame

from shapley_svc.errors import ConfigError
from shapley_svc.estimators import estimate, make_estimator
from shapley_svc.estimators.stopping import (
    MaxEvaluations,
    MaxTime,
    PruningSetDecided,
    RankStable,
    StderrBelow,
)


def test_max_evaluations_stops_at_a_round_boundary() -> None:
    game = CountingGame(ThresholdGame(8))
    result = estimate(make_estimator("kernelshap", 8, 500, seed=0), game, stopping=MaxEvaluations(100))
    assert 100 <= result.evaluations_used < 500


def test_composition_with_and_or_not() -> None:
    estimator = make_estimator("permutation", 6, 200, seed=0)
    estimate(estimator, AdditiveGame(np.arange(6.0)), budget=30)
    used = estimator.evaluations_used
    yes, no = MaxEvaluations(used), MaxEvaluations(used + 1)
    result = estimator.result()
    assert (yes | no).should_stop(result)
    assert not (yes & no).should_stop(result)
    assert (yes & ~no).should_stop(result)
    assert not (~yes).should_stop(result)


def test_stderr_rank_and_time_criteria() -> None:
    game = ThresholdGame(6)
    precise = estimate(make_estimator("permutation", 6, 2000, seed=1), game, stopping=StderrBelow(0.05))
    assert np.max(precise.stderr) < 0.05
    stable = estimate(
        make_estimator("permutation", 10, 1000, seed=1), AdditiveGame(np.arange(10.0)), stopping=RankStable(2)
    )
    assert stable.evaluations_used < 1000
    assert estimate(make_estimator("permutation", 6, 2000, seed=1), game, stopping=MaxTime(1e-9)).counts.max() > 0
    with pytest.raises(ConfigError):
        RankStable(1)


def test_pruning_set_bandit_focuses_and_finds_the_lowest_players() -> None:
    weights = np.array([0.0, 0.05, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0])
    game = ThresholdGame(8)
    game.weights = weights[None, :]
    criterion = PruningSetDecided(k=2, z=2.0)
    estimator = make_estimator("player_stratified", 8, 4000, seed=0)
    result = estimate(estimator, game, stopping=criterion)
    assert set(np.argsort(result.values[0])[:2].tolist()) == {0, 1}
    assert result.evaluations_used < 4000
    # focused rounds spend more samples on boundary players than on clearly important ones
    assert min(result.counts[1], result.counts[2]) > result.counts[7], result.counts


def test_focus_is_refused_by_estimators_that_cannot_focus() -> None:
    with pytest.raises(ConfigError, match="player_stratified"):
        make_estimator("kernelshap", 4, 10).focus((0,))


def test_spec_rules_compose_with_all_of_and_any_of() -> None:
    from shapley_svc.estimators.stopping import make_stopping_rule
    from shapley_svc.spec import BudgetSpec

    budget = BudgetSpec.model_validate(
        {
            "evaluations": 500,
            "stopping": [
                {"all_of": [{"name": "max_evaluations", "params": {"limit": 40}}, {"name": "rank_stable"}]},
                {"any_of": [{"name": "max_evaluations", "params": {"limit": 400}}]},
            ],
        }
    )
    criterion = make_stopping_rule(budget.stopping)
    estimator = make_estimator("permutation", 6, 500, seed=0)
    estimate(estimator, AdditiveGame(np.arange(6.0)), budget=30)
    assert not criterion.should_stop(estimator.result()), "all_of must wait for both rules"
    result = estimate(make_estimator("permutation", 6, 500, seed=0), AdditiveGame(np.arange(6.0)), stopping=criterion)
    assert 40 <= result.evaluations_used < 400
    with pytest.raises(ValueError, match="exactly one of name, all_of or any_of"):
        BudgetSpec.model_validate(
            {"evaluations": 5, "stopping": [{"name": "rank_stable", "all_of": [{"name": "max_time"}]}]}
        )


def test_a_result_is_computed_once_per_state_and_read_by_every_rule() -> None:
    estimator = make_estimator("default", 6, 60, seed=0)
    calls: list[int] = []
    original = estimator._estimate

    def counted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls.append(estimator.evaluations_used)
        return original()

    estimator._estimate = counted  # type: ignore[method-assign]
    criterion = StderrBelow(1e-12) | RankStable(5) | MaxEvaluations(10_000)
    result = estimate(estimator, AdditiveGame(np.arange(6.0)), stopping=criterion)
    assert estimator.result() is result and estimator.result() is estimator.result()
    assert len(calls) == len(set(calls)), "the estimate was recomputed for a state it had already computed"


def test_checking_the_pruning_rule_steers_nothing_by_itself() -> None:
    estimator = make_estimator("player_stratified", 8, 400, seed=0)
    estimate(estimator, ThresholdGame(8), budget=60)
    rule = PruningSetDecided(k=2, z=50.0)
    assert not rule.should_stop(estimator.result())
    assert estimator._focus is None, "should_stop changed the estimator"
    assert rule.focus(estimator.result()) == rule.undecided(estimator.result().values[0], estimator.result().stderr[0])
