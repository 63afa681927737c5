"""Semivalues (size-weighted marginal contributions) by size-stratified maximum sample reuse.

A semivalue weights a player's marginal contributions by coalition size (Dubey, Neyman & Weber 1981):
phi_i = sum_{s=0}^{n-1} p_s E[v(S + i) - v(S) | S subset N \\ {i}, |S| = s], p_s >= 0, sum_s p_s = 1.
With A_{i,t} (B_{i,t}) the mean of v over the coalitions of size t with (without) i, this is
phi_i = sum_{t=0}^{n} p_{t-1} A_{i,t} - p_t B_{i,t} (p_{-1} = p_n = 0), so every coalition of size t informs
every player, as "with" or "without" (maximum sample reuse, Wang & Jia 2023). Weights offered here:
pruning regime, p uniform over s = n-1-k .. n-1 (i's marginal when k or fewer others are missing);
Beta Shapley (Kwon & Zou 2022), p_s = BetaBinomial(s; n-1, beta, alpha): Beta(1, 1) is Shapley, alpha > beta
favours small coalitions (the paper's Beta(16, 1), Beta(4, 1)), alpha < beta large ones (near-full networks);
weighted Banzhaf (Li & Yu 2023), p_s = Binomial(s; n-1, w): each other player present with probability w.

Design: stratum t gets samples in proportion to sd_t g_t, g_t^2 = n (p_{t-1}^2 / t + p_t^2 / (n - t)) (Neyman:
the variance of phi_i is about sum_t sd_t^2 g_t^2 / m_t); strata this fills are enumerated, the others drawn
uniformly without replacement, sd_t re-estimated each round. Control variate: an additive surrogate
u(T) = a_t + sum_{j in T} b_j per size t; A and B are its exact means plus the mean residuals (a regression
estimator, Sarndal, Swensson & Wretman 1992), so additive games come out exact. The slopes of size t are
fitted on the other sizes' rows only (cross-fitting), so they are independent of its sample. Stderr: given the
counts, a stratum's with- and without-samples are independent simple random samples of their subpopulations
(strata are independent), so Var phi_i = sum_t p_{t-1}^2 (1 - c/N) s^2 / c (with) + p_t^2 (...) (without), s^2
the residual variance of the side. A side seen once counts as one sample at the larger of its stratum's and
the pooled residual spread; a side never seen takes the surrogate's mean, at that spread. Where the budget
leaves small-weight sizes so sparse that sides go unseen (Beta(16, 1) at 10 n on 12 players), the surrogate's
misfit there is a bias the stderr covers only in part (88-90 % of values within 2 stderr instead of 95 %).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from math import ceil, comb, exp, lgamma, log
from typing import Any

import numpy as np

from shapley_svc.coalitions import coalition_key, full_and_empty
from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import Estimator, EstimatorSettings
from shapley_svc.estimators.exact import MAX_EXACT_PLAYERS, all_coalitions
from shapley_svc.types import Coalitions, PlayerVector, Values

ENUMERATE_BELOW = 200_000
"""Strata with fewer coalitions than this are drawn from their enumeration once half of them are wanted."""


# --- size weights -----------------------------------------------------------------------------------
def pruning_size_weights(n_players: int, removed: int) -> np.ndarray:
    """float[n]: p uniform over sizes n-1-removed .. n-1 (``removed`` = n - 1 gives the Shapley value)."""
    if isinstance(removed, bool) or not isinstance(removed, int | np.integer) or not 0 <= removed < n_players:
        raise ConfigError(
            f"removed must be an integer from 0 to n_players - 1 = {n_players - 1} (how many players a plan "
            f"removes), got {removed!r}"
        )
    weights = np.zeros(n_players)
    weights[n_players - 1 - int(removed) :] = 1.0 / (int(removed) + 1)
    return weights


def beta_shapley_size_weights(n_players: int, alpha: float, beta: float) -> np.ndarray:
    """float[n]: p_s = C(n-1, s) B(s + beta, n - 1 - s + alpha) / B(alpha, beta) (Kwon & Zou 2022)."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise ConfigError(f"Beta Shapley's {name} must be a positive number (16 and 1 in the paper), got {value!r}")

    def log_beta(a: float, b: float) -> float:
        return lgamma(a) + lgamma(b) - lgamma(a + b)

    last = n_players - 1
    logs = [log(comb(last, s)) + log_beta(s + beta, last - s + alpha) - log_beta(alpha, beta) for s in range(n_players)]
    weights = np.array([exp(value) for value in logs])
    return weights / weights.sum()


def weighted_banzhaf_size_weights(n_players: int, weight: float) -> np.ndarray:
    """float[n]: p_s = C(n-1, s) w^s (1 - w)^(n-1-s), every other player present with probability w."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
        raise ConfigError(f"weighted Banzhaf's weight must lie in [0, 1] (0.5 is Banzhaf), got {weight!r}")
    last = n_players - 1
    return np.array([comb(last, s) * weight**s * (1.0 - weight) ** (last - s) for s in range(n_players)])


def checked_size_weights(size_weights: Sequence[float] | np.ndarray, n_players: int) -> np.ndarray:
    """The weights as float[n] summing to 1; a ConfigError for a wrong length, a negative or no mass."""
    weights = np.asarray(size_weights, dtype=np.float64)
    if weights.shape != (n_players,):
        raise ConfigError(
            f"size_weights needs one weight per coalition size 0 .. n - 1 ({n_players} numbers), got shape "
            f"{list(weights.shape)}"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ConfigError(f"size_weights must be finite, non-negative and not all zero, got {weights.tolist()}")
    return weights / weights.sum()


def stratum_coefficients(size_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float[n + 1] twice: the weight of A_{i,t} (with i, p_{t-1}) and of B_{i,t} (without i, p_t) per size t."""
    with_coef = np.concatenate([[0.0], size_weights])
    without_coef = np.concatenate([size_weights, [0.0]])
    return with_coef, without_coef


def semivalue_from_table(values: Values, size_weights: Sequence[float] | np.ndarray) -> PlayerVector:
    """Exact semivalues float[t, n] from a full table float[2^n, t] indexed as in ``all_coalitions``.

    Example:
        >>> table = all_coalitions(3) @ np.array([1.0, 2.0, 3.0])  # an additive game
        >>> semivalue_from_table(table, beta_shapley_size_weights(3, 16, 1)).round(6).tolist()
        [[1.0, 2.0, 3.0]]
    """
    table = np.asarray(values, dtype=np.float64)
    table = table[:, None] if table.ndim == 1 else table
    n = table.shape[0].bit_length() - 1
    if n > MAX_EXACT_PLAYERS or table.shape[0] != 1 << n:
        raise ConfigError(f"a full table has 2^n rows for n <= {MAX_EXACT_PLAYERS}, got {table.shape[0]} rows")
    with_coef, without_coef = stratum_coefficients(checked_size_weights(size_weights, n))
    rows = all_coalitions(n)
    sizes = rows.sum(axis=1)
    result = np.zeros((table.shape[1], n))
    for size in range(n + 1):
        present, stratum = rows[sizes == size], table[sizes == size]  # [m, n], [m, t]
        if with_coef[size] > 0:
            result += with_coef[size] * (stratum.T @ present) / comb(n - 1, size - 1)
        if without_coef[size] > 0:
            result -= without_coef[size] * (stratum.T @ ~present) / comb(n - 1, size)
    return result


# --- allocation -------------------------------------------------------------------------------------
def water_fill(scores: np.ndarray, capacities: np.ndarray, total: int) -> np.ndarray:
    """int[k]: ``total`` samples split in proportion to ``scores``, none past its capacity (largest remainders)."""
    counts = np.zeros(len(scores), dtype=np.int64)
    live = (np.asarray(scores) > 0) & (np.asarray(capacities) > 0)
    remaining = int(total)
    while remaining > 0 and live.any():
        index = np.flatnonzero(live)
        share = remaining * scores[index] / scores[index].sum()
        full = capacities[index] <= share
        if full.any():
            counts[index[full]] = capacities[index[full]]
            remaining -= int(capacities[index[full]].sum())
            live[index[full]] = False
            continue
        base = np.floor(share).astype(np.int64)
        extra = np.argsort(-(share - base), kind="stable")[: remaining - int(base.sum())]
        base[extra] += 1
        counts[index] = base
        break
    return counts


# --- the additive control variate -------------------------------------------------------------------
def centred_slopes(gram: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """Slopes float[n, t] from within-size normal equations (``gram`` [n, n], ``cross`` [n, t]); zeros if unidentified.

    Within one size sum_j x_j is fixed, so the all-ones direction is never identified (the offsets absorb it):
    the slopes are fitted once the rows span every other direction, and carry no all-ones component.
    """
    n_players = len(gram)
    slopes = np.zeros_like(cross)
    if n_players < 2:
        return slopes
    eigenvalues, vectors = np.linalg.eigh(gram)
    kept = eigenvalues > 1e-9 * max(float(eigenvalues[-1]), 1e-300)
    if kept.sum() == n_players - 1:
        basis = vectors[:, kept]  # [n, n - 1]
        slopes = basis @ ((basis.T @ cross) / eigenvalues[kept, None])
    return slopes


@dataclass(frozen=True)
class SizeControl:
    """The control variate of one coalition size: u(T) = offset + sum_{j in T} slopes[:, j], per task."""

    slopes: np.ndarray  # float[t, n]
    offset: np.ndarray  # float[t]

    def side_means(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact means float[t, n] of u over the size-``size`` coalitions with and without each player."""
        n = self.slopes.shape[1]
        others = self.slopes.sum(axis=1, keepdims=True) - self.slopes  # [t, n]
        base = self.offset[:, None]
        return base + self.slopes + others * (size - 1) / max(n - 1, 1), base + others * size / max(n - 1, 1)


def cross_fitted_controls(
    strata: dict[int, tuple[np.ndarray, np.ndarray]], sizes: Sequence[int], n_players: int
) -> dict[int, SizeControl]:
    """An additive control variate for each of ``sizes``, its slopes fitted on the *other* sizes' rows.

    ``strata`` maps each observed size to its rows bool[m, n] and values float[m, t]. Slopes independent of a
    size's own sample keep its regression estimate unbiased and its residual variance honest; the offset is the
    size's mean residual. A size never observed gets the slopes of all rows and an interpolated offset.
    """
    seen = sorted(strata)
    n_tasks = strata[seen[0]][1].shape[1]
    grams: dict[int, np.ndarray] = {}
    crosses: dict[int, np.ndarray] = {}
    for size in seen:
        rows, values = strata[size]
        centred = rows - rows.mean(axis=0)  # [m, n]
        grams[size], crosses[size] = centred.T @ centred, centred.T @ (values - values.mean(axis=0))
    gram, cross = sum(grams.values()), sum(crosses.values())
    pooled = centred_slopes(gram, cross).T  # [t, n]
    offsets = np.array([strata[size][1].mean(axis=0) - pooled @ strata[size][0].mean(axis=0) for size in seen])
    controls: dict[int, SizeControl] = {}
    for size in sizes:
        if size not in strata:
            offset = np.array([np.interp(size, seen, offsets[:, task]) for task in range(n_tasks)])
            controls[size] = SizeControl(pooled, offset)
            continue
        rows, values = strata[size]
        slopes = centred_slopes(gram - grams[size], cross - crosses[size]).T
        controls[size] = SizeControl(slopes, values.mean(axis=0) - slopes @ rows.mean(axis=0))
    return controls


def side_estimate(
    residuals: np.ndarray, present: np.ndarray, population: int, fallback: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean residual float[t, n], its variance float[t, n] and count int[n] over the rows ``present`` marks.

    ``residuals`` [m, t]; a side with fewer than two rows takes ``fallback`` (float[t]) as its spread (and mean
    residual 0 when it has none); ``population`` is the side's number of coalitions.
    """
    count = present.sum(axis=0)  # [n]
    safe = np.maximum(count, 1)
    mean = (residuals.T @ present) / safe
    spread = ((residuals**2).T @ present / safe - mean**2) * count / np.maximum(count - 1, 1)
    spread = np.where(count >= 2, np.maximum(spread, 0.0), fallback[:, None])
    finite_population = np.maximum(1.0 - count / population, 0.0)
    with np.errstate(invalid="ignore"):
        variance = np.where(finite_population > 0, finite_population * spread / safe, 0.0)
    return mean, variance, count


# --- the estimator ----------------------------------------------------------------------------------
class SemivalueEstimator(Estimator):
    """The semivalue with size weights ``size_weights`` (p_0 .. p_{n-1}; normalised), with standard errors.

    ``rounds`` sampling rounds: a pilot, then Neyman reallocation from the residual spreads seen so far.
    """

    name = "semivalue"

    def __init__(self, settings: EstimatorSettings, size_weights: Sequence[float], rounds: int = 4) -> None:
        super().__init__(settings)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"rounds must be a positive integer, got {rounds!r}")
        n = settings.n_players
        self.rounds = rounds
        self.size_weights = checked_size_weights(size_weights, n)
        self.with_coef, self.without_coef = stratum_coefficients(self.size_weights)
        sizes = np.arange(n + 1)
        inner = np.maximum(sizes, 1), np.maximum(n - sizes, 1)
        self._size_gain = np.sqrt(n * (self.with_coef**2 / inner[0] + self.without_coef**2 / inner[1]))
        self.strata = [int(size) for size in sizes if self.with_coef[size] > 0 or self.without_coef[size] > 0]
        self._drawn: dict[int, list[np.ndarray]] = {}
        self._taken: set[bytes] = set()
        self._round_budget = 0

    def params(self) -> dict[str, Any]:
        """Budget, rounds and the normalised size weights p_0 .. p_{n-1}."""
        return {"budget": self.budget, "rounds": self.rounds, "size_weights": self.size_weights.tolist()}

    # --- sampling ---------------------------------------------------------------------------------
    def _keep(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        for row in rows:
            self._taken.add(coalition_key(row))
            self._drawn.setdefault(int(row.sum()), []).append(row)
        return rows

    def _left(self, size: int) -> int:
        return comb(self.n_players, size) - len(self._drawn.get(size, []))

    def _draw(self, size: int, count: int) -> list[np.ndarray]:
        """Up to ``count`` new coalitions of one size, uniformly without replacement."""
        n, left = self.n_players, self._left(size)
        count = min(count, left)
        if count <= 0:
            return []
        if comb(n, size) < ENUMERATE_BELOW and 2 * count >= left:
            unseen = []
            for members in combinations(range(n), size):
                row = np.zeros(n, dtype=bool)
                row[list(members)] = True
                if coalition_key(row) not in self._taken:
                    unseen.append(row)
            return self._keep([unseen[k] for k in sorted(self.rng.choice(len(unseen), count, replace=False))])
        rows: list[np.ndarray] = []
        seen: set[bytes] = set()
        for _ in range(50 * count + 100):
            row = np.zeros(n, dtype=bool)
            row[self.rng.choice(n, size, replace=False)] = True
            key = coalition_key(row)
            if key not in self._taken and key not in seen:
                seen.add(key)
                rows.append(row)
                if len(rows) == count:
                    break
        return self._keep(rows)

    def _quotas(self, total: int, spreads: np.ndarray) -> dict[int, int]:
        sizes = np.array(self.strata)
        capacities = np.array([self._left(int(size)) for size in sizes], dtype=np.int64)
        counts = water_fill(spreads[sizes] * self._size_gain[sizes], capacities, total)
        return {int(size): int(count) for size, count in zip(sizes, counts, strict=True) if count > 0}

    def _plan_round(self) -> Coalitions | None:
        rows: list[np.ndarray] = []
        if self.rounds_started == 0:
            rows = self._keep(list(full_and_empty(self.n_players))[: self.budget])
            for size, quota in self._quotas(self.budget - len(rows), np.ones(self.n_players + 1)).items():
                whole = quota >= self._left(size)
                rows += self._draw(size, quota if whole else ceil(quota / self.rounds))
            self._round_budget = ceil((self.budget - len(self._taken)) / max(self.rounds - 1, 1))
        else:
            room = min(self.budget - len(self._taken), self._round_budget)
            for size, quota in self._quotas(room, self._spreads()).items():
                rows += self._draw(size, quota)
        return np.array(rows) if rows else None

    # --- estimate ---------------------------------------------------------------------------------
    def _observed_strata(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        strata: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for size, drawn in sorted(self._drawn.items()):
            rows = [row for row in drawn if self.is_observed(row)]
            if rows:
                strata[size] = (np.array(rows), np.array([self.value(row) for row in rows]))
        return strata

    def _residuals(self) -> tuple[dict[int, SizeControl], dict[int, tuple[np.ndarray, np.ndarray]]]:
        """The control of every weighted size, and per observed size its rows and residuals float[m, t]."""
        strata = self._observed_strata()
        controls = cross_fitted_controls(strata, sorted({*self.strata, *strata}), self.n_players)
        residuals = {}
        for size, (rows, values) in strata.items():
            control = controls[size]
            residuals[size] = (rows, values - control.offset - rows @ control.slopes.T)
        return controls, residuals

    def _spreads(self) -> np.ndarray:
        """Residual standard deviation per size (root mean over tasks); unseen sizes get the largest seen."""
        spreads = np.full(self.n_players + 1, np.nan)
        for size, (_, residuals) in self._residuals()[1].items():
            if len(residuals) > 1:
                spreads[size] = float(np.sqrt(np.mean(residuals.var(axis=0, ddof=1))))
        known = spreads[np.isfinite(spreads)]
        fill = float(known.max()) if known.size and known.max() > 0 else 1.0
        return np.where(np.isfinite(spreads) & (spreads > 0), spreads, fill)

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.n_players
        controls, residuals = self._residuals()
        n_tasks = controls[self.strata[0]].offset.shape[0]
        spreads = {size: raw.var(axis=0, ddof=1) for size, (_, raw) in residuals.items() if len(raw) > 1}
        pooled = np.mean(list(spreads.values()), axis=0) if spreads else np.full(n_tasks, np.inf)
        values, variance = np.zeros((n_tasks, n)), np.zeros((n_tasks, n))
        counts = np.zeros(n, dtype=np.int64)
        for size in self.strata:
            rows, raw = residuals.get(size, (np.zeros((0, n), dtype=bool), np.zeros((0, n_tasks))))
            with_mean, without_mean = controls[size].side_means(size)
            sides = ((self.with_coef[size], rows, with_mean, comb(n - 1, size - 1) if size else 0, 1.0),)
            sides += ((self.without_coef[size], ~rows, without_mean, comb(n - 1, size), -1.0),)
            for coefficient, present, exact_mean, population, sign in sides:
                if coefficient == 0:
                    continue
                mean, side_variance, count = side_estimate(
                    raw, present, population, np.maximum(spreads.get(size, pooled), pooled)
                )
                values += sign * coefficient * (exact_mean + mean)
                variance += coefficient**2 * side_variance
                counts += count
        return values, np.sqrt(variance), counts


class PruningSemivalueEstimator(SemivalueEstimator):
    """A player's mean marginal contribution when ``removed`` (k) or fewer of the others are missing.

    p uniform over coalition sizes n-1-k .. n-1, for a plan removing k players; or ``keep_fraction`` f, with
    k = n - round(f n) as the seed paper's subnetworks (default f = 0.9). k = 0 is leave-one-out, k = n - 1
    the Shapley value.
    """

    name = "pruning_semivalue"

    def __init__(
        self,
        settings: EstimatorSettings,
        removed: int | None = None,
        keep_fraction: float | None = None,
        rounds: int = 4,
    ) -> None:
        n = settings.n_players
        if removed is not None and keep_fraction is not None:
            raise ConfigError(f"give removed ({removed}) or keep_fraction ({keep_fraction}), not both")
        if removed is None:
            fraction = 0.9 if keep_fraction is None else keep_fraction
            if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction < 1.0:
                raise ConfigError(f"keep_fraction must lie strictly between 0 and 1, got {fraction!r}")
            removed = n - min(max(round(fraction * n), 1), n - 1) if n > 1 else 0
        super().__init__(settings, pruning_size_weights(n, removed), rounds)
        self.removed, self.keep_fraction = int(removed), keep_fraction

    def params(self) -> dict[str, Any]:
        """Budget, rounds, size weights, k (``removed``) and the keep fraction it came from, if any."""
        return {**super().params(), "removed": self.removed, "keep_fraction": self.keep_fraction}


class BetaShapleyEstimator(SemivalueEstimator):
    """Beta(alpha, beta) Shapley (Kwon & Zou 2022); alpha > beta favours small coalitions, alpha < beta large."""

    name = "beta_shapley"

    def __init__(self, settings: EstimatorSettings, alpha: float = 16.0, beta: float = 1.0, rounds: int = 4) -> None:
        super().__init__(settings, beta_shapley_size_weights(settings.n_players, alpha, beta), rounds)
        self.alpha, self.beta = alpha, beta

    def params(self) -> dict[str, Any]:
        """Budget, rounds, size weights, alpha and beta."""
        return {**super().params(), "alpha": self.alpha, "beta": self.beta}


class WeightedBanzhafEstimator(SemivalueEstimator):
    """Weighted Banzhaf (Li & Yu 2023): every other player present with probability ``weight`` (0.5: Banzhaf)."""

    name = "weighted_banzhaf"

    def __init__(self, settings: EstimatorSettings, weight: float = 0.5, rounds: int = 4) -> None:
        super().__init__(settings, weighted_banzhaf_size_weights(settings.n_players, weight), rounds)
        self.weight = weight

    def params(self) -> dict[str, Any]:
        """Budget, rounds, size weights and the presence probability ``weight``."""
        return {**super().params(), "weight": self.weight}
