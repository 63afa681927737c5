"""Semivalues: size weights, exact values from a table, and estimates that converge within their stated error."""

from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np
import pytest
from estimator_games import SHIPPED_TABLE, AdditiveGame, ThresholdGame, random_pairwise

from shapley_svc.errors import ConfigError
from shapley_svc.estimators import estimate, make_estimator
from shapley_svc.estimators.base import EstimatorSettings
from shapley_svc.estimators.exact import all_coalitions, shapley_from_table
from shapley_svc.estimators.semivalue import (
    SemivalueEstimator,
    beta_shapley_size_weights,
    pruning_size_weights,
    semivalue_from_table,
    water_fill,
    weighted_banzhaf_size_weights,
)
from shapley_svc.estimators.table import TableGame

# (registry name, params, the size weights they mean for n players)
REGISTERED = (
    ("pruning_semivalue", {"removed": 3}, lambda n: pruning_size_weights(n, 3)),
    ("beta_shapley", {}, lambda n: beta_shapley_size_weights(n, 16.0, 1.0)),
    ("weighted_banzhaf", {}, lambda n: weighted_banzhaf_size_weights(n, 0.5)),
)


def full_table(game: AdditiveGame) -> np.ndarray:
    """float[2^n, t]: every coalition's value, rows as in ``all_coalitions``."""
    return game(all_coalitions(game.n_players))


def brute_force_semivalue(table: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """phi_i = sum_{S in N - i} p_|S| / C(n - 1, |S|) (v(S + i) - v(S)), straight from the definition."""
    n = len(weights)
    values = np.zeros(n)
    for player in range(n):
        others = [j for j in range(n) if j != player]
        for size in range(n):
            for members in combinations(others, size):
                code = sum(1 << j for j in members)
                marginal = table[code | 1 << player, 0] - table[code, 0]
                values[player] += weights[size] / comb(n - 1, size) * marginal
    return values


@pytest.mark.parametrize(
    "weights",
    [
        pruning_size_weights(6, 2),
        beta_shapley_size_weights(6, 16.0, 1.0),
        beta_shapley_size_weights(6, 1.0, 4.0),
        weighted_banzhaf_size_weights(6, 0.3),
    ],
)
def test_exact_semivalue_from_a_table_matches_the_definition(weights: np.ndarray) -> None:
    table = full_table(ThresholdGame(6, seed=4))
    np.testing.assert_allclose(semivalue_from_table(table, weights)[0], brute_force_semivalue(table, weights))


def test_known_semivalues_are_special_cases() -> None:
    table = full_table(ThresholdGame(7, seed=1))
    shapley = shapley_from_table(table)
    np.testing.assert_allclose(semivalue_from_table(table, beta_shapley_size_weights(7, 1.0, 1.0)), shapley, atol=1e-12)
    np.testing.assert_allclose(semivalue_from_table(table, pruning_size_weights(7, 6)), shapley, atol=1e-12)
    rows, everyone = all_coalitions(7), (1 << 7) - 1
    leave_one_out = table[everyone, 0] - table[everyone ^ (1 << np.arange(7)), 0]
    np.testing.assert_allclose(semivalue_from_table(table, pruning_size_weights(7, 0))[0], leave_one_out, atol=1e-12)
    banzhaf = table[:, 0] @ rows / rows.sum(axis=0) - table[:, 0] @ ~rows / (~rows).sum(axis=0)
    np.testing.assert_allclose(
        semivalue_from_table(table, weighted_banzhaf_size_weights(7, 0.5))[0], banzhaf, atol=1e-12
    )


def test_pairwise_game_semivalue_has_its_closed_form() -> None:
    """v = sum b_i + sum_{i<j} g_ij: phi_i = b_i + E[|S|] / (n - 1) sum_j g_ij under the size weights."""
    game = random_pairwise(7, seed=3)
    weights = beta_shapley_size_weights(7, 4.0, 1.0)
    interactions = (game.interactions + game.interactions.T).sum(axis=1)
    expected = game.weights[0] + weights @ np.arange(7) / 6 * interactions
    np.testing.assert_allclose(semivalue_from_table(full_table(game), weights)[0], expected)


def test_size_weights_sum_to_one_and_lean_the_stated_way() -> None:
    n = 12
    pruning = pruning_size_weights(n, 3)
    np.testing.assert_allclose(pruning[8:], 0.25)
    assert not pruning[:8].any()
    small, large = beta_shapley_size_weights(n, 16.0, 1.0), beta_shapley_size_weights(n, 1.0, 16.0)
    assert np.all(np.diff(small) < 0) and np.all(np.diff(large) > 0)  # alpha > beta: small coalitions
    np.testing.assert_allclose(small, large[::-1])
    np.testing.assert_allclose(weighted_banzhaf_size_weights(n, 0.5), [comb(11, s) / 2**11 for s in range(n)])
    for weights in (pruning, small, weighted_banzhaf_size_weights(n, 0.8)):
        assert weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(("name", "params", "weights_of"), REGISTERED)
def test_estimates_cover_the_exact_semivalue_of_the_shipped_table(name: str, params: dict, weights_of) -> None:
    game = TableGame.from_npz(SHIPPED_TABLE)
    n = game.n_players
    truth = semivalue_from_table(full_table(game), weights_of(n))[0]
    errors, stderrs = [], []
    for seed in range(20):
        result = estimate(make_estimator(name, n, 10 * n, seed=seed, params=params), TableGame.from_npz(SHIPPED_TABLE))
        assert result.evaluations_used <= 10 * n
        errors.append(result.values[0] - truth)
        stderrs.append(result.stderr[0])
    errors, stderrs = np.array(errors), np.array(stderrs)
    assert np.mean(np.abs(errors) <= 2 * stderrs) >= 0.85  # measured 0.93-0.96 (2 stderr, 20 seeds)
    assert np.sqrt(np.mean(errors**2)) < 0.3 * np.sqrt(np.mean(truth**2))


@pytest.mark.parametrize(("name", "params", "weights_of"), REGISTERED)
def test_estimates_converge_on_an_analytic_game(name: str, params: dict, weights_of) -> None:
    n = 10
    game = random_pairwise(n, seed=5)
    interactions = (game.interactions + game.interactions.T).sum(axis=1)
    truth = game.weights[0] + weights_of(n) @ np.arange(n) / (n - 1) * interactions
    rmse, covered = {}, []
    for factor in (4, 32):
        errors = []
        for seed in range(8):
            result = estimate(make_estimator(name, n, factor * n, seed=seed, params=params), game)
            errors.append(result.values[0] - truth)
            covered.extend(np.abs(errors[-1]) <= 2 * result.stderr[0] + 1e-9)
        rmse[factor] = np.sqrt(np.mean(np.square(errors)))
    assert rmse[32] < 0.5 * rmse[4]
    assert np.mean(covered) >= 0.85


def test_a_budget_covering_the_weighted_sizes_is_exact_with_zero_stderr() -> None:
    game = TableGame.from_npz(SHIPPED_TABLE)
    budget = 1 + sum(comb(12, size) for size in range(9, 13))  # the empty coalition and sizes 9 .. 12
    result = estimate(make_estimator("pruning_semivalue", 12, budget, params={"removed": 2}), game)
    exact = semivalue_from_table(full_table(TableGame.from_npz(SHIPPED_TABLE)), pruning_size_weights(12, 2))
    np.testing.assert_allclose(result.values, exact, atol=1e-9)
    assert not result.stderr.any() and result.evaluations_used == budget == game.evaluations_used


def test_a_budget_too_small_to_estimate_says_so_with_infinite_stderr() -> None:
    result = estimate(make_estimator("weighted_banzhaf", 6, 2), ThresholdGame(6))
    assert np.all(np.isfinite(result.values)) and np.all(np.isinf(result.stderr))


def test_seed_compatible_is_a_one_size_contrast_for_the_pruning_regime() -> None:
    """E[v | i in T] - E[v | i out] at |T| = kept: i's marginal with n - kept others missing, less the others'."""
    n, game = 7, ThresholdGame(7, seed=2)
    table, kept = full_table(game)[:, 0], round(0.9 * n)
    result = estimate(make_estimator("seed_compatible", n, comb(n, kept) + 2), game)  # enumerates size kept

    def marginal(player: int, without: int) -> float:  # over coalitions of size kept - 1 lacking both
        others = [j for j in range(n) if j not in (player, without)]
        rows = [sum(1 << j for j in members) for members in combinations(others, kept - 1)]
        return float(np.mean([table[row | 1 << player] - table[row] for row in rows]))

    contrast = [marginal(i, i) - np.mean([marginal(j, i) for j in range(n) if j != i]) for i in range(n)]
    np.testing.assert_allclose(result.values[0], contrast, atol=1e-12)
    additive = AdditiveGame(np.array([0.5, -1.0, 2.0, 0.0, 0.25, 1.5, -0.3]))
    weights = additive.weights[0]
    seed_paper = estimate(make_estimator("seed_compatible", n, comb(n, kept) + 2), additive).values[0]
    np.testing.assert_allclose(seed_paper, (n * weights - weights.sum()) / (n - 1), atol=1e-12)


def test_parameters_are_checked_with_the_fix_named() -> None:
    with pytest.raises(ConfigError, match="did you mean 'removed'"):
        make_estimator("pruning_semivalue", 12, 100, params={"remove": 3})
    with pytest.raises(ConfigError, match="not both"):
        make_estimator("pruning_semivalue", 12, 100, params={"removed": 3, "keep_fraction": 0.8})
    with pytest.raises(ConfigError, match="0 to n_players - 1 = 11"):
        make_estimator("pruning_semivalue", 12, 100, params={"removed": 12})
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        make_estimator("pruning_semivalue", 12, 100, params={"keep_fraction": 1.0})
    with pytest.raises(ConfigError, match="alpha must be a positive number"):
        make_estimator("beta_shapley", 12, 100, params={"alpha": 0})
    with pytest.raises(ConfigError, match="did you mean 'weight'"):
        make_estimator("weighted_banzhaf", 12, 100, params={"weights": 0.7})
    with pytest.raises(ConfigError, match="must lie in \\[0, 1\\]"):
        make_estimator("weighted_banzhaf", 12, 100, params={"weight": 1.5})
    with pytest.raises(ConfigError, match="one weight per coalition size"):
        SemivalueEstimator(EstimatorSettings(n_players=4, budget=20), [0.5, 0.5])
    with pytest.raises(ConfigError, match="rounds must be a positive integer"):
        make_estimator("beta_shapley", 12, 100, params={"rounds": 0})


def test_default_pruning_semivalue_matches_the_seed_papers_subnetworks_and_records_its_params() -> None:
    default = make_estimator("pruning_semivalue", 12, 100)
    assert default.removed == 12 - make_estimator("seed_compatible", 12, 100).kept == 1
    assert make_estimator("pruning_semivalue", 20, 100, params={"keep_fraction": 0.75}).removed == 5
    result = estimate(make_estimator("pruning_semivalue", 6, 30, params={"removed": 2}), ThresholdGame(6))
    assert result.params["removed"] == 2 and result.params["size_weights"] == pytest.approx(
        [0, 0, 0, 1 / 3, 1 / 3, 1 / 3]
    )
    with pytest.raises(ConfigError, match="cannot be merged"):
        result.merge(result)


def test_water_fill_respects_capacities_and_shares() -> None:
    counts = water_fill(np.array([1.0, 1.0, 2.0, 0.0]), np.array([1, 100, 100, 100]), 41)
    assert counts.tolist() == [1, 13, 27, 0]
    assert water_fill(np.array([1.0, 3.0]), np.array([2, 5]), 50).tolist() == [2, 5]
