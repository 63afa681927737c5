"""Stratified sampling by coalition size with variance-driven (Neyman) allocation.

phi_i = (1/n) sum_{s=1}^{n} mean_{|S| = s, i in S} v(S) - (1/n) sum_{s=0}^{n-1} mean_{|S| = s, i not in S} v(S)
(the stratified form of SVARM, Kolpaczki et al. 2024), so every sampled coalition informs every player.
The outermost sizes are enumerated when the budget covers them; the other sizes are sampled uniformly
without replacement. With m_s samples of size s and within-size spread sd_s, the variance of phi_i is
about sum_s sd_s^2 / (m_s s (n - s)), minimised by m_s proportional to sd_s / sqrt(s (n - s)): after a
pilot round, each round allocates its samples that way from the spreads seen so far. Stderr: the
stratified variance of the two means per size (with finite-population correction).
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np

from shapley_svc.coalitions import coalition_key, full_and_empty
from shapley_svc.estimators.base import Estimator, EstimatorSettings
from shapley_svc.estimators.samplers import enumerate_sizes, enumerated_sizes, kernel_size_weights
from shapley_svc.types import Coalitions

PILOT_PER_SIZE = 2


class StratifiedEstimator(Estimator):
    """Size-stratified mean differences, Neyman allocation between rounds."""

    name = "stratified"

    def __init__(self, settings: EstimatorSettings, rounds: int = 4) -> None:
        super().__init__(settings)
        n = settings.n_players
        self.rounds = max(rounds, 1)
        self.exact_sizes = enumerated_sizes(n, settings.budget, np.sqrt(kernel_size_weights(n)))
        self.sampled_sizes = [s for s in range(1, n) if s not in self.exact_sizes]
        self._taken: set[bytes] = set()
        self._round_budget = 0
        self._rows: list[np.ndarray] = []
        self._size_counts: dict[int, int] = {}

    def params(self) -> dict[str, Any]:
        """Budget and number of allocation rounds."""
        return {"budget": self.budget, "rounds": self.rounds}

    def _draw(self, size: int, count: int) -> list[np.ndarray]:
        rows: list[np.ndarray] = []
        capacity = comb(self.n_players, size)
        attempts = 0
        while len(rows) < count and attempts < 50 * count + 100:
            attempts += 1
            if len(rows) + self._size_counts.get(size, 0) >= capacity:
                break
            row = np.zeros(self.n_players, dtype=bool)
            row[self.rng.choice(self.n_players, size, replace=False)] = True
            key = coalition_key(row)
            if key not in self._taken:
                self._taken.add(key)
                rows.append(row)
        return rows

    def _spreads(self) -> np.ndarray:
        """Within-size standard deviation (task-averaged) of the values seen so far, per size."""
        spreads = np.ones(self.n_players + 1)
        for size, values in self._values_by_size().items():
            if len(values) > 1:
                spreads[size] = float(np.mean(values.std(axis=0, ddof=1)))
        return spreads

    def _values_by_size(self) -> dict[int, np.ndarray]:
        grouped: dict[int, list[np.ndarray]] = {}
        for row in self._rows:
            if self.is_observed(row):
                grouped.setdefault(int(row.sum()), []).append(self.value(row))
        return {size: np.array(values) for size, values in grouped.items()}

    def _plan_round(self) -> Coalitions | None:
        n = self.n_players
        rows: list[np.ndarray] = []
        if self.rounds_started == 0:
            rows = [*full_and_empty(n), *enumerate_sizes(n, self.exact_sizes)][: self.budget]
            self._taken.update(coalition_key(row) for row in rows)
            room = self.budget - len(rows)
            pilot = min(room, PILOT_PER_SIZE * len(self.sampled_sizes))
            self._round_budget = (room - pilot) // self.rounds + 1
            for position, size in enumerate(self.sampled_sizes * PILOT_PER_SIZE):
                if position >= pilot:
                    break
                drawn = self._draw(size, 1)
                self._size_counts[size] = self._size_counts.get(size, 0) + len(drawn)
                rows += drawn
        else:
            room = self.budget - len(self._taken)
            if room <= 0 or not self.sampled_sizes:
                return None
            count = min(room, self._round_budget)
            spreads = self._spreads()
            sizes = np.array(self.sampled_sizes)
            weights = spreads[sizes] / np.sqrt(sizes * (n - sizes))
            allocation = self.rng.multinomial(count, weights / weights.sum())
            for size, quota in zip(sizes.tolist(), allocation.tolist(), strict=True):
                drawn = self._draw(size, quota)
                self._size_counts[size] = self._size_counts.get(size, 0) + len(drawn)
                rows += drawn
            if not rows:
                return None
        self._rows.extend(rows)
        return np.array(rows)

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.n_players
        rows = np.array([row for row in self._rows if self.is_observed(row)])
        values = np.array([self.value(row) for row in rows])  # [m, t]
        sizes = rows.sum(axis=1)
        n_tasks = values.shape[1]
        total = np.zeros((n_tasks, n))
        variance = np.zeros((n_tasks, n))
        counts = np.zeros(n, dtype=np.int64)
        for size in range(n + 1):
            members = sizes == size
            if not members.any():
                continue
            stratum_rows, stratum_values = rows[members], values[members]
            fpc = max(1.0 - members.sum() / comb(n, size), 0.0)
            fallback_var = stratum_values.var(axis=0, ddof=1) if members.sum() > 1 else np.zeros(n_tasks)
            for present, sign in ((True, 1.0), (False, -1.0)):
                if (present and size == 0) or (not present and size == n):
                    continue
                mask = stratum_rows if present else ~stratum_rows  # [m_s, n]
                count = mask.sum(axis=0)  # [n]
                safe = np.maximum(count, 1)
                mean = (stratum_values.T @ mask) / safe  # [t, n]
                overall = stratum_values.mean(axis=0)[:, None]
                mean = np.where(count > 0, mean, overall)
                square = (stratum_values.T**2 @ mask) / safe
                unbiased = (square - mean**2) * count / np.maximum(count - 1, 1)
                spread = np.where(count > 1, unbiased, fallback_var[:, None])
                total += sign * mean / n
                variance += fpc * np.maximum(spread, 0.0) / safe / n**2
                counts += count
        return total, np.sqrt(variance), counts
