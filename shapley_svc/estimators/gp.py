"""Bayesian Shapley regression with an effect-heredity prior (``structured_gp`` builds on it).

Write a game in the Walsh basis, z = 2x - 1 in {-1, +1}^n: v(z) = sum_A w_A chi_A(z), chi_A = prod_{j in A} z_j.
The Shapley value of chi_A is 2 / |A| for each player of A when |A| is odd and 0 when |A| is even, so
phi_i = sum_{A contains i, |A| odd} 2 w_A / |A| depends only on the odd part of the game, which a
complementary pair observes directly: (v(z) - v(-z)) / 2 = sum_{|A| odd} w_A chi_A(z).
Prior: independent w_A ~ N(0, lambda_A), broad for |A| = 1 and, for odd |A| >= 3,
lambda_A = sigma^2 prod_{j in A} rho_j with rho_j = c h_j: interactions get geometrically rarer with their
order and live among players with large main effects (effect heredity, Chipman 1996; h_j = |pilot
paired-KernelSHAP estimate of j|, normalised to rms 1). The covariance of two pairs is then closed form,
k(z, z') = l1 z.z' + sigma^2 [prod_j sqrt(1 - rho_j^2) sinh(sum_j atanh(rho_j) z_j z'_j) - sum_j rho_j z_j z'_j],
and cov(phi_i, odd(z)) = 2 l1 z_i + sigma^2 rho_i z_i sum_{m even >= 2} 2 / (m + 1) e_m(rho_{-i} z_{-i}), with
e_m the elementary symmetric polynomials, so nothing is enumerated and any n works. A white misfit term
with variance proportional to 1 / (Shapley-kernel weight of the pair) lets the model fall back to paired
KernelSHAP (its weighted least squares) when the heredity prior does not fit. The estimate is the
Gaussian-process posterior mean of phi (Bayesian quadrature of a linear functional, O'Hagan 1991), the
stderr its posterior standard deviation; (c, sigma^2, misfit) are chosen by marginal likelihood on the first
pairs in design order. Coalitions come from the paired KernelSHAP design (samplers.py). On games with
interactions of order <= 2 the odd part is additive and the estimate is exact; efficiency holds up to the
numerical jitter, since the (empty, full) pair is observed without misfit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shapley_svc.coalitions import coalition_key
from shapley_svc.estimators.base import EstimatorSettings
from shapley_svc.estimators.kernel import PairedDesignEstimator, constrained_additive_fit

ORDER1_VARIANCE = 1.0
INTERACTION_SCALES = (0.3, 0.6, 1.2, 2.4, 4.8)  # c * n
INTERACTION_VARIANCES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # sigma^2, in units of the odd parts
MAX_RHO = 0.95
MISFIT_VARIANCES = (0.0, 0.01, 0.1)  # white misfit with variance proportional to 1 / kernel weight
HYPERPARAMETER_SUBSAMPLE = 300
JITTER = 1e-9


def elementary_symmetric_leave_one_out(factors: np.ndarray) -> np.ndarray:
    """e_m(u_{-i}) for rows u of ``factors`` float[k, n]; returns float[k, n, n] indexed [row, i, m]."""
    rows, n = factors.shape
    full = np.zeros((rows, n + 1))
    full[:, 0] = 1.0
    for j in range(n):
        full[:, 1:] = full[:, 1:] + factors[:, j : j + 1] * full[:, :-1]
    leave_out = np.zeros((rows, n, n))
    leave_out[:, :, 0] = 1.0
    for m in range(1, n):
        leave_out[:, :, m] = full[:, m : m + 1] - factors * leave_out[:, :, m - 1]
    return leave_out


class HeredityPrior:
    """The product-kernel prior above for fixed rho (float[n]) and sigma^2; builds k and cov(phi, v)."""

    def __init__(self, rho: np.ndarray, interaction_variance: float) -> None:
        self.rho = np.clip(rho, 0.0, MAX_RHO)
        self.sigma2 = interaction_variance
        self.log_base = 0.5 * np.log1p(-(self.rho**2))  # log sqrt(1 - rho^2)
        self.log_ratio = 0.5 * np.log((1 + self.rho) / (1 - self.rho))

    def kernel(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Odd part of k: cov of (v(z) - v(-z)) / 2 and (v(z') - v(-z')) / 2, for sign matrices."""
        scaled = (left * self.log_ratio) @ right.T
        odd_product = np.exp(self.log_base.sum()) * np.sinh(scaled)  # (P(z, z') - P(z, -z')) / 2
        first_order = (left * self.rho) @ right.T
        return ORDER1_VARIANCE * (left @ right.T) + self.sigma2 * (odd_product - first_order)

    def cross(self, signs: np.ndarray) -> np.ndarray:
        """cov(phi_i, v(z)) float[k, n]."""
        n = signs.shape[1]
        leave_out = elementary_symmetric_leave_one_out(signs * self.rho)
        coefficients = np.zeros(n)
        even = np.arange(2, n, 2)
        coefficients[even] = 2.0 / (even + 1)
        higher = leave_out @ coefficients
        return 2 * ORDER1_VARIANCE * signs + self.sigma2 * self.rho * signs * higher

    def prior_variance(self) -> np.ndarray:
        """var(phi_i) float[n] under the prior."""
        n = self.rho.size
        leave_out = elementary_symmetric_leave_one_out(self.rho[None, :])[0]
        coefficients = np.zeros(n)
        even = np.arange(2, n, 2)
        coefficients[even] = 4.0 / (even + 1) ** 2
        return 4 * ORDER1_VARIANCE + self.sigma2 * self.rho * (leave_out @ coefficients)


def _forward_substitution(lower: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Solve lower @ x = targets for a lower-triangular matrix (numpy has no triangular solver)."""
    solution = np.zeros(len(targets))
    for row in range(len(targets)):
        solution[row] = (targets[row] - lower[row, :row] @ solution[:row]) / lower[row, row]
    return solution


def log_marginal_likelihood(gram: np.ndarray, targets: np.ndarray) -> float:
    """log N(targets | 0, gram) up to a constant; -inf when gram is not positive definite."""
    jitter = JITTER * np.trace(gram) / len(gram)
    try:
        factor = np.linalg.cholesky(gram + jitter * np.eye(len(gram)))
    except np.linalg.LinAlgError:
        return -np.inf
    whitened = _forward_substitution(factor, targets)
    return float(-0.5 * whitened @ whitened - np.log(np.diag(factor)).sum())


def heredity_posterior(
    signs: np.ndarray, targets: np.ndarray, scores: np.ndarray, misfit_shape: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Posterior mean and sd of phi (float[n] each) from odd parts (v(z) - v(-z)) / 2 at sign rows z.

    ``misfit_shape`` float[p] is the relative variance of the misfit term at each pair (1 / kernel weight).
    """
    n = signs.shape[1]
    subsample = signs[:HYPERPARAMETER_SUBSAMPLE]
    sub_targets = targets[:HYPERPARAMETER_SUBSAMPLE]
    sub_misfit = np.diag(misfit_shape[:HYPERPARAMETER_SUBSAMPLE])
    best: tuple[float, float, float, float] = (-np.inf, INTERACTION_SCALES[0], INTERACTION_VARIANCES[0], 0.0)
    for misfit in MISFIT_VARIANCES:
        for scale in INTERACTION_SCALES:
            for variance in INTERACTION_VARIANCES:
                prior = HeredityPrior(scale / n * scores, variance)
                gram = prior.kernel(subsample, subsample) + misfit * sub_misfit
                likelihood = log_marginal_likelihood(gram, sub_targets)
                if likelihood > best[0]:
                    best = (likelihood, scale, variance, misfit)
    _, scale, variance, misfit = best
    prior = HeredityPrior(scale / n * scores, variance)
    gram = prior.kernel(signs, signs) + misfit * np.diag(misfit_shape)
    gram += JITTER * np.trace(gram) / len(gram) * np.eye(len(gram))
    factor = np.linalg.cholesky(gram)
    cross = prior.cross(signs)  # [m, n]
    solved_targets = np.linalg.solve(factor.T, np.linalg.solve(factor, targets))
    mean = cross.T @ solved_targets
    whitened = np.linalg.solve(factor, cross)
    sd = np.sqrt(np.maximum(prior.prior_variance() - (whitened**2).sum(axis=0), 0.0))
    return mean, sd, {"interaction_scale": scale, "interaction_variance": variance, "misfit_variance": misfit}


def complementary_pairs(coalitions: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sign rows float[p, n] of coalitions whose complement is known, odd parts float[p, t], row positions."""
    index = {coalition_key(row): position for position, row in enumerate(coalitions)}
    signs, odd, positions = [], [], []
    for position, row in enumerate(coalitions):
        partner = index.get(coalition_key(~row))
        if partner is not None and position < partner:
            signs.append(np.where(row, 1.0, -1.0))
            odd.append(0.5 * (values[position] - values[partner]))
            positions.append(position)
    return np.array(signs), np.array(odd), np.array(positions)


class HeredityGPEstimator(PairedDesignEstimator):
    """Paired-design coalitions, Gaussian-process posterior of the Shapley values (see module docstring)."""

    name = "heredity_gp"

    def __init__(self, settings: EstimatorSettings, round_size: int | None = None) -> None:
        super().__init__(settings, round_size)
        self.chosen_hyperparameters: list[dict[str, float]] = []

    def params(self) -> dict[str, Any]:
        """Budget, round size and the hyperparameters chosen at the last estimate (one dict per task)."""
        return {**super().params(), "hyperparameters": self.chosen_hyperparameters}

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coalitions, values = self.observed()
        v_empty, v_full = values[0], values[1]
        weights = self.regression_weights(coalitions)
        pilot = constrained_additive_fit(coalitions, values, weights, v_empty, v_full)
        signs, odd_parts, positions = complementary_pairs(coalitions, values)
        pair_weights = weights[positions]
        inverse = np.where(pair_weights > 0, 1.0 / np.where(pair_weights > 0, pair_weights, 1.0), 0.0)
        misfit_shape = inverse / max(float(inverse[inverse > 0].mean()) if np.any(inverse > 0) else 1.0, 1e-300)
        means, sds, chosen = [], [], []
        for task in range(values.shape[1]):
            spread = float(odd_parts[:, task].std()) or 1.0
            scores = np.abs(pilot[task])
            norm = float(np.sqrt(np.mean(scores**2)))
            scores = scores / norm if norm > 0 else np.ones(self.n_players)
            mean, sd, hyperparameters = heredity_posterior(signs, odd_parts[:, task] / spread, scores, misfit_shape)
            means.append(mean * spread)
            sds.append(sd * spread)
            chosen.append(hyperparameters)
        self.chosen_hyperparameters = chosen
        return np.array(means), np.array(sds), np.full(self.n_players, len(coalitions))
