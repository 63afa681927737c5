"""Mean-difference scores from random coalitions: Banzhaf by maximum sample reuse, and the seed paper's.

Banzhaf value beta_i = E_{S ~ Unif(2^N)}[v(S) | i in S] - E[v(S) | i not in S] (Banzhaf 1965). Maximum
sample reuse (Wang & Jia 2023, "Data Banzhaf") draws uniform coalitions and uses every sample for every
player: beta_i ~= mean_{S drawn, i in S} v(S) - mean_{S drawn, i not in S} v(S).
Seed-compatible score: the same mean difference over random subnetworks that keep a fixed fraction of
the players (default 90 %, t = round(0.9 n) present), as in the seed paper, so users can reproduce and
compare its rankings. It is a one-size estimate for the pruning regime (``pruning_semivalue``, in
``semivalue.py``, is the semivalue itself): E[v(T) | i in T, |T| = t] - E[v(T) | i not in T, |T| = t] =
m_i - mean_{j != i} m_j^{-i}, with m_i player i's expected marginal contribution when n - t others are
missing and m_j^{-i} that of j in the game without i; on an additive game (n w_i - sum_j w_j) / (n - 1), so
it ranks like the semivalue there. Neither is the Shapley value (no efficiency). Stderr:
sqrt(var_in / c_in + var_out / c_out) per player. Sampling is without replacement.
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np

from shapley_svc.coalitions import coalition_key, full_and_empty
from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import Estimator, EstimatorSettings
from shapley_svc.types import Coalitions


class MeanDifferenceEstimator(Estimator):
    """mean v(S) with i present - mean v(S) with i absent, over sampled coalitions (Banzhaf MSR)."""

    name = "banzhaf"

    def __init__(self, settings: EstimatorSettings, round_size: int | None = None) -> None:
        super().__init__(settings)
        self.round_size = round_size if round_size is not None else max(2 * settings.n_players, settings.budget // 4)
        self._rows: list[np.ndarray] = []
        self._taken: set[bytes] = set()

    def params(self) -> dict[str, Any]:
        """Budget and round size."""
        return {"budget": self.budget, "round_size": self.round_size}

    def _capacity(self) -> int:
        return 1 << self.n_players if self.n_players < 62 else 1 << 62

    def _sample(self) -> np.ndarray:
        return self.rng.random(self.n_players) < 0.5

    def _plan_round(self) -> Coalitions | None:
        rows: list[np.ndarray] = []
        if self.rounds_started == 0:
            rows = list(full_and_empty(self.n_players))[: self.budget]
            self._taken.update(coalition_key(row) for row in rows)
        target = min(self.round_size, self.budget - len(self._taken))
        drawn, attempts = 0, 0
        while drawn < target and len(self._taken) < self._capacity() and attempts < 50 * target + 100:
            attempts += 1
            row = self._sample()
            key = coalition_key(row)
            if key in self._taken:
                continue
            self._taken.add(key)
            rows.append(row)
            drawn += 1
        if not rows:
            return None
        self._rows.extend(rows)
        return np.array(rows)

    def _samples(self) -> tuple[np.ndarray, np.ndarray]:
        rows = [row for row in self._rows[2:] if self.is_observed(row)]
        if not rows:
            return np.zeros((0, self.n_players), dtype=bool), np.zeros((0, 1))
        return np.array(rows), np.array([self.value(row) for row in rows])

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, values = self._samples()
        n_tasks = len(self.value(np.ones(self.n_players, dtype=bool)))
        scores = np.zeros((n_tasks, self.n_players))
        variance = np.zeros((n_tasks, self.n_players))
        for present, sign in ((True, 1.0), (False, -1.0)):
            mask = rows if present else ~rows
            count = mask.sum(axis=0)
            safe = np.maximum(count, 1)
            mean = (values.T @ mask) / safe if len(rows) else scores * 0
            square = (values.T**2 @ mask) / safe if len(rows) else scores * 0
            spread = np.maximum(square - mean**2, 0.0) * count / np.maximum(count - 1, 1)
            scores += sign * mean
            variance += np.where(count > 1, spread / safe, np.inf)
        return scores, np.sqrt(variance), np.full(self.n_players, len(rows))


class SeedCompatibleEstimator(MeanDifferenceEstimator):
    """The seed paper's score: mean difference over subnetworks keeping ``keep_fraction`` of the players.

    A one-size estimate for the pruning regime: player i's marginal contribution with n - kept others missing,
    less the others' mean one (see the module docstring); ``pruning_semivalue`` is the semivalue itself.
    """

    name = "seed_compatible"
    follows_seed_paper = True  # the driver notes when it also reproduces the paper's MMLU test-set choice

    def __init__(self, settings: EstimatorSettings, keep_fraction: float = 0.9, round_size: int | None = None) -> None:
        super().__init__(settings, round_size)
        if not 0.0 < keep_fraction < 1.0:
            raise ConfigError(f"keep_fraction must lie strictly between 0 and 1, got {keep_fraction}")
        self.keep_fraction = keep_fraction
        self.kept = min(max(round(keep_fraction * settings.n_players), 1), settings.n_players - 1)

    def params(self) -> dict[str, Any]:
        """Budget, round size, fraction kept and the resulting number of players present."""
        return {**super().params(), "keep_fraction": self.keep_fraction, "players_kept": self.kept}

    def _capacity(self) -> int:
        return comb(self.n_players, self.kept) + 2

    def _sample(self) -> np.ndarray:
        row = np.zeros(self.n_players, dtype=bool)
        row[self.rng.choice(self.n_players, self.kept, replace=False)] = True
        return row
