"""Task trade-offs: Shapley values of several tasks from one game, how their rankings agree, and what pruning
by one task's ranking costs on another.

Rank agreement is Spearman's rho between two tasks' values over the players. Its interval reflects the
estimation error only (not the sampling of questions): each task's values are redrawn from N(value, stderr)
``draws`` times and the spread of Fisher's ``atanh(rho)`` over the redraws sets ``tanh(atanh(rho) +- z sd)``.
Plans judged item by item across tasks live in :mod:`.crosstask`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.estimators import ShapleyResult, estimate, make_estimator
from shapley_svc.pruning.curves import pruning_curves, removal_order
from shapley_svc.stats import spearman
from shapley_svc.types import Game

Z_95 = 1.959963984540054


def shapley_values(game: Game, budget: int, estimator: str = "default", seed: int = 0) -> ShapleyResult:
    """Shapley values of every task of ``game`` by the registered ``estimator``, within ``budget`` evaluations."""
    built = make_estimator(
        estimator, n_players=game.n_players, budget=budget, seed=seed, player_names=tuple(game.player_names)
    )
    return estimate(built, game, budget=budget)


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho between tasks (``rho[t, t]``) with a ``level`` interval from the estimators' stderr."""

    tasks: tuple[str, ...]
    rho: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float

    def pair(self, first: str, second: str) -> tuple[float, float, float]:
        """(rho, low, high) of two tasks."""
        i, j = self.tasks.index(first), self.tasks.index(second)
        return float(self.rho[i, j]), float(self.low[i, j]), float(self.high[i, j])


def rank_correlations(
    values: np.ndarray, stderr: np.ndarray, tasks: Sequence[str], draws: int = 2000, z: float = Z_95, seed: int = 0
) -> RankCorrelation:
    """Spearman's rho of every pair of rows of ``values`` float[t, n], interval from redraws at ``stderr``."""
    values, stderr = np.asarray(values, dtype=float), np.asarray(stderr, dtype=float)
    if values.shape != stderr.shape or values.ndim != 2 or values.shape[0] != len(tasks):
        raise ConfigError(f"values {values.shape} and stderr {stderr.shape} must both be [tasks={len(tasks)}, players]")
    rng = np.random.default_rng(seed)
    redrawn = values + stderr * rng.standard_normal((draws, *values.shape))  # [draws, t, n]
    count = len(tasks)
    rho, low, high = np.eye(count), np.eye(count), np.eye(count)
    for i in range(count):
        for j in range(i + 1, count):
            point = float(np.clip(spearman(values[i], values[j]), -0.999999, 0.999999))
            spread = float(np.std(np.arctanh(np.clip(spearman(redrawn[:, i], redrawn[:, j]), -0.999999, 0.999999))))
            rho[i, j] = rho[j, i] = point
            low[i, j] = low[j, i] = float(np.tanh(np.arctanh(point) - z * spread))
            high[i, j] = high[j, i] = float(np.tanh(np.arctanh(point) + z * spread))
    return RankCorrelation(tuple(tasks), rho, low, high, level=math.erf(z / math.sqrt(2)))


def task_scores(result: ShapleyResult) -> dict[str, dict[str, float]]:
    """Per task, each player's Shapley value (the score mapping selection and curves take)."""
    return {
        task: dict(zip(result.player_names, result.values[index].tolist(), strict=True))
        for index, task in enumerate(result.task_names)
    }


@dataclass(frozen=True)
class RankingCurves:
    """Each ranking's pruning curve on every task: ``values[r, k, t]`` with ``k`` players removed (0..K)."""

    rankings: tuple[str, ...]
    tasks: tuple[str, ...]
    target: str
    values: np.ndarray
    removed: tuple[tuple[str, ...], ...]  # per ranking, the players in removal order

    def value(self, ranking: str, task: str, removed: int) -> float:
        """Task value after removing ``removed`` players by ``ranking``."""
        return float(self.values[self.rankings.index(ranking), removed, self.tasks.index(task)])

    def loss(self, ranking: str, task: str, removed: int) -> float:
        """How much of the full model's value on ``task`` the ``removed`` players of ``ranking`` cost."""
        r, t = self.rankings.index(ranking), self.tasks.index(task)
        return float(self.values[r, 0, t] - self.values[r, removed, t])


def ranking_curves(
    game: Game,
    scores: Mapping[str, Mapping[str, float]],
    num_layers: int,
    *,
    target: str,
    max_removed: int,
) -> RankingCurves:
    """Values of every task of ``game`` while the ``target`` players (block, attn or mlp) are removed, least
    important first, along each named ranking in ``scores`` (each point one coalition, cached by the game)."""
    orders = {name: removal_order(player_scores, num_layers, target=target) for name, player_scores in scores.items()}
    curves = pruning_curves(orders, {"game": game}, num_layers, max_removed=max_removed)
    names, tasks = tuple(orders), tuple(game.task_names)
    values = np.empty((len(names), max_removed + 1, len(tasks)))
    for series in curves.series:
        values[names.index(series["ranking"]), :, tasks.index(series["task"])] = series["values"]
    removed = tuple(tuple(player.name for player in orders[name][:max_removed]) for name in names)
    return RankingCurves(names, tasks, target, values, removed)
