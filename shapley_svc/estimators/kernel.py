"""KernelSHAP: weighted least squares with the Shapley kernel, paired sampling, efficiency constraint.

The Shapley values are the coefficients of the additive model beta that minimises
sum_S mu(|S|) (v(S) - v(empty) - sum_{i in S} beta_i)^2 subject to sum_i beta_i = v(N) - v(empty),
with mu(s) = (n - 1) / (C(n, s) s (n - s)) (Lundberg & Lee 2017; Charnes et al. 1988). We sample
coalitions by size in complementary pairs (Covert & Lee 2021), enumerate the outermost sizes when the
budget covers them, and weight a sampled coalition of size s by mu(s) C(n, s) / m_s (m_s: coalitions of
size s drawn), so each size keeps its exact total kernel mass. Paired sampling makes the estimate exact
on games with interactions of order at most two. Efficiency holds exactly. Stderr: bootstrap over the
sampled coalitions (enumerated sizes are fixed), seeded.
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np

from shapley_svc.coalitions import coalition_key, full_and_empty
from shapley_svc.estimators.base import Estimator, EstimatorSettings
from shapley_svc.estimators.samplers import (
    enumerate_sizes,
    enumerated_sizes,
    kernel_size_weights,
    sample_paired,
)
from shapley_svc.types import Coalitions

BOOTSTRAP_REPLICATES = 40


class PairedDesignEstimator(Estimator):
    """Shared design of the regression estimators: empty, full, enumerated outer sizes, paired samples."""

    def __init__(self, settings: EstimatorSettings, round_size: int | None = None) -> None:
        super().__init__(settings)
        n = settings.n_players
        self.round_size = round_size if round_size is not None else max(4 * n, settings.budget // 4)
        self.size_weights = kernel_size_weights(n)
        self.exact_sizes = self._enumerated_sizes()
        self.sampled_sizes = [s for s in range(1, n) if s not in self.exact_sizes]
        self._taken: set[bytes] = set()
        self._order: list[np.ndarray] = []  # every planned coalition, in planning order

    def _enumerated_sizes(self) -> list[int]:
        """Sizes whose every coalition the first round holds: KernelSHAP's rule, outermost first."""
        return enumerated_sizes(self.n_players, self.budget, self.size_weights)

    def params(self) -> dict[str, Any]:
        """Budget and round size."""
        return {"budget": self.budget, "round_size": self.round_size}

    def _plan_round(self) -> Coalitions | None:
        rows: list[np.ndarray] = []
        if self.rounds_started == 0:
            rows = [*full_and_empty(self.n_players), *enumerate_sizes(self.n_players, self.exact_sizes)]
            rows = rows[: self.budget]
            self._taken.update(coalition_key(row) for row in rows)
        room = self.budget - len(self._taken)
        count = min(room, max(self.round_size - len(rows), 0) if rows else self.round_size)
        rows += sample_paired(self.n_players, self.sampled_sizes, self.size_weights, count, self.rng, self._taken)
        if not rows:
            return None
        self._order.extend(rows)
        return np.array(rows)

    def observed(self) -> tuple[np.ndarray, np.ndarray]:
        """Evaluated coalitions bool[m, n] in planning order and their values float[m, t]."""
        rows = [row for row in self._order if self.is_observed(row)]
        return np.array(rows), np.array([self.value(row) for row in rows])

    def regression_weights(self, coalitions: np.ndarray) -> np.ndarray:
        """Kernel weight of each coalition: mu(s) per enumerated one, the size's mass / m_s per sampled one."""
        n = self.n_players
        sizes = coalitions.sum(axis=1)
        weights = np.zeros(len(coalitions))
        for size in range(1, n):
            members = sizes == size
            drawn = int(members.sum())
            if drawn == 0:
                continue
            mass = self.size_weights[size]
            weights[members] = mass / comb(n, size) if size in self.exact_sizes else mass / drawn
        return weights


def constrained_additive_fit(
    coalitions: np.ndarray, values: np.ndarray, weights: np.ndarray, v_empty: np.ndarray, v_full: np.ndarray
) -> np.ndarray:
    """Efficiency-constrained weighted least squares additive fit; returns float[t, n]."""
    n = coalitions.shape[1]
    inner = weights > 0
    design = coalitions[inner].astype(np.float64)
    targets = values[inner] - v_empty[None, :]
    weighted = design * weights[inner, None]
    gram = design.T @ weighted
    gram += 1e-10 * (np.trace(gram) / n + 1e-12) * np.eye(n)
    system = np.zeros((n + 1, n + 1))
    system[:n, :n] = gram
    system[:n, n] = 1.0
    system[n, :n] = 1.0
    rhs = np.vstack([weighted.T @ targets, (v_full - v_empty)[None, :]])
    solution = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return solution[:n].T


class KernelSHAPEstimator(PairedDesignEstimator):
    """Paired KernelSHAP with the efficiency constraint and bootstrap stderr."""

    name = "kernelshap"

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coalitions, values = self.observed()
        v_empty, v_full = values[0], values[1]
        weights = self.regression_weights(coalitions)
        estimate = constrained_additive_fit(coalitions, values, weights, v_empty, v_full)
        sizes = coalitions.sum(axis=1)
        sampled = np.flatnonzero(np.isin(sizes, self.sampled_sizes))
        fixed = np.setdiff1d(np.arange(len(coalitions)), sampled)
        replicates = []
        if len(sampled) > 1:
            bootstrap_rng = np.random.default_rng([self.settings.seed, len(coalitions)])
            for _ in range(BOOTSTRAP_REPLICATES):
                pick = np.concatenate([fixed, bootstrap_rng.choice(sampled, len(sampled))])
                resampled = coalitions[pick]
                replicates.append(
                    constrained_additive_fit(
                        resampled, values[pick], self.regression_weights(resampled), v_empty, v_full
                    )
                )
        stderr = np.std(replicates, axis=0, ddof=1) if replicates else np.zeros_like(estimate)
        return estimate, stderr, np.full(self.n_players, len(coalitions))
