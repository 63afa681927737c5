"""Permutation sampling, with antithetic (reversed) permutations and optional truncation.

phi_i = E_pi[v(P_i(pi) + i) - v(P_i(pi))], P_i(pi) the players before i in a uniform random order
(Castro et al. 2009). Antithetic sampling pairs each permutation with its reverse and averages the
two walks (Mitchell et al. 2022); the pair average is exact on games with interactions of order at
most two, because a pair's marginal contributions then sum to the Shapley value.
Truncated Monte Carlo (Ghorbani & Zou 2019) stops a walk once |v(prefix) - v(N)| <= tol |v(N) - v(empty)|
(largest over tasks) and sets the remaining marginal contributions to zero. This is biased: a player after
the cut loses E[its marginal contribution | cut], and the players after the cut together lose
v(N) - v(prefix), at most tol |v(N) - v(empty)| in total per walk (efficiency is off by at most that),
although single players can lose more when their contributions cancel. Stderr: sample standard
deviation over walks (or antithetic pairs) / sqrt(count). Each walk costs up to n - 1 new evaluations;
a walk is only started when its full cost fits in the remaining budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shapley_svc.coalitions import coalition_key, full_and_empty
from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import Estimator, EstimatorSettings
from shapley_svc.types import Coalitions


class PermutationEstimator(Estimator):
    """Monte Carlo over permutations; antithetic pairs by default, truncation when a tolerance is set."""

    name = "permutation"
    mergeable = True

    def __init__(
        self,
        settings: EstimatorSettings,
        antithetic: bool = True,
        truncation_tolerance: float | None = None,
        walks_per_round: int = 8,
    ) -> None:
        super().__init__(settings)
        if truncation_tolerance is not None and truncation_tolerance < 0:
            raise ConfigError(f"truncation_tolerance must be >= 0, got {truncation_tolerance}")
        if walks_per_round < 1:
            raise ConfigError(f"walks_per_round must be >= 1, got {walks_per_round}")
        self.antithetic = antithetic
        self.truncation_tolerance = truncation_tolerance
        self.walks_per_round = walks_per_round + (walks_per_round % 2 if antithetic else 0)
        self._walks: list[np.ndarray] = []  # permutations
        self._stop_at: list[int] = []  # positions evaluated so far (prefix lengths 1..stop_at)
        self._cut: list[bool] = []  # truncated or complete
        self._reserved: set[bytes] = set()

    def params(self) -> dict[str, Any]:
        """Budget, antithetic flag, truncation tolerance, walks per round."""
        return {
            "budget": self.budget,
            "antithetic": self.antithetic,
            "truncation_tolerance": self.truncation_tolerance,
            "walks_per_round": self.walks_per_round,
        }

    def _prefix(self, walk: int, length: int) -> np.ndarray:
        row = np.zeros(self.n_players, dtype=bool)
        row[self._walks[walk][:length]] = True
        return row

    def _close_truncated_walks(self) -> None:
        if self.truncation_tolerance is None or self.rounds_started == 0:
            return
        v_full = self.value(np.ones(self.n_players, dtype=bool))
        v_empty = self.value(np.zeros(self.n_players, dtype=bool))
        span = np.max(np.abs(v_full - v_empty))
        for walk, position in enumerate(self._stop_at):
            if self._cut[walk]:
                continue
            gap = np.max(np.abs(self.value(self._prefix(walk, position)) - v_full))
            if gap <= self.truncation_tolerance * span or position >= self.n_players - 1:
                self._cut[walk] = True

    def _new_walks(self, room: int) -> int:
        """Start walks (pairs when antithetic) whose worst-case cost fits in ``room``; returns the cost."""
        cost = 0
        group = 2 if self.antithetic else 1
        started = 0
        while started < self.walks_per_round:
            permutation = self.rng.permutation(self.n_players)
            group_walks = [permutation, permutation[::-1]] if self.antithetic else [permutation]
            keys = {
                coalition_key(np.isin(np.arange(self.n_players), walk[:length]))
                for walk in group_walks
                for length in range(1, self.n_players)
            }
            new = keys - self._reserved
            if cost + len(new) > room:
                break
            self._reserved |= new
            cost += len(new)
            for walk in group_walks:
                self._walks.append(walk)
                self._stop_at.append(0)
                self._cut.append(False)
            started += group
        return started

    def _plan_round(self) -> Coalitions | None:
        if self.rounds_started == 0:
            self._reserved |= {coalition_key(row) for row in full_and_empty(self.n_players)}
            self._new_walks(self.budget - 2)
            return self._advance_walks(list(full_and_empty(self.n_players)))
        self._close_truncated_walks()
        active = [walk for walk in range(len(self._walks)) if not self._cut[walk]]
        self._reserved = self._observed.keys() | {
            coalition_key(self._prefix(walk, length))
            for walk in active
            for length in range(self._stop_at[walk] + 1, self.n_players)
        }
        if not active:
            room = self.budget - len(self._reserved)
            if self._new_walks(room) == 0:
                return None
        return self._advance_walks([])

    def _advance_walks(self, rows: list[np.ndarray]) -> Coalitions:
        step = 1 if self.truncation_tolerance is not None else self.n_players - 1
        for walk in range(len(self._walks)):
            if self._cut[walk]:
                continue
            start = self._stop_at[walk]
            end = min(start + step, self.n_players - 1)
            rows.extend(self._prefix(walk, length) for length in range(start + 1, end + 1))
            self._stop_at[walk] = end
            if self.truncation_tolerance is None:
                self._cut[walk] = True
        return np.array(rows) if rows else np.zeros((0, self.n_players), dtype=bool)

    def _walk_contributions(self, walk: int) -> np.ndarray | None:
        """Marginal contributions float[t, n] of a finished walk, or None while it is still running."""
        if not self._cut[walk]:
            return None
        prefixes = [self._prefix(walk, length) for length in range(self._stop_at[walk] + 1)]
        if not all(self.is_observed(row) for row in prefixes):
            return None
        values = np.array([self.value(row) for row in prefixes])  # [stop + 1, t]
        if self._stop_at[walk] == self.n_players - 1:
            values = np.vstack([values, self.value(np.ones(self.n_players, dtype=bool))])
        contributions = np.zeros((values.shape[1], self.n_players))
        contributions[:, self._walks[walk][: len(values) - 1]] = np.diff(values, axis=0).T
        return contributions

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        finished = [self._walk_contributions(walk) for walk in range(len(self._walks))]
        group = 2 if self.antithetic else 1
        samples = []
        for first in range(0, len(finished) - group + 1, group):
            members = finished[first : first + group]
            if all(member is not None for member in members):
                samples.append(np.mean(members, axis=0))
        n_tasks = len(self.value(np.ones(self.n_players, dtype=bool)))
        if not samples:
            zeros = np.zeros((n_tasks, self.n_players))
            return zeros, np.full_like(zeros, np.inf), np.zeros(self.n_players)
        stacked = np.array(samples)  # [walks, t, n]
        if len(samples) > 1:
            stderr = stacked.std(axis=0, ddof=1) / np.sqrt(len(samples))
        else:
            stderr = np.full_like(stacked[0], np.inf)
        return stacked.mean(axis=0), stderr, np.full(self.n_players, len(samples))
