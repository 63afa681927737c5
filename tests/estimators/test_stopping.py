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
    assert (yes | no).should_stop(estimator)
    assert not (yes & no).should_stop(estimator)
    assert (yes & ~no).should_stop(estimator)
    assert not (~yes).should_stop(estimator)


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
