"""Bayesian quadrature of Shapley values with a structured prior (the recommended ``default`` estimator).

As in ``gp.py``: in signs z = 2x - 1, phi depends only on the odd part of the game, and a complementary
pair observes it, o(z) = (v(z) - v(-z)) / 2. The prior on o is a sum of Gaussian processes, each a family
of structure that value functions of layered models show, each with a cross-covariance cov(phi_i, o(z))
in closed form, so the posterior mean and sd of phi come without enumerating anything:
- additive: o(z) = sum_i a_i z_i, phi_i = 2 a_i (always on);
- size: an odd function h of m = sum_j z_j (how many players are present: depth saturation), a smooth
  Gaussian process on m / n; each player gets 2 h(n) / n;
- local: order >= 3 interactions among players close in the given order (consecutive layers compensate
  each other), the odd part of order >= 3 of sum_W prod_{j in W} (1 + rho z_j z'_j) over windows W of w
  consecutive players;
- heredity: order >= 3 interactions with lambda_A = prod_{j in A} rho_j, rho_j proportional to a pilot
  KernelSHAP |phi_j| (effect heredity) or constant (no preferred players), see ``gp.py``.
Each structure's weight (0 = off) and shape are chosen by marginal likelihood on the first pairs in design
order (coordinate ascent over a fixed grid), so a structure the game lacks gets weight 0; the same grid
serves every game. Coalitions, always in complementary pairs: a first round from the paired KernelSHAP design
(``samplers.py``; 15% of the budget, at least 2n + 2, every singleton and its complement among them), then
``DESIGN_ROUNDS`` rounds chosen greedily from random candidates to shrink the posterior variance of phi (summed
over players, and over tasks relative to each task's current total) under the structure fitted so far:
Bayesian experimental design. The posterior variance does not depend on the values, so picking a round's pairs
together equals picking them one by one; rounds only refresh the structure (how much the design gains over
random pairs is measured in benchmarks/RESULTS.md). Exact on games whose odd part
is additive (interactions of order <= 2); efficiency holds up to numerical jitter, because the (empty, full)
pair is observed without noise and every prior satisfies efficiency. Stderr: the larger of the posterior sd and a
delete-one-pair jackknife sd (the posterior sd alone trusts the fitted prior, and was too small on real tables).
References: O'Hagan 1991 (Bayes-Hermite quadrature); Chipman 1996 (effect heredity); Covert & Lee 2021
(paired sampling).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from shapley_svc.coalitions import coalition_key, full_and_empty
from shapley_svc.estimators.base import EstimatorSettings
from shapley_svc.estimators.gp import (
    JITTER,
    HeredityPrior,
    complementary_pairs,
    elementary_symmetric_leave_one_out,
    log_marginal_likelihood,
)
from shapley_svc.estimators.kernel import PairedDesignEstimator, constrained_additive_fit
from shapley_svc.estimators.samplers import enumerate_sizes, sample_paired
from shapley_svc.types import Coalitions

HEREDITY_SCALES = (0.3, 0.6, 1.2, 2.4, 4.8)  # c * n, rho_j = c h_j
UNIFORM_SCALES = (0.6, 1.2, 2.4, 4.8)  # c * n, rho_j = c
SIZE_LENGTHS = (0.0, 0.05, 0.15, 0.4)  # length scale on m / n; 0: a free value per size
LOCAL_WIDTHS = (3, 4, 6, 8)
LOCAL_RHOS = (0.5, 0.9)
VARIANCES = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # in units of the odd parts' spread
# Weak local interactions still shape phi (blocks of layers that compensate each other), so the local grid
# reaches lower; lower weights for the other structures only fitted noise (spurious structure on benchmark games).
VARIANCE_GRIDS = {"size": VARIANCES, "heredity": VARIANCES, "local": (0.0, 1e-4, 3e-4, 0.001, *VARIANCES[1:])}
SWEEPS = 2
HYPERPARAMETER_SUBSAMPLE = 200
FIRST_ROUND_SHARE = 0.15  # of the budget, at least 2n + 2: enough pairs to fit the structure the design uses
DESIGN_ROUNDS = 4  # designed rounds after the first; each refits the structure
CANDIDATES_PER_PAIR = 20
MAX_CANDIDATES = 1500


class Component(Protocol):
    """One Gaussian-process structure on the odd part: its kernel and its covariances with phi."""

    def gram(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """cov(o(z), o(z')) float[k, k'] for sign rows ``left`` float[k, n] and ``right`` float[k', n]."""
        ...

    def cross(self, signs: np.ndarray) -> np.ndarray:
        """cov(phi_i, o(z)) float[k, n]."""
        ...

    def prior_variance(self) -> np.ndarray:
        """var(phi_i) float[n]."""
        ...


class AdditiveComponent:
    """o(z) = sum_i a_i z_i with a_i ~ N(0, 1)."""

    def __init__(self, n_players: int) -> None:
        self.n_players = n_players

    def gram(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return left @ right.T

    def cross(self, signs: np.ndarray) -> np.ndarray:
        return 2.0 * signs

    def prior_variance(self) -> np.ndarray:
        return np.full(self.n_players, 4.0)


class HeredityComponent:
    """The order >= 3 part of ``gp.HeredityPrior`` with interaction variance 1."""

    def __init__(self, rho: np.ndarray) -> None:
        self.prior = HeredityPrior(rho, 1.0)
        self.additive = AdditiveComponent(len(rho))

    def gram(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return self.prior.kernel(left, right) - self.additive.gram(left, right)

    def cross(self, signs: np.ndarray) -> np.ndarray:
        return self.prior.cross(signs) - self.additive.cross(signs)

    def prior_variance(self) -> np.ndarray:
        return self.prior.prior_variance() - self.additive.prior_variance()


class SizeComponent:
    """o(z) = h(m), m = sum_j z_j, h odd: k(m, m') = (g(m - m') - g(m + m')) / 2, g Gaussian in (m - m') / n."""

    def __init__(self, n_players: int, length: float) -> None:
        self.n_players = n_players
        self.length = length

    def _base(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        distance = (left[:, None] - right[None, :]) / self.n_players
        if self.length == 0:
            return (np.abs(distance) < 0.5 / self.n_players).astype(np.float64)
        return np.exp(-0.5 * (distance / self.length) ** 2)

    def gram(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        sizes_left, sizes_right = left.sum(axis=1), right.sum(axis=1)
        return 0.5 * (self._base(sizes_left, sizes_right) - self._base(sizes_left, -sizes_right))

    def cross(self, signs: np.ndarray) -> np.ndarray:
        with_full = self.gram(np.ones((1, self.n_players)), signs)[0]  # cov(h(n), o(z))
        return np.repeat((2.0 / self.n_players) * with_full[:, None], self.n_players, axis=1)

    def prior_variance(self) -> np.ndarray:
        full = np.ones((1, self.n_players))
        return np.full(self.n_players, (2.0 / self.n_players) ** 2 * self.gram(full, full)[0, 0])


class LocalComponent:
    """Order >= 3 odd interactions inside windows of ``width`` consecutive players, lambda_A = rho^|A|."""

    def __init__(self, n_players: int, width: int, rho: float) -> None:
        self.n_players = n_players
        self.width = min(width, n_players)
        self.rho = rho
        self.starts = range(n_players - self.width + 1)
        agreement = np.arange(-self.width, self.width + 1)  # sum_{j in W} z_j z'_j
        agree = (self.width + agreement) / 2
        plus = (1 + rho) ** agree * (1 - rho) ** (self.width - agree)  # prod_{j in W} (1 + rho z_j z'_j)
        minus = (1 - rho) ** agree * (1 + rho) ** (self.width - agree)
        self.table = 0.5 * (plus - minus) - rho * agreement  # odd part minus order 1, by agreement

    def _coefficients(self, power: int) -> np.ndarray:
        """2 / (m + 1) (power 1) or its square (power 2) at even m >= 2, else 0."""
        coefficients = np.zeros(self.width)
        even = np.arange(2, self.width, 2)
        coefficients[even] = (2.0 / (even + 1)) ** power
        return coefficients

    def gram(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        total = np.zeros((len(left), len(right)))
        for start in self.starts:
            window = slice(start, start + self.width)
            agreement = np.rint(left[:, window] @ right[:, window].T).astype(np.int64)
            total += self.table[agreement + self.width]
        return total

    def cross(self, signs: np.ndarray) -> np.ndarray:
        out = np.zeros(signs.shape)
        coefficients = self._coefficients(1)
        for start in self.starts:
            window = signs[:, start : start + self.width]
            leave_out = elementary_symmetric_leave_one_out(window * self.rho)  # [k, w, w]
            out[:, start : start + self.width] += self.rho * window * (leave_out @ coefficients)
        return out

    def prior_variance(self) -> np.ndarray:
        out = np.zeros(self.n_players)
        leave_out = elementary_symmetric_leave_one_out(np.full((1, self.width), self.rho))[0]
        per_player = self.rho * (leave_out @ self._coefficients(2))
        for start in self.starts:
            out[start : start + self.width] += per_player
        return out


def structure_families(n_players: int, scores: np.ndarray) -> dict[str, list[Component]]:
    """The candidate shapes of each structure; ``scores`` float[n] are pilot |phi| with rms 1."""
    widths = sorted({min(width, n_players) for width in LOCAL_WIDTHS if min(width, n_players) >= 3})
    return {
        "size": [SizeComponent(n_players, length) for length in SIZE_LENGTHS],
        "heredity": [HeredityComponent(scale / n_players * scores) for scale in HEREDITY_SCALES]
        + [HeredityComponent(np.full(n_players, scale / n_players)) for scale in UNIFORM_SCALES],
        "local": [LocalComponent(n_players, width, rho) for width in widths for rho in LOCAL_RHOS],
    }


def choose_structure(
    signs: np.ndarray, targets: np.ndarray, families: dict[str, list[Component]]
) -> dict[str, tuple[int, float]]:
    """Per family, (shape index, variance) maximising the marginal likelihood by coordinate ascent."""
    rows, values = signs[:HYPERPARAMETER_SUBSAMPLE], targets[:HYPERPARAMETER_SUBSAMPLE]
    base = AdditiveComponent(signs.shape[1]).gram(rows, rows)
    grams = {family: [shape.gram(rows, rows) for shape in shapes] for family, shapes in families.items()}
    chosen = {family: (0, 0.0) for family in families}

    def likelihood(state: dict[str, tuple[int, float]]) -> float:
        gram = base.copy()
        for family, (shape, variance) in state.items():
            if variance > 0:
                gram += variance * grams[family][shape]
        return log_marginal_likelihood(gram, values)

    best = likelihood(chosen)
    for _ in range(SWEEPS):
        improved = False
        for family, shapes in families.items():
            for shape in range(len(shapes)):
                for variance in VARIANCE_GRIDS[family]:
                    trial = {**chosen, family: (shape, variance)}
                    score = likelihood(trial)
                    if score > best + 1e-9:
                        best, chosen, improved = score, trial, True
        if not improved:
            break
    return chosen


def _weighted(components: list[tuple[float, Component]], method: str, *rows: np.ndarray) -> np.ndarray:
    """The weighted sum of one Component method over a prior's components."""
    return sum(weight * getattr(component, method)(*rows) for weight, component in components)


def structured_posterior(
    signs: np.ndarray, targets: np.ndarray, components: list[tuple[float, Component]]
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean of phi and its stderr (float[n] each) given odd parts ``targets`` float[p] at sign rows.

    The stderr is the larger of the posterior sd, which trusts the fitted prior, and the delete-one-pair
    jackknife sd, which does not (see ``jackknife_sd``).
    """
    gram = _weighted(components, "gram", signs, signs)
    exact = np.abs(signs.sum(axis=1)) == signs.shape[1]  # the (empty, full) pair: no jitter, so efficiency holds
    gram += np.diag(np.where(exact, 0.0, JITTER * np.trace(gram) / len(gram)))
    inverse_factor = np.linalg.solve(np.linalg.cholesky(gram), np.eye(len(gram)))  # L^-1, gram = L L^T
    cross = _weighted(components, "cross", signs)  # [p, n]
    prior = _weighted(components, "prior_variance")
    weights = inverse_factor.T @ (inverse_factor @ targets)
    whitened = inverse_factor @ cross
    posterior_sd = np.sqrt(np.maximum(prior - (whitened**2).sum(axis=0), 0.0))
    smoother = whitened.T @ inverse_factor  # cross.T @ inverse(gram)
    jackknife = jackknife_sd(smoother, weights, (inverse_factor**2).sum(axis=0), ~exact)
    return cross.T @ weights, np.maximum(posterior_sd, jackknife)


def jackknife_sd(
    smoother: np.ndarray, weights: np.ndarray, inverse_diagonal: np.ndarray, free: np.ndarray
) -> np.ndarray:
    """Delete-one-pair jackknife sd float[n] of the posterior mean ``smoother @ targets`` (hyperparameters fixed).

    Dropping pair j moves the mean by smoother[:, j] * weights[j] / inverse_diagonal[j] (the Gaussian-process
    leave-one-out identity), so no refit is needed; pairs with ``free`` False (the exact pair) are never dropped.
    The posterior sd alone trusts the fitted prior, which the design leans on; its coverage on the real tables,
    with and without the jackknife, is in benchmarks/RESULTS.md.
    """
    shifts = (smoother * (weights / inverse_diagonal))[:, free]  # [n, p_free]
    count = shifts.shape[1]
    if count < 2:
        return np.zeros(len(smoother))
    centred = shifts - shifts.mean(axis=1, keepdims=True)
    return np.sqrt((count - 1) / count * (centred**2).sum(axis=1))


def greedy_design(
    signs: np.ndarray, candidates: np.ndarray, task_components: list[list[tuple[float, Component]]], count: int
) -> list[int]:
    """Indices of up to ``count`` candidate sign rows (float[c, n]) that most shrink the posterior variance of phi.

    ``signs`` float[p, n] are the pairs observed so far; each task's reduction is relative to its current
    total variance. Greedy with rank-one updates of the candidates' joint posterior.
    """
    states = []
    for components in task_components:
        gram = _weighted(components, "gram", signs, signs)
        factor = np.linalg.cholesky(gram + JITTER * np.trace(gram) / len(gram) * np.eye(len(gram)))
        to_candidates = np.linalg.solve(factor, _weighted(components, "gram", signs, candidates))
        to_phi = np.linalg.solve(factor, _weighted(components, "cross", signs))
        covariance = _weighted(components, "gram", candidates, candidates) - to_candidates.T @ to_candidates
        with_phi = _weighted(components, "cross", candidates) - to_candidates.T @ to_phi  # [c, n]
        total = float(np.maximum(_weighted(components, "prior_variance") - (to_phi**2).sum(axis=0), 0.0).sum())
        states.append([covariance, with_phi, total or 1.0])
    picked: list[int] = []
    available = np.ones(len(candidates), dtype=bool)
    for _ in range(min(count, len(candidates))):
        gain = np.zeros(len(candidates))
        for covariance, with_phi, total in states:
            gain += (with_phi**2).sum(axis=1) / np.maximum(np.diag(covariance), 1e-12) / total
        gain[~available] = -np.inf
        best = int(np.argmax(gain))
        picked.append(best)
        available[best] = False
        for state in states:
            covariance, with_phi, _ = state
            column = covariance[:, best].copy()
            pivot = max(column[best], 1e-12)
            state[0] = covariance - np.outer(column, column) / pivot
            state[1] = with_phi - np.outer(column, with_phi[best]) / pivot
    return picked


class StructuredGPEstimator(PairedDesignEstimator):
    """Designed pairs of coalitions, posterior of phi under the structured prior (see module docstring)."""

    name = "structured_gp"

    def __init__(self, settings: EstimatorSettings, round_size: int | None = None) -> None:
        n = settings.n_players
        self.first_round = min(settings.budget, max(2 * n + 2, int(FIRST_ROUND_SHARE * settings.budget)))
        designed = -(-(settings.budget - self.first_round) // DESIGN_ROUNDS)
        super().__init__(settings, round_size if round_size is not None else max(2, designed))
        self.chosen_structure: list[dict[str, tuple[int, float]]] = []

    def _enumerated_sizes(self) -> list[int]:
        """KernelSHAP's rule, but sizes 1 and n - 1 as soon as the first round has room (2n + 2; the rule waits
        until ~10n): they pin both ends of the size axis, where layered games collapse."""
        sizes = super()._enumerated_sizes()
        return sizes or (sorted({1, self.n_players - 1}) if self.first_round >= 2 * self.n_players + 2 else [])

    def params(self) -> dict[str, Any]:
        """Budget, round sizes and, per task, the (shape index, variance) chosen for each structure."""
        return {**super().params(), "first_round": self.first_round, "structure": self.chosen_structure}

    def _plan_round(self) -> Coalitions | None:
        n = self.n_players
        if self.rounds_started == 0:
            rows = [*full_and_empty(n), *enumerate_sizes(n, self.exact_sizes)][: self.budget]
            self._taken.update(coalition_key(row) for row in rows)
            count = self.first_round - len(rows)
            rows += sample_paired(n, self.sampled_sizes, self.size_weights, count, self.rng, self._taken)
        else:
            rows = self._designed_round(min(self.round_size, self.budget - len(self._taken)) // 2)
        if not rows:
            return None
        self._order.extend(rows)
        return np.array(rows)

    def _designed_round(self, pairs: int) -> list[np.ndarray]:
        """``pairs`` new complementary pairs picked by ``greedy_design`` from random candidates."""
        if pairs <= 0:
            return []
        coalitions, values = self.observed()
        signs, odd_parts, _ = complementary_pairs(coalitions, values)
        pilot = self._pilot(coalitions, values)
        task_components = [self._fit(signs, odd_parts[:, task], pilot[task])[0] for task in range(values.shape[1])]
        candidates = self._candidates(min(MAX_CANDIDATES, CANDIDATES_PER_PAIR * pairs))
        if not candidates:
            return []
        chosen = greedy_design(signs, np.where(candidates, 1.0, -1.0), task_components, pairs)
        rows = [row for index in chosen for row in (candidates[index], ~candidates[index])]
        self._taken.update(coalition_key(row) for row in rows)
        return rows

    def _candidates(self, count: int) -> list[np.ndarray]:
        """Up to ``count`` random coalitions, sizes uniform over the sampled ones, none of whose pair is taken."""
        sizes = self.sampled_sizes or list(range(1, self.n_players))
        rows: list[np.ndarray] = []
        seen = set(self._taken)
        for _ in range(20 * count):
            if len(rows) == count:
                break
            row = np.zeros(self.n_players, dtype=bool)
            row[self.rng.choice(self.n_players, sizes[self.rng.integers(len(sizes))], replace=False)] = True
            if coalition_key(row) in seen or coalition_key(~row) in seen:
                continue
            seen.update((coalition_key(row), coalition_key(~row)))
            rows.append(row)
        return rows

    def _pilot(self, coalitions: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Paired KernelSHAP estimates float[t, n]: the heredity structure's main-effect scores."""
        return constrained_additive_fit(coalitions, values, self.regression_weights(coalitions), values[0], values[1])

    def _fit(
        self, signs: np.ndarray, odd_parts: np.ndarray, pilot: np.ndarray
    ) -> tuple[list[tuple[float, Component]], dict[str, tuple[int, float]], float]:
        """One task's prior on its odd parts scaled to unit spread: components, chosen structure, the spread."""
        spread = float(odd_parts.std()) or 1.0
        scores = np.abs(pilot)
        norm = float(np.sqrt(np.mean(scores**2)))
        scores = scores / norm if norm > 0 else np.ones(self.n_players)
        families = structure_families(self.n_players, scores)
        structure = choose_structure(signs, odd_parts / spread, families)
        components: list[tuple[float, Component]] = [(1.0, AdditiveComponent(self.n_players))]
        components += [(variance, families[family][shape]) for family, (shape, variance) in structure.items()]
        return [(weight, component) for weight, component in components if weight > 0], structure, spread

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coalitions, values = self.observed()
        pilot = self._pilot(coalitions, values)
        signs, odd_parts, _ = complementary_pairs(coalitions, values)
        means, sds, chosen = [], [], []
        for task in range(values.shape[1]):
            components, structure, spread = self._fit(signs, odd_parts[:, task], pilot[task])
            mean, sd = structured_posterior(signs, odd_parts[:, task] / spread, components)
            means.append(mean * spread)
            sds.append(sd * spread)
            chosen.append(structure)
        self.chosen_structure = chosen
        return np.array(means), np.array(sds), np.full(self.n_players, len(coalitions))
