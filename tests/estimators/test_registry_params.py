"""Estimator and stopping-rule registries as job specs use them: parameters by name, clear errors, measures."""

from __future__ import annotations

import numpy as np
import pytest
from estimator_games import AdditiveGame, ThresholdGame

from shapley_svc.errors import ConfigError
from shapley_svc.estimators import check_estimator, estimate, estimator_params, make_estimator
from shapley_svc.estimators.stopping import STOPPING_RULES, MaxEvaluations, StderrBelow, any_of, make_stopping


def test_params_reach_the_estimator_and_change_its_rounds() -> None:
    game = AdditiveGame(np.arange(6.0))
    default = make_estimator("permutation", 6, 60, seed=0)
    small = make_estimator("permutation", 6, 60, seed=0, params={"walks_per_round": 2, "antithetic": False})
    assert (default.walks_per_round, small.walks_per_round, small.antithetic) == (8, 2, False)
    result = estimate(small, game)
    np.testing.assert_allclose(result.values, game.shapley(), atol=1e-9)
    assert result.params["walks_per_round"] == 2 and result.params["antithetic"] is False


def test_truncated_permutation_keeps_its_tolerance_unless_given() -> None:
    assert make_estimator("truncated_permutation", 5, 40).truncation_tolerance == 0.01
    tuned = make_estimator("truncated_permutation", 5, 40, params={"truncation_tolerance": 0.2})
    assert (tuned.truncation_tolerance, tuned.name) == (0.2, "truncated_permutation")


def test_unknown_or_bad_params_are_config_errors_naming_the_fix() -> None:
    assert "walks_per_round" in estimator_params("permutation")
    with pytest.raises(ConfigError, match="did you mean 'walks_per_round'"):
        make_estimator("permutation", 6, 60, params={"walk_per_round": 2})
    with pytest.raises(ConfigError, match="it takes \\['round_size'\\]"):
        check_estimator("kernelshap", {"rounds": 3})
    with pytest.raises(ConfigError, match="rejected its parameters"):
        make_estimator("permutation", 6, 60, params={"walks_per_round": "eight"})
    with pytest.raises(ConfigError, match="did you mean 'permutation'"):
        check_estimator("permutaton")
    assert check_estimator("default") == "structured_gp"


def test_stopping_rules_by_name_with_their_params() -> None:
    assert set(STOPPING_RULES) == {"max_evaluations", "max_time", "stderr_below", "rank_stable", "pruning_set_decided"}
    rule = make_stopping("stderr_below", {"threshold": 0.05})
    assert isinstance(rule, StderrBelow) and rule.threshold == 0.05
    with pytest.raises(ConfigError, match="did you mean 'rank_stable'"):
        make_stopping("rank_stabel")
    with pytest.raises(ConfigError, match="does not take \\['treshold'\\]"):
        make_stopping("stderr_below", {"treshold": 0.05})
    with pytest.raises(ConfigError, match="needs \\['threshold'\\]"):
        make_stopping("stderr_below")
    with pytest.raises(ConfigError, match="positive"):
        make_stopping("max_evaluations", {"limit": 0})


def test_any_of_stops_on_the_first_rule_and_reports_every_measure() -> None:
    assert any_of([]) is None
    game = ThresholdGame(6)
    combined = any_of([make_stopping("stderr_below", {"threshold": 1e-12}), MaxEvaluations(40)])
    result = estimate(make_estimator("permutation", 6, 2000, seed=1), game, stopping=combined)
    assert 40 <= result.evaluations_used < 2000
    measures = combined.measures()
    assert set(measures) == {"max_stderr", "evaluations"}
    assert measures["evaluations"] == result.evaluations_used
    assert measures["max_stderr"] == pytest.approx(float(np.max(result.stderr)))
