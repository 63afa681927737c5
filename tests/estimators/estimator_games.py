"""Games with known Shapley values for the estimator tests (no model needed)."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from shapley_svc.estimators.exact import shapley_from_table
from shapley_svc.types import Coalitions, Values

# the exact table of the demo model shipped in ../shared/games
SHIPPED_TABLE = Path(__file__).resolve().parents[3] / "shared" / "games" / "smollm2_blocks18-29_wikitext.npz"


class AdditiveGame:
    """v(S) = c + sum_{i in S} weights_i (one column per row of ``weights``); phi = weights."""

    def __init__(self, weights: np.ndarray, constant: float = 1.0) -> None:
        self.weights = np.atleast_2d(weights)
        self.constant = constant
        self.calls = 0

    @property
    def n_players(self) -> int:
        return self.weights.shape[1]

    @property
    def player_names(self) -> tuple[str, ...]:
        return tuple(f"p{i}" for i in range(self.n_players))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(f"t{j}" for j in range(self.weights.shape[0]))

    def shapley(self) -> np.ndarray:
        return self.weights

    def __call__(self, coalitions: Coalitions) -> Values:
        self.calls += 1
        return self.constant + coalitions.astype(float) @ self.weights.T


class PairwiseGame(AdditiveGame):
    """Additive plus pairwise: v(S) = sum beta_i + sum_{i<j in S} gamma_ij; phi_i = beta_i + sum_j gamma_ij / 2."""

    def __init__(self, weights: np.ndarray, interactions: np.ndarray) -> None:
        super().__init__(weights, constant=0.0)
        self.interactions = np.triu(interactions, 1)

    def shapley(self) -> np.ndarray:
        symmetric = self.interactions + self.interactions.T
        return self.weights + symmetric.sum(axis=1)[None, :] / 2

    def __call__(self, coalitions: Coalitions) -> Values:
        present = coalitions.astype(float)
        pairwise = np.einsum("ki,ij,kj->k", present, self.interactions, present)
        return super().__call__(coalitions) + pairwise[:, None]


class SizeGame(AdditiveGame):
    """v(S) = g(|S|): all players symmetric, phi_i = (g(n) - g(0)) / n."""

    def __init__(self, n_players: int) -> None:
        super().__init__(np.zeros(n_players))
        self.table = np.sqrt(np.arange(n_players + 1)) * 3.0

    def shapley(self) -> np.ndarray:
        return np.full((1, self.n_players), (self.table[-1] - self.table[0]) / self.n_players)

    def __call__(self, coalitions: Coalitions) -> Values:
        self.calls += 1
        return self.table[coalitions.sum(axis=1)][:, None]


class ThresholdGame(AdditiveGame):
    """A nonlinear game with a null player 0: v(S) = tanh(sum_{i in S} w_i - 1) + triple term, w_0 = 0."""

    def __init__(self, n_players: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        weights = rng.uniform(0.1, 1.0, n_players)
        weights[0] = 0.0
        super().__init__(weights)

    def __call__(self, coalitions: Coalitions) -> Values:
        self.calls += 1
        present = coalitions.astype(float)
        triple = present[:, 1] * present[:, 2] * present[:, 3]
        return (np.tanh(present @ self.weights[0] - 1.0) + 0.5 * triple)[:, None]


def exact_shapley(game: AdditiveGame) -> np.ndarray:
    """Exact values float[t, n] by enumeration (small n)."""
    n = game.n_players
    codes = np.arange(1 << n)
    table = game(((codes[:, None] >> np.arange(n)) & 1).astype(bool))
    return shapley_from_table(table)


class CountingGame:
    """Wraps a game and records every coalition it serves, to prove the budget."""

    def __init__(self, inner: AdditiveGame) -> None:
        self.inner = inner
        self.served: list[bytes] = []

    @property
    def n_players(self) -> int:
        return self.inner.n_players

    @property
    def player_names(self) -> tuple[str, ...]:
        return self.inner.player_names

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.inner.task_names

    @property
    def distinct(self) -> int:
        return len(set(self.served))

    def __call__(self, coalitions: Coalitions) -> Values:
        self.served.extend(row.tobytes() for row in coalitions)
        return self.inner(coalitions)


def random_pairwise(n_players: int, seed: int) -> PairwiseGame:
    """A pairwise-interaction game with random weights."""
    rng = np.random.default_rng(seed)
    interactions = np.zeros((n_players, n_players))
    for i, j in combinations(range(n_players), 2):
        interactions[i, j] = rng.normal(0, 0.5)
    return PairwiseGame(rng.normal(0, 1, n_players), interactions)
