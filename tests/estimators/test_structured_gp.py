"""The structured-prior estimator: closed-form covariances against brute force, structure choice, exactness."""

from __future__ import annotations

import numpy as np
import pytest
from estimator_games import SHIPPED_TABLE, AdditiveGame, SizeGame, random_pairwise

from shapley_svc.estimators import DEFAULT_ESTIMATOR, estimate, make_estimator
from shapley_svc.estimators.exact import all_coalitions, shapley_from_table
from shapley_svc.estimators.structured_gp import (
    AdditiveComponent,
    HeredityComponent,
    LocalComponent,
    SizeComponent,
    choose_structure,
    greedy_design,
    jackknife_sd,
    structure_families,
)
from shapley_svc.estimators.table import TableGame

N_PLAYERS = 6
COMPONENTS = {
    "additive": AdditiveComponent(N_PLAYERS),
    "heredity": HeredityComponent(np.linspace(0.2, 0.9, N_PLAYERS)),
    "size_smooth": SizeComponent(N_PLAYERS, 0.3),
    "size_free": SizeComponent(N_PLAYERS, 0.0),
    "local": LocalComponent(N_PLAYERS, 4, 0.7),
}


@pytest.mark.parametrize("name", COMPONENTS)
def test_covariances_with_phi_match_brute_force(name: str) -> None:
    component = COMPONENTS[name]
    signs = np.where(all_coalitions(N_PLAYERS), 1.0, -1.0)  # every coalition, as sign rows
    gram = component.gram(signs, signs)
    shapley_operator = shapley_from_table(np.eye(len(signs))).T  # phi = operator @ table, [n, 2^n]
    np.testing.assert_allclose(component.cross(signs).T, shapley_operator @ gram, atol=1e-10)
    expected_variance = np.einsum("ij,jk,ik->i", shapley_operator, gram, shapley_operator)
    np.testing.assert_allclose(component.prior_variance(), expected_variance, atol=1e-10)


def test_gram_is_the_covariance_of_an_odd_function() -> None:
    signs = np.where(all_coalitions(N_PLAYERS), 1.0, -1.0)
    for component in COMPONENTS.values():
        gram = component.gram(signs, signs)
        np.testing.assert_allclose(gram, gram.T, atol=1e-12)
        np.testing.assert_allclose(component.gram(signs, -signs), -gram, atol=1e-12)
        assert np.linalg.eigvalsh(gram).min() > -1e-9


def test_structure_stays_off_on_an_additive_game_and_size_turns_on_for_a_size_game() -> None:
    rng = np.random.default_rng(0)
    signs = np.where(rng.random((120, 10)) < 0.5, 1.0, -1.0)
    additive = signs @ rng.normal(size=10)
    families = structure_families(10, np.ones(10))
    assert all(variance == 0 for _, variance in choose_structure(signs, additive / additive.std(), families).values())
    sizes = signs.sum(axis=1)
    size_game = np.tanh(sizes / 3.0)
    chosen = choose_structure(signs, size_game / size_game.std(), families)
    assert chosen["size"][1] > 0


def test_weak_local_interactions_are_found_below_the_other_structures_grid() -> None:
    rng = np.random.default_rng(0)
    signs = np.where(rng.random((200, 16)) < 0.5, 1.0, -1.0)
    families = structure_families(16, np.ones(16))
    window = LocalComponent(16, 4, 0.9)  # at weight 3e-4 its variance is 1e-3 of the additive part's
    gram = AdditiveComponent(16).gram(signs, signs) + 3e-4 * window.gram(signs, signs)
    odd_parts = np.linalg.cholesky(gram + 1e-9 * np.eye(len(gram))) @ rng.standard_normal(len(gram))
    chosen = choose_structure(signs, odd_parts, families)
    assert 1e-4 <= chosen["local"][1] <= 1e-3
    assert chosen["size"][1] == 0 and chosen["heredity"][1] == 0


def test_default_is_structured_and_exact_on_additive_and_pairwise_games() -> None:
    assert DEFAULT_ESTIMATOR == "structured_gp"
    additive = AdditiveGame(np.array([[0.5, -1.0, 2.0, 0.0, 0.25, 1.5, -0.3], [1.0, 0.0, 0.3, -0.2, 0.0, 0.1, 0.4]]))
    result = estimate(make_estimator("default", 7, 60, seed=1), additive)
    np.testing.assert_allclose(result.values, additive.shapley(), atol=1e-6)
    pairwise = random_pairwise(9, seed=2)
    result = estimate(make_estimator("default", 9, 70, seed=1), pairwise)
    np.testing.assert_allclose(result.values, pairwise.shapley(), atol=1e-5)
    assert result.params["structure"] and result.evaluations_used <= 70


def test_size_game_is_nearly_exact_from_a_small_sample() -> None:
    game = SizeGame(20)
    result = estimate(make_estimator("structured_gp", 20, 100, seed=0), game)
    np.testing.assert_allclose(result.values, game.shapley(), atol=1e-3)
    np.testing.assert_allclose(result.values.sum(), result.v_full - result.v_empty, atol=1e-6)


def posterior_variance_total(signs: np.ndarray, components: list) -> float:
    """Summed posterior variance of phi after observing the odd parts at ``signs``, recomputed from scratch."""
    gram = sum(weight * component.gram(signs, signs) for weight, component in components)
    gram += 1e-9 * np.trace(gram) / len(gram) * np.eye(len(gram))
    cross = sum(weight * component.cross(signs) for weight, component in components)
    prior = sum(weight * component.prior_variance() for weight, component in components)
    return float((prior - np.einsum("pi,pq,qi->i", cross, np.linalg.inv(gram), cross)).sum())


def test_greedy_design_picks_what_brute_force_picks_one_pair_at_a_time() -> None:
    components = [(1.0, AdditiveComponent(N_PLAYERS)), (0.5, HeredityComponent(np.linspace(0.3, 0.9, N_PLAYERS)))]
    signs = np.where(all_coalitions(N_PLAYERS), 1.0, -1.0)
    observed = signs[[-1, 1, 2]]  # the full coalition's pair and two singletons' pairs
    candidates = signs[3 : 2**N_PLAYERS // 2]
    picked = greedy_design(observed, candidates, [components], 4)
    expected: list[int] = []
    for _ in range(4):
        totals = [
            np.inf
            if index in expected
            else posterior_variance_total(np.vstack([observed, candidates[[*expected, index]]]), components)
            for index in range(len(candidates))
        ]
        expected.append(int(np.argmin(totals)))
    assert picked == expected


def test_designed_rounds_stay_exact_on_a_pairwise_game_within_the_budget() -> None:
    game = random_pairwise(14, seed=5)  # pairwise: exact once the additive part is pinned down
    designed = make_estimator("structured_gp", 14, 60, seed=0)
    result = estimate(designed, game)
    assert result.params["first_round"] == 30 and result.evaluations_used <= 60
    np.testing.assert_allclose(result.values, game.shapley(), atol=1e-5)


def test_first_round_holds_every_singleton_and_its_complement_once_they_fit() -> None:
    n_players = 12
    estimator = make_estimator("structured_gp", n_players, 5 * n_players, seed=0)  # KernelSHAP enumerates from ~10n
    first_round = np.vstack([request.coalitions for request in estimator.ask(estimator.params()["first_round"])])
    sizes = first_round.sum(axis=1)
    assert len(first_round) == 2 * n_players + 2
    np.testing.assert_array_equal(first_round[sizes == 1], np.eye(n_players, dtype=bool))
    absent = np.argmax(~first_round[sizes == n_players - 1], axis=1)  # the one player each leaves out
    np.testing.assert_array_equal(np.sort(absent), np.arange(n_players))


def test_jackknife_matches_refitting_without_each_pair() -> None:
    rng = np.random.default_rng(3)
    components = [(1.0, AdditiveComponent(N_PLAYERS)), (0.5, LocalComponent(N_PLAYERS, 4, 0.7))]
    signs = np.where(rng.random((14, N_PLAYERS)) < 0.5, 1.0, -1.0)
    targets = rng.normal(size=14)
    gram = sum(weight * component.gram(signs, signs) for weight, component in components) + 1e-6 * np.eye(14)
    cross = sum(weight * component.cross(signs) for weight, component in components)
    inverse = np.linalg.inv(gram)
    free = np.arange(14) != 0  # pair 0 is never dropped, as the exact pair
    means = []
    for dropped in np.flatnonzero(free):
        kept = np.arange(14) != dropped
        means.append(cross[kept].T @ np.linalg.solve(gram[np.ix_(kept, kept)], targets[kept]))
    means = np.array(means)
    brute_force = np.sqrt((len(means) - 1) / len(means) * ((means - means.mean(axis=0)) ** 2).sum(axis=0))
    np.testing.assert_allclose(
        jackknife_sd(cross.T @ inverse, inverse @ targets, np.diag(inverse), free), brute_force, rtol=1e-6
    )


def test_stderr_covers_the_error_on_the_real_table() -> None:
    """The posterior sd alone covered about half the players here (the design trusts the fitted prior)."""
    covered = []
    for seed in range(3):
        game = TableGame.from_npz(SHIPPED_TABLE, budget=120)
        result = estimate(make_estimator("default", game.n_players, 120, seed=seed), game)
        covered.extend(np.abs(result.values[0] - game.exact_shapley[0]) <= result.stderr[0])
    assert np.mean(covered) >= 0.68
