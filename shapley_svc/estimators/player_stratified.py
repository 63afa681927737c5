"""Per-player stratified marginal sampling, focusable on chosen players (for the pruning-set bandit).

phi_i = (1/n) sum_{s=0}^{n-1} E_{S subset N \\ {i}, |S| = s}[v(S + i) - v(S)] (Maleki et al. 2013). Each
round draws, for every active player, one coalition per size s from a seeded random order of the sizes
(so each player's sizes stay balanced across strata), and evaluates S and S + i. The estimate is the
per-size mean, averaged over the sizes seen; stderr from the per-size sample variances (sizes with one
sample borrow the player's pooled variance). ``focus(players)`` restricts later rounds to those players,
which is how ``PruningSetDecided`` spends the budget near the decision boundary (Neuron Shapley style).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shapley_svc.coalitions import full_and_empty
from shapley_svc.estimators.base import Estimator, EstimatorSettings
from shapley_svc.types import Coalitions


class PlayerStratifiedEstimator(Estimator):
    """Marginal contributions per player and size; rounds can be focused on chosen players."""

    name = "player_stratified"

    def __init__(self, settings: EstimatorSettings, samples_per_round: int = 1) -> None:
        super().__init__(settings)
        self.samples_per_round = max(samples_per_round, 1)
        self._pairs: list[tuple[int, int, np.ndarray]] = []  # (player, size, coalition without player)
        self._size_orders: dict[int, list[int]] = {}

    @property
    def supports_focus(self) -> bool:
        """This estimator can focus rounds on chosen players."""
        return True

    def params(self) -> dict[str, Any]:
        """Budget and samples per player per round."""
        return {"budget": self.budget, "samples_per_round": self.samples_per_round}

    def _next_size(self, player: int) -> int:
        order = self._size_orders.get(player)
        if not order:
            order = self.rng.permutation(self.n_players).tolist()
        size, self._size_orders[player] = order[0], order[1:]
        return int(size)

    def _plan_round(self) -> Coalitions | None:
        rows: list[np.ndarray] = list(full_and_empty(self.n_players)) if self.rounds_started == 0 else []
        room = self.budget - self.evaluations_used - len(rows)
        players = self._focus if self._focus is not None else tuple(range(self.n_players))
        for _ in range(self.samples_per_round):
            for player in players:
                if room < 2:
                    break
                size = self._next_size(player)
                others = np.delete(np.arange(self.n_players), player)
                without = np.zeros(self.n_players, dtype=bool)
                without[self.rng.choice(others, size, replace=False)] = True
                with_player = without.copy()
                with_player[player] = True
                new = [row for row in (without, with_player) if not self.is_observed(row)]
                room -= len(new)
                rows.extend(new)
                self._pairs.append((player, size, without))
        return np.array(rows) if rows or self.rounds_started == 0 else None

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_tasks = len(self.value(np.ones(self.n_players, dtype=bool)))
        by_player: dict[int, dict[int, list[np.ndarray]]] = {}
        for player, size, without in self._pairs:
            with_player = without.copy()
            with_player[player] = True
            if self.is_observed(without) and self.is_observed(with_player):
                contribution = self.value(with_player) - self.value(without)
                by_player.setdefault(player, {}).setdefault(size, []).append(contribution)
        values = np.zeros((n_tasks, self.n_players))
        stderr = np.full((n_tasks, self.n_players), np.inf)
        counts = np.zeros(self.n_players, dtype=np.int64)
        for player, strata in by_player.items():
            samples = np.array([c for stratum in strata.values() for c in stratum])
            pooled = samples.var(axis=0, ddof=1) if len(samples) > 1 else np.full(n_tasks, np.inf)
            means = np.array([np.mean(stratum, axis=0) for stratum in strata.values()])
            variances = np.array(
                [np.var(s, axis=0, ddof=1) / len(s) if len(s) > 1 else pooled for s in strata.values()]
            )
            values[:, player] = means.mean(axis=0)
            stderr[:, player] = np.sqrt(variances.sum(axis=0)) / len(strata)
            counts[player] = len(samples)
        return values, stderr, counts
