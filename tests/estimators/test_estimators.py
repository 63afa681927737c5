"""Every estimator on games with known answers: additive, pairwise, symmetric, null player, budget, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from estimator_games import (
    AdditiveGame,
    CountingGame,
    SizeGame,
    ThresholdGame,
    exact_shapley,
    random_pairwise,
)

from shapley_svc.errors import ConfigError, EvaluationError
from shapley_svc.estimators import REGISTRY, estimate, make_estimator
from shapley_svc.estimators.table import TableGame

ALL = tuple(REGISTRY)
SAMPLING = tuple(name for name in ALL if name != "exact")
# Semivalues other than Shapley's: on an additive game every one equals the weights; no efficiency, no symmetry
# to Shapley's value (their own tests are in test_semivalue.py).
SEMIVALUES = ("pruning_semivalue", "beta_shapley", "weighted_banzhaf")
# Exact on additive games: every walk/pair/regression recovers the weights exactly.
EXACT_ON_ADDITIVE = (
    "structured_gp",
    "heredity_gp",
    "kernelshap",
    "permutation",
    "truncated_permutation",
    "player_stratified",
    "leave_one_out",
    "exact",
    *SEMIVALUES,
)
# Efficiency (sum phi = v(N) - v(empty)) is guaranteed by these.
EFFICIENT = ("structured_gp", "heredity_gp", "kernelshap", "permutation", "exact")


def budget_for(name: str, n_players: int) -> int:
    return 1 << n_players if name == "exact" else 12 * n_players


@pytest.mark.parametrize("name", EXACT_ON_ADDITIVE)
def test_additive_game_is_recovered_exactly(name: str) -> None:
    game = AdditiveGame(np.array([[0.5, -1.0, 2.0, 0.0, 0.25, 1.5, -0.3]]))
    result = estimate(make_estimator(name, 7, budget_for(name, 7), seed=3), game)
    np.testing.assert_allclose(result.values, game.shapley(), atol=1e-6)


@pytest.mark.parametrize("name", ("stratified", "banzhaf"))
def test_additive_game_within_stated_error(name: str) -> None:
    game = AdditiveGame(np.array([[0.5, -1.0, 2.0, 0.0, 0.25, 1.5, -0.3]]))
    result = estimate(make_estimator(name, 7, 80, seed=3), game)
    assert np.all(np.abs(result.values - game.shapley()) <= 4 * result.stderr + 1e-9)


@pytest.mark.parametrize("name", ("permutation", "kernelshap", "heredity_gp", "structured_gp"))
def test_pairwise_game_is_exact_with_antithetic_or_paired_samples(name: str) -> None:
    game = random_pairwise(8, seed=1)
    result = estimate(make_estimator(name, 8, 60, seed=0), game)
    np.testing.assert_allclose(result.values, game.shapley(), atol=1e-5)


@pytest.mark.parametrize("name", EFFICIENT)
def test_efficiency(name: str) -> None:
    game = ThresholdGame(8)
    result = estimate(make_estimator(name, 8, budget_for(name, 8), seed=2), game)
    np.testing.assert_allclose(result.values.sum(axis=1), result.v_full - result.v_empty, atol=1e-6)


@pytest.mark.parametrize("name", ("exact", "kernelshap", "heredity_gp", "structured_gp", "stratified"))
def test_symmetric_players_get_equal_values_when_the_design_is_complete(name: str) -> None:
    game = SizeGame(6)
    result = estimate(make_estimator(name, 6, 64, seed=0), game)
    np.testing.assert_allclose(result.values, game.shapley(), atol=1e-6)


@pytest.mark.parametrize(
    "name", ("exact", "permutation", "truncated_permutation", "player_stratified", "leave_one_out")
)
def test_null_player_gets_exactly_zero(name: str) -> None:
    game = ThresholdGame(7)
    result = estimate(make_estimator(name, 7, budget_for(name, 7), seed=5), game)
    assert result.values[0, 0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ("kernelshap", "heredity_gp", "structured_gp", "stratified", *SEMIVALUES))
def test_null_player_close_to_zero(name: str) -> None:
    game = ThresholdGame(7)
    result = estimate(make_estimator(name, 7, 80, seed=5), game)
    assert abs(result.values[0, 0]) <= 4 * result.stderr[0, 0] + 0.02


@pytest.mark.parametrize("name", SAMPLING)
@pytest.mark.parametrize("budget", [2, 3, 7, 10, 31, 100])
def test_budget_is_never_exceeded(name: str, budget: int) -> None:
    game = CountingGame(ThresholdGame(9))
    result = estimate(make_estimator(name, 9, budget, seed=budget), game)
    assert game.distinct <= budget
    assert len(game.served) == game.distinct  # no coalition is asked twice
    assert result.evaluations_used == game.distinct


@pytest.mark.parametrize("name", ALL)
def test_several_tasks_at_once_match_one_task_runs(name: str) -> None:
    weights = np.array([[0.5, -1.0, 2.0, 0.1, 0.3], [1.0, 0.0, -0.5, 0.7, 0.2]])
    both = estimate(make_estimator(name, 5, budget_for(name, 5), seed=1), AdditiveGame(weights))
    assert both.values.shape == (2, 5)
    for task in range(2):
        single = estimate(make_estimator(name, 5, budget_for(name, 5), seed=1), AdditiveGame(weights[task]))
        np.testing.assert_allclose(both.values[task], single.values[0], atol=1e-9)


def table_of(game: ThresholdGame) -> TableGame:
    """The game as a lookup table, so values do not depend on how coalitions are batched."""
    codes = np.arange(1 << game.n_players)
    table = game(((codes[:, None] >> np.arange(game.n_players)) & 1).astype(bool))
    return TableGame(table, game.player_names)


def drive_shuffled(name: str, game: TableGame, batch: int, seed: int) -> np.ndarray:
    """Ask a whole round in batches of ``batch``, tell in a shuffled order with duplicates."""
    estimator = make_estimator(name, game.n_players, 70, seed=7)
    shuffle = np.random.default_rng(seed)
    while not estimator.done:
        requests = []
        while batch_requests := estimator.ask(batch):
            requests.extend(batch_requests)
        for position in shuffle.permutation(len(requests)):
            request = requests[position]
            estimator.tell(request.request_id, game(request.coalitions))
            estimator.tell(request.request_id, game(request.coalitions))  # duplicate: ignored
    return estimator.result().values


@pytest.mark.parametrize("name", SAMPLING)
def test_same_seed_same_result_whatever_batch_size_and_tell_order(name: str) -> None:
    game = table_of(ThresholdGame(8))
    reference = estimate(make_estimator(name, 8, 70, seed=7), game, batch_size=1000).values
    for batch, order_seed in ((1, 0), (5, 1), (64, 2)):
        np.testing.assert_array_equal(drive_shuffled(name, game, batch, order_seed), reference)


def test_tell_rejects_unknown_ids_and_bad_values() -> None:
    estimator = make_estimator("kernelshap", 4, 10, seed=0)
    (request,) = estimator.ask(3)
    with pytest.raises(ConfigError, match="unknown request id"):
        estimator.tell(999, np.zeros((3, 1)))
    with pytest.raises(EvaluationError, match="NaN"):
        estimator.tell(request.request_id, np.full((3, 1), np.nan))
    with pytest.raises(EvaluationError, match="3 coalitions"):
        estimator.tell(request.request_id, np.zeros((2, 1)))


def test_sampling_estimators_converge_on_a_nonlinear_game() -> None:
    game = ThresholdGame(8)
    truth = exact_shapley(game)
    for name in ("structured_gp", "heredity_gp", "kernelshap", "permutation", "stratified", "player_stratified"):
        result = estimate(make_estimator(name, 8, 256, seed=0), game)
        assert np.sqrt(np.mean((result.values - truth) ** 2)) < 0.05, name


def test_unknown_estimator_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'kernelshap'"):
        make_estimator("kernelshapp", 4, 10)


def test_exact_refuses_a_small_budget() -> None:
    with pytest.raises(ConfigError, match="2\\^6 = 64"):
        make_estimator("exact", 6, 63)
