"""Estimator convergence on a game with known Shapley values (a stored table): error against the exact values
as the budget grows, the calibration of the reported standard errors, and when "pruning set decided" fires.

RMSE over players per run; across seeds its mean and the standard error of that mean make the bands.
Coverage is the share of player estimates within one reported stderr of the exact value (0.68 if calibrated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.estimators import estimate, make_estimator
from shapley_svc.estimators.result import ShapleyResult
from shapley_svc.estimators.stopping import PruningSetDecided
from shapley_svc.types import Game

GameFactory = Callable[[], Game]
"""A fresh game per run (a table game counts what it served, so each run gets its own)."""


@dataclass(frozen=True)
class Convergence:
    """Per estimator and budget, over ``seeds``: RMSE mean and its stderr, mean reported stderr, coverage."""

    estimators: tuple[str, ...]
    budgets: tuple[int, ...]
    seeds: int
    rmse: np.ndarray  # float[e, b, seeds]
    coverage: np.ndarray  # float[e, b, seeds]
    reported: np.ndarray  # float[e, b, seeds]: mean reported stderr

    @property
    def rmse_mean(self) -> np.ndarray:
        """float[e, b]: RMSE averaged over seeds."""
        return self.rmse.mean(axis=-1)

    @property
    def rmse_stderr(self) -> np.ndarray:
        """float[e, b]: standard error of that average."""
        return self.rmse.std(axis=-1, ddof=1) / np.sqrt(self.seeds) if self.seeds > 1 else np.zeros_like(self.rmse_mean)

    def best(self, budget: int) -> str:
        """The estimator with the lowest mean RMSE at ``budget``."""
        return self.estimators[int(np.argmin(self.rmse_mean[:, self.budgets.index(budget)]))]


def error_vs_budget(
    make_game: GameFactory,
    exact: np.ndarray,
    estimators: Sequence[str],
    budgets: Sequence[int],
    seeds: int,
    task: int = 0,
) -> Convergence:
    """Run each registered estimator at each budget with seeds ``0..seeds-1`` against ``exact`` float[n]."""
    exact = np.asarray(exact, dtype=float)
    if seeds < 1 or not budgets or not estimators:
        raise ConfigError("give at least one estimator, one budget and one seed")
    shape = (len(estimators), len(budgets), seeds)
    rmse, coverage, reported = np.empty(shape), np.empty(shape), np.empty(shape)
    for e, name in enumerate(estimators):
        for b, budget in enumerate(budgets):
            for seed in range(seeds):
                game = make_game()
                built = make_estimator(name, n_players=game.n_players, budget=budget, seed=seed)
                result = estimate(built, game, budget=budget)
                error = result.values[task] - exact
                rmse[e, b, seed] = np.sqrt(np.mean(error**2))
                coverage[e, b, seed] = np.mean(np.abs(error) <= result.stderr[task])
                reported[e, b, seed] = np.mean(result.stderr[task])
    return Convergence(tuple(estimators), tuple(int(b) for b in budgets), seeds, rmse, coverage, reported)


class RecordingDecision(PruningSetDecided):
    """:class:`PruningSetDecided` that records, at each check, the evaluations used and the undecided players."""

    def __init__(self, k: int, z: float = 1.96) -> None:
        super().__init__(k, z)
        self.history: list[tuple[int, tuple[int, ...]]] = []

    def should_stop(self, result: ShapleyResult) -> bool:
        """The parent's decision, with the state it was taken in appended to ``history``."""
        self.history.append((result.evaluations_used, self.undecided(result.values[0], result.stderr[0])))
        return super().should_stop(result)

    def reset(self) -> None:
        """Forget the history."""
        self.history = []


@dataclass(frozen=True)
class DecisionRun:
    """One seeded run under "pruning set decided": when it fired (None: never within the budget), the set it
    chose, whether that is the exact k lowest, and the (evaluations, undecided count) trace of its checks."""

    seed: int
    fired_at: int | None
    evaluations: int
    chosen: tuple[int, ...]
    correct: bool
    trace: tuple[tuple[int, int], ...] = field(default=())


def pruning_set_decided_runs(
    make_game: GameFactory,
    exact: np.ndarray,
    estimator: str,
    k: int,
    max_budget: int,
    seeds: int,
    z: float = 1.96,
) -> list[DecisionRun]:
    """Per seed, run ``estimator`` until the k lowest players are decided at ``z`` stderr, or ``max_budget``."""
    exact = np.asarray(exact, dtype=float)
    truth = tuple(sorted(np.argsort(exact, kind="stable")[:k].tolist()))
    runs = []
    for seed in range(seeds):
        game = make_game()
        criterion = RecordingDecision(k, z)
        built = make_estimator(estimator, n_players=game.n_players, budget=max_budget, seed=seed)
        result = estimate(built, game, budget=max_budget, stopping=criterion)
        fired = bool(criterion.history) and not criterion.history[-1][1]
        chosen = tuple(sorted(np.argsort(result.values[0], kind="stable")[:k].tolist()))
        runs.append(
            DecisionRun(
                seed=seed,
                fired_at=criterion.history[-1][0] if fired else None,
                evaluations=result.evaluations_used,
                chosen=chosen,
                correct=chosen == truth,
                trace=tuple((used, len(open_players)) for used, open_players in criterion.history),
            )
        )
    return runs
