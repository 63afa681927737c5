"""The default plan searcher: Bayesian optimisation over removal sets, with a Gaussian-process surrogate.

Near the full model the cost of removing a set R is roughly the sum of its players' costs, plus interactions
that are strongest between neighbouring layers (redundant neighbours) and that grow with how many go. The
surrogate is a Gaussian process over removal sets with the kernel

    k(R, R') = s0 + s1 |R & R'| + s2 sum_{i<j in R & R'} rho^(d(i, j) - 1) + s3 C(|R & R'|, 3)

(``d``: distance between candidates in layer order): a Bayesian regression on main effects, pairwise and
third-order interactions, its weights chosen by marginal likelihood on a grid after each read (O'Hagan 1978;
Baptista & Poloczek 2018, BOCS, for a polynomial surrogate over sets). The search

1. reads every single removal (SLEB's first step, leave-one-out): the main effects;
2. reads the k-set of each prior ranking it is given (by default the k lowest leave-one-out costs), so it is
   never worse than those rankings;
3. then reads ``batch`` k-sets at a time (a batch is fantasised on the posterior mean, so it does not depend
   on the number of workers) of highest expected improvement over the best read: among every k-set when they
   are few, else among the swaps of the best sets read and the set the posterior mean builds greedily;
   it stops when no candidate's expected improvement reaches ``tolerance`` or the budget is spent;
4. with selection data (fresh windows or items; :class:`~shapley_svc.planning.problem.RemovalGame`), reads the
   ``finalists`` best sets and every ranking's set there, keeping reads for them from the budget, and the plan
   is the best there: the best of a hundred sets on 512 tokens is the one the calibration text flatters most
   (on the demo's 8-block and 8-attention rows it lost 0.05 nats held out to leave-one-out's and the static
   metrics' sets), while a few finalists read on fresh data are judged without that bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations, product

import numpy as np

from shapley_svc.errors import ConfigError, at_least
from shapley_svc.estimators.gp import JITTER, log_marginal_likelihood
from shapley_svc.planning.problem import Removal, RemovalGame
from shapley_svc.planning.searchers import PlanSearcher, lowest, swaps

ENUMERATE_UP_TO = 5000
"""Score every k-set when there are at most this many; else a pool of swaps and greedy constructions."""

CONSTANT_VARIANCE = 10.0
SIZE_VARIANCE = 1.0
HEREDITY_VARIANCES = (0.03, 0.1, 0.3, 1.0)
ORDER_DECAYS = (0.3, 1.0)
NEIGHBOUR_VARIANCES = (0.0, 0.1, 0.3, 1.0)
NOISE = 1e-6
ADJACENT_MEAN = -0.25
ADJACENT_SD = 0.25
"""Prior mean and sd of a coefficient shared by every adjacent pair removed, in mean single-removal costs:
removing both of two redundant neighbours tends to cost more than the sum (SLEB's observation; the shipped
table's adjacent pairs agree); the posterior of the coefficient follows the sets read."""


def adjacent_pairs(indicators: np.ndarray) -> np.ndarray:
    """float[...]: how many pairs of candidates next to each other in layer order each set removes (the last
    axis of ``indicators`` is the candidates)."""
    return (indicators[..., :-1] * indicators[..., 1:]).sum(axis=-1)


@dataclass(frozen=True)
class Weights:
    """The kernel weights the marginal likelihood chooses: heredity interactions, their decay with order,
    neighbouring pairs."""

    heredity: float
    decay: float
    neighbours: float


GRID = tuple(Weights(*weights) for weights in product(HEREDITY_VARIANCES, ORDER_DECAYS, NEIGHBOUR_VARIANCES))


class KernelTerms:
    """The kernel's terms between two families of removal sets (indicators float[m, c], candidates in layer
    order), computed once and weighted for any :class:`Weights`.

    Terms: a constant; main effects; interactions of every order among the players removed in both sets,
    weighted by the product of their heredity weights (strong players interact strongly); pairwise interactions
    of neighbouring candidates (redundant neighbours, weight 1 at distance 1, 1/2 at distance 2); a drift with
    the number removed; and the shared coefficient of adjacent pairs (prior variance ``adjacent``).
    """

    def __init__(
        self,
        first: np.ndarray,
        second: np.ndarray,
        heredity: np.ndarray,
        max_order: int,
        adjacent: float,
        *,
        diagonal: bool = False,
    ) -> None:
        if diagonal:  # k(R, R) of each row of first (= second), without the m x m matrix: [m, 1]
            shared, second = first[:, None, :], first[:, None, :]
        else:
            shared, second = first[:, None, :] * second[None, :, :], second[None, :, :]  # [a, b, c]
        first_sizes, first_pairs = first.sum(axis=1)[:, None], adjacent_pairs(first)[:, None]
        second_sizes, second_pairs = second.sum(axis=2), adjacent_pairs(second)
        self.fixed = CONSTANT_VARIANCE + shared.sum(axis=2) + SIZE_VARIANCE * (first_sizes - 1) * (second_sizes - 1)
        self.fixed = self.fixed + adjacent * first_pairs * second_pairs
        self.orders = _elementary(shared * heredity, max_order)[2:]
        self.neighbours = adjacent_pairs(shared) + 0.5 * (shared[..., :-2] * shared[..., 2:]).sum(axis=-1)

    def gram(self, weights: Weights) -> np.ndarray:
        """The kernel matrix under ``weights``: [a, b], or [m, 1] for a diagonal."""
        interactions = sum(weights.decay**order * term for order, term in enumerate(self.orders))
        return self.fixed + weights.heredity * interactions + weights.neighbours * self.neighbours


def _elementary(weighted: np.ndarray, max_order: int) -> list[np.ndarray]:
    """The elementary symmetric polynomials e_0..e_max_order of ``weighted`` [a, b, c] over its last axis."""
    elementary = [np.ones(weighted.shape[:2]), *(np.zeros(weighted.shape[:2]) for _ in range(max_order))]
    for player in range(weighted.shape[2]):
        column = weighted[:, :, player]
        for order in range(max_order, 0, -1):
            elementary[order] = elementary[order] + column * elementary[order - 1]
    return elementary


class Surrogate:
    """The Gaussian-process posterior of standardised objective values given the removal sets read.

    Its prior mean is a penalty per adjacent pair removed (``ADJACENT_MEAN``), whose coefficient is uncertain
    (``ADJACENT_SD``); the kernel's other weights are chosen by marginal likelihood.
    """

    def __init__(self, indicators: np.ndarray, values: np.ndarray, heredity: np.ndarray, max_order: int) -> None:
        singles = values[indicators.sum(axis=1) == 1]
        self.centre = float(np.median(singles)) if len(singles) else float(np.median(values))
        self.spread = float(np.std(singles)) if len(singles) > 1 and np.std(singles) > 0 else 1.0
        mean_cost = float(np.mean(singles.max() - singles)) if len(singles) else 0.0
        self.penalty = ADJACENT_MEAN * mean_cost
        self.indicators, self.heredity, self.max_order = indicators, heredity, max_order
        self.adjacent = (ADJACENT_SD * mean_cost / self.spread) ** 2
        targets = (values - self._prior_mean(indicators)) / self.spread
        terms = self._terms(indicators)
        noise = NOISE * CONSTANT_VARIANCE * np.eye(len(indicators))
        self.kernel = max(GRID, key=lambda weights: log_marginal_likelihood(terms.gram(weights) + noise, targets))
        gram = terms.gram(self.kernel) + noise
        self.factor = np.linalg.cholesky(gram + JITTER * np.trace(gram) / len(gram) * np.eye(len(gram)))
        self.weights = np.linalg.solve(self.factor.T, np.linalg.solve(self.factor, targets))

    def _terms(self, first: np.ndarray, *, diagonal: bool = False) -> KernelTerms:
        second = first if diagonal else self.indicators
        return KernelTerms(first, second, self.heredity, self.max_order, self.adjacent, diagonal=diagonal)

    def predict(self, indicators: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd (float[m] each, in objective units) of the removal sets ``indicators``."""
        cross = self._terms(indicators).gram(self.kernel)  # [m, p]
        mean = cross @ self.weights
        whitened = np.linalg.solve(self.factor, cross.T)  # [p, m]
        prior = self._terms(indicators, diagonal=True).gram(self.kernel)[:, 0]
        variance = np.maximum(prior - (whitened**2).sum(axis=0), 0.0)
        return self._prior_mean(indicators) + self.spread * mean, self.spread * np.sqrt(variance)

    def _prior_mean(self, indicators: np.ndarray) -> np.ndarray:
        return self.centre + self.penalty * adjacent_pairs(indicators)


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """E[max(f - best, 0)] under N(mean, sd^2) for each candidate (0 where sd is 0 and mean <= best)."""
    safe = np.maximum(sd, 1e-300)
    z = (mean - best) / safe
    density = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    improvement = (mean - best) * _normal_cdf(z) + safe * density
    return np.where(sd > 0, improvement, np.maximum(mean - best, 0.0))


_normal_cdf = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2)), otypes=[float])


class ModelBasedSearch(PlanSearcher):
    """Bayesian optimisation over removal sets of k (the recommended searcher, registered as ``default``)."""

    name = "model_based"

    def __init__(
        self,
        rankings: Sequence[Sequence[float]] = (),
        batch: int = 1,
        tolerance: float = 1e-6,
        pool: int = 3,
        finalists: int = 3,
    ) -> None:
        if tolerance < 0:
            raise ConfigError(f"tolerance must be at least 0, got {tolerance}")
        self.rankings = [np.asarray(scores, dtype=np.float64) for scores in rankings]
        self.batch, self.pool, self.tolerance = at_least(batch, 1, "batch"), at_least(pool, 1, "pool"), tolerance
        self.finalists = at_least(finalists, 1, "finalists")

    def search(self, game: RemovalGame, rng: np.random.Generator) -> None:
        problem = game.problem
        candidates, k = problem.candidates, problem.k
        singles = [frozenset([player]) for player in candidates]
        unread = sum(game.known(single) is None for single in singles)
        if game.remaining < unread + 1:
            raise ConfigError(
                f"the model-based search needs at least {unread + 1} reads (every single removal not read yet and "
                f"one set of {k}), got a budget of {game.budget} with {game.used} read"
            )
        costs = dict(zip(candidates, -game.values(singles), strict=True))
        rankings = [{player: float(scores[player]) for player in candidates} for scores in self.rankings]
        seeds = list(dict.fromkeys(lowest(problem, scores) for scores in [costs, *rankings]))
        game.values(seeds[: game.remaining])
        reserve = max(0, min(len(seeds) + self.finalists, game.remaining - 1)) if game.selection is not None else 0
        while game.remaining > reserve:
            proposals = self._propose(game, min(self.batch, game.remaining - reserve))
            if not proposals:
                break
            game.values(proposals)
        if game.selection is not None and game.remaining > 0:
            game.select(self._finalists(game, seeds)[: game.remaining])

    def _finalists(self, game: RemovalGame, seeds: list[Removal]) -> list[Removal]:
        """The best set read, every ranking's set, then the next best sets: complete sets within the limits."""
        read = [step for step in game.path if game.problem.complete(step.removed) and step.feasible]
        ranked = [step.removed for step in sorted(read, key=lambda step: -step.value)]
        feasible = set(ranked)
        return list(
            dict.fromkeys([*ranked[:1], *(seed for seed in seeds if seed in feasible), *ranked[: self.finalists]])
        )

    def _propose(self, game: RemovalGame, count: int) -> list[Removal]:
        """Up to ``count`` unread k-sets of highest expected improvement, each fantasised before the next."""
        problem = game.problem
        position = {player: index for index, player in enumerate(problem.candidates)}
        indicators = _indicators([step.removed for step in game.path], position)
        values = np.array([step.value for step in game.path])
        pool = [removal for removal in self._pool(game) if game.known(removal) is None]
        heredity = _heredity(game)
        chosen: list[Removal] = []
        for _ in range(count):
            pool = [removal for removal in pool if removal not in chosen]
            if not pool:
                break
            surrogate = Surrogate(indicators, values, heredity, problem.k)
            mean, sd = surrogate.predict(_indicators(pool, position))
            gain = expected_improvement(mean, sd, _incumbent(game))
            best = int(np.argmax(gain))
            if gain[best] < self.tolerance:
                break
            chosen.append(pool[best])
            indicators = np.vstack([indicators, _indicators([pool[best]], position)])
            values = np.append(values, mean[best])
        return chosen

    def _pool(self, game: RemovalGame) -> list[Removal]:
        """Every set filling the quotas when there are few, else swaps of the best sets read and the windows of
        the cheapest candidates of each quota."""
        problem = game.problem
        if math.prod(math.comb(len(q.candidates), q.count) for q in problem.quotas) <= ENUMERATE_UP_TO:
            choices = (combinations(quota.candidates, quota.count) for quota in problem.quotas)
            return [frozenset().union(*parts) for parts in product(*choices)]
        read = sorted((step for step in game.path if problem.complete(step.removed)), key=lambda step: -step.value)
        pool: dict[Removal, None] = {}
        for step in read[: self.pool]:
            pool.update(dict.fromkeys(swaps(step.removed, problem)))
        costs = {player: -(game.known(frozenset([player])) or 0.0) for player in problem.candidates}
        orders = [sorted(quota.candidates, key=lambda player: costs[player]) for quota in problem.quotas]
        for start in range(2 * problem.k):
            windows = (
                order[min(start, len(order) - q.count) :][: q.count]
                for order, q in zip(orders, problem.quotas, strict=True)
            )
            pool[frozenset().union(*windows)] = None
        return list(pool)


def _heredity(game: RemovalGame) -> np.ndarray:
    """float[c]: each candidate's weight in the interaction terms, 1/2 plus its single-removal cost over the
    mean cost (never 0: cheap players interact too, e.g. redundant neighbours)."""
    values = np.array([game.known(frozenset([player])) for player in game.problem.candidates], dtype=np.float64)
    costs = values.max() - values
    return 0.5 + costs / (costs.mean() or 1.0)


def _incumbent(game: RemovalGame) -> float:
    """The value to improve on: the best set of k read, within the limits or not (its score carries the
    penalty), else the best set read of any size."""
    complete = [step.value for step in game.path if game.problem.complete(step.removed)]
    return max(complete) if complete else max(step.value for step in game.path)


def _indicators(removals: Sequence[Removal], position: dict[int, int]) -> np.ndarray:
    """float[m, c]: 1 where a removal set holds the candidate at that position."""
    matrix = np.zeros((len(removals), len(position)))
    for row, removal in enumerate(removals):
        matrix[row, [position[player] for player in removal]] = 1.0
    return matrix
