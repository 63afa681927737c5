"""Exact Shapley values by enumerating all 2^n coalitions (n <= 20).

phi_i = sum_{S subset N \\ {i}} |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S))   (Shapley 1953).
Costs 2^n evaluations; stderr is zero.
"""

from __future__ import annotations

from math import factorial

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import Estimator, EstimatorSettings
from shapley_svc.types import Coalitions

MAX_EXACT_PLAYERS = 20


def all_coalitions(n_players: int) -> Coalitions:
    """bool[2^n, n]; row m holds coalition m (bit i of m says whether player i is present)."""
    codes = np.arange(1 << n_players, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n_players)) & 1).astype(bool)


def shapley_from_table(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values float[t, n] from a full table float[2^n, t] indexed as in ``all_coalitions``."""
    n_rows = values.shape[0]
    n_players = n_rows.bit_length() - 1
    codes = np.arange(n_rows)
    sizes = np.array([bin(code).count("1") for code in codes])
    weight_by_size = np.array(
        [factorial(s) * factorial(n_players - s - 1) / factorial(n_players) for s in range(n_players)]
    )
    result = np.zeros((values.shape[1], n_players))
    for player in range(n_players):
        without = codes[(codes >> player) & 1 == 0]
        weights = weight_by_size[sizes[without]]
        result[:, player] = weights @ (values[without | (1 << player)] - values[without])
    return result


class ExactEstimator(Estimator):
    """Enumerates every coalition; exact values, zero stderr; needs budget >= 2^n."""

    name = "exact"

    def __init__(self, settings: EstimatorSettings) -> None:
        super().__init__(settings)
        if settings.n_players > MAX_EXACT_PLAYERS:
            raise ConfigError(
                f"exact enumeration needs n <= {MAX_EXACT_PLAYERS} players, got {settings.n_players}; "
                "pick a sampling estimator such as 'default'"
            )
        if settings.budget < 1 << settings.n_players:
            raise ConfigError(
                f"exact needs a budget of 2^{settings.n_players} = {1 << settings.n_players} evaluations, "
                f"got {settings.budget}; raise --budget or pick a sampling estimator"
            )
        self._coalitions = all_coalitions(settings.n_players)

    def _plan_round(self) -> Coalitions | None:
        return self._coalitions if self.rounds_started == 0 else None

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        table = np.array([self.value(row) for row in self._coalitions])
        values = shapley_from_table(table)
        return values, np.zeros_like(values), np.full(self.n_players, len(self._coalitions))
