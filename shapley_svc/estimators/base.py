"""The ask/tell protocol shared by every estimator, and the round machinery behind it.

An estimator hands out coalitions to evaluate (``ask``) and takes their values back (``tell``); all of
its state lives in the estimator, so a distributed driver is a dumb pump. Work is organised in *rounds*:
every decision (which coalitions to evaluate next) is taken at a round boundary, from the values of the
completed rounds and a seeded generator, so the same seed gives the same result whatever the ask batch
size, the number of workers or the order in which tells arrive.

Budget means *distinct* coalition evaluations: an estimator never asks again for a coalition it has been
told, and never plans more distinct coalitions than its budget. What it has been told is its data (the
observations its estimate is computed from), not a cache: every evaluation, and every reuse of a value
across clients and runs, goes through the one :class:`~shapley_svc.runner.evaluator.Evaluator`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from shapley_svc.coalitions import CoalitionTable, coalition_key
from shapley_svc.errors import ConfigError, EvaluationError
from shapley_svc.estimators.result import ShapleyResult
from shapley_svc.types import Coalitions, Values


@dataclass(frozen=True)
class CoalitionRequest:
    """A batch of coalitions to evaluate; answer it with ``tell(request.request_id, values)``."""

    request_id: int
    coalitions: Coalitions  # bool[k, n]


@dataclass
class EstimatorSettings:
    """What every estimator is built from: players, budget (distinct evaluations) and seed."""

    n_players: int
    budget: int
    seed: int = 0
    player_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.n_players < 1:
            raise ConfigError(f"n_players must be at least 1, got {self.n_players}")
        if self.budget < 2:
            raise ConfigError(f"budget must be at least 2 (the empty and the full coalition), got {self.budget}")
        if not self.player_names:
            self.player_names = default_player_names(self.n_players)
        if len(self.player_names) != self.n_players:
            raise ConfigError(
                f"{len(self.player_names)} player names given for {self.n_players} players; pass one name each"
            )


def default_player_names(n_players: int) -> tuple[str, ...]:
    """``player0``, ``player1``, ... for games that name no players."""
    return tuple(f"player{i}" for i in range(n_players))


class Estimator(abc.ABC):
    """Round-based ask/tell estimator; subclasses plan rounds and turn cached values into a result.

    Subclasses implement ``_plan_round`` (the coalitions of the next round, or ``None`` when finished)
    and ``_estimate`` (values, stderr, counts from the observations). The base class hands out the planned
    coalitions, keeps the observations, enforces the budget, makes ``tell`` idempotent and computes
    ``result`` once per state (stopping rules and progress bars read it as often as they like).
    """

    name: str = "estimator"
    mergeable: ClassVar[bool] = False
    """Whether each value is the mean of ``counts`` independent samples, so results pool (``ShapleyResult.merge``)."""

    def __init__(self, settings: EstimatorSettings) -> None:
        self.settings = settings
        self.n_players = settings.n_players
        self.budget = settings.budget
        self.rng = np.random.default_rng(settings.seed)
        self.rounds_started = 0
        self._observed = CoalitionTable()
        self._pending: list[np.ndarray] = []  # planned, not yet asked
        self._outstanding: dict[int, Coalitions] = {}
        self._answered: set[int] = set()
        self._next_id = 0
        self._finished = False
        self._n_tasks: int | None = None
        self._task_names: tuple[str, ...] = ()
        self._focus: tuple[int, ...] | None = None
        self._result: tuple[int, ShapleyResult] | None = None

    # --- provenance -------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The estimator's parameters, recorded in every result for provenance."""
        return {"budget": self.budget}

    # --- protocol ---------------------------------------------------------------------------------
    @property
    def evaluations_used(self) -> int:
        """Distinct coalitions evaluated so far."""
        return len(self._observed)

    @property
    def done(self) -> bool:
        """True once ``ask`` has found nothing left to plan and every request has been answered."""
        return self._finished and self.at_round_boundary

    @property
    def at_round_boundary(self) -> bool:
        """True when every coalition planned so far has been answered (decisions happen only here)."""
        return not self._pending and not self._outstanding

    def set_task_names(self, task_names: tuple[str, ...]) -> None:
        """Name the value columns (tasks); by default they are ``task0``, ``task1``, ..."""
        self._task_names = tuple(task_names)
        self._result = None

    def ask(self, max_coalitions: int) -> list[CoalitionRequest]:
        """Up to ``max_coalitions`` coalitions to evaluate, as one request; empty while waiting or done."""
        if max_coalitions < 1:
            raise ConfigError(f"max_coalitions must be at least 1, got {max_coalitions}")
        if not self._pending and not self._outstanding:
            self._advance()
        if not self._pending:
            return []
        batch, self._pending = self._pending[:max_coalitions], self._pending[max_coalitions:]
        request = CoalitionRequest(self._next_id, np.array(batch, dtype=bool).reshape(len(batch), -1))
        self._outstanding[request.request_id] = request.coalitions
        self._next_id += 1
        return [request]

    def tell(self, request_id: int, values: Values) -> None:
        """Give the values (float[k, t] or float[k]) of request ``request_id``; a repeated tell is ignored."""
        if request_id in self._answered:
            return
        if request_id not in self._outstanding:
            raise ConfigError(f"unknown request id {request_id}; answer only requests returned by ask()")
        coalitions = self._outstanding[request_id]
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[0] != len(coalitions):
            raise EvaluationError(
                f"request {request_id} has {len(coalitions)} coalitions but values of shape {array.shape} "
                "came back; return float[k, t] with one row per coalition"
            )
        if not np.all(np.isfinite(array)):
            raise EvaluationError(f"request {request_id}: values contain NaN or infinity; fix the value function")
        if self._n_tasks is None:
            self._n_tasks = array.shape[1]
        elif array.shape[1] != self._n_tasks:
            raise EvaluationError(
                f"request {request_id} returned {array.shape[1]} task columns, earlier requests {self._n_tasks}"
            )
        self._observed.put(coalitions, array)
        del self._outstanding[request_id]
        self._answered.add(request_id)

    def result(self) -> ShapleyResult:
        """The current estimate from every completed evaluation (valid at any time after the first round).

        Computed once per state: asking again before the next tell returns the same result.
        """
        if self._n_tasks is None:
            raise EvaluationError("no values told yet; ask(), evaluate and tell() at least one round first")
        if self._result is None or self._result[0] != len(self._answered):
            self._result = (len(self._answered), self._compute_result())
        return self._result[1]

    def _compute_result(self) -> ShapleyResult:
        values, stderr, counts = self._estimate()
        n_tasks = self._n_tasks or 1
        task_names = self._task_names or tuple(f"task{j}" for j in range(n_tasks))
        return ShapleyResult(
            values=np.asarray(values, dtype=np.float64).reshape(n_tasks, self.n_players),
            stderr=np.asarray(stderr, dtype=np.float64).reshape(n_tasks, self.n_players),
            counts=np.asarray(counts, dtype=np.int64).reshape(self.n_players),
            evaluations_used=self.evaluations_used,
            v_full=self.value(np.ones(self.n_players, dtype=bool)),
            v_empty=self.value(np.zeros(self.n_players, dtype=bool)),
            player_names=self.settings.player_names,
            task_names=task_names,
            estimator=self.name,
            params=self.params(),
            seed=self.settings.seed,
        )

    # --- focus (used by the pruning-set bandit) ---------------------------------------------------
    @property
    def supports_focus(self) -> bool:
        """Whether ``focus`` directs later rounds to chosen players."""
        return False

    def focus(self, players: tuple[int, ...] | None) -> None:
        """Spend the following rounds on ``players`` only (``None``: all); applied at the next round."""
        if not self.supports_focus:
            raise ConfigError(f"estimator {self.name!r} cannot focus on players; use 'player_stratified'")
        self._focus = None if players is None else tuple(sorted(set(players)))

    # --- for subclasses ---------------------------------------------------------------------------
    def value(self, coalition: np.ndarray) -> np.ndarray:
        """The observed value row (float[t]) of one evaluated coalition."""
        row = self._observed.get(coalition)
        if row is None:
            raise EvaluationError("a coalition needed by the estimate was never evaluated")
        return row

    def is_observed(self, coalition: np.ndarray) -> bool:
        """Whether the coalition has been evaluated (told) already."""
        return coalition in self._observed

    @property
    def remaining_budget(self) -> int:
        """Distinct evaluations still allowed."""
        return self.budget - len(self._observed)

    @abc.abstractmethod
    def _plan_round(self) -> Coalitions | None:
        """Coalitions of the next round (distinct new ones within ``remaining_budget``), or None when done."""

    @abc.abstractmethod
    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Values float[t, n], stderr float[t, n], counts int[n] from the cache."""

    def _advance(self) -> None:
        """Close the finished round and plan the next one (skipping coalitions already cached).

        Rounds whose coalitions are all cached are free; after ``n + 2`` such rounds in a row the
        estimator has nothing new to learn within its design and finishes.
        """
        rounds_without_news = 0
        while not self._pending and not self._finished:
            if rounds_without_news > self.n_players + 2:
                self._finished = True
                return
            planned = self._plan_round() if self.remaining_budget > 0 or self.rounds_started == 0 else None
            if planned is None:
                self._finished = True
                return
            self.rounds_started += 1
            seen: set[bytes] = set()
            fresh: list[np.ndarray] = []
            for coalition in np.asarray(planned, dtype=bool):
                key = coalition_key(coalition)
                if coalition in self._observed or key in seen:
                    continue
                seen.add(key)
                fresh.append(coalition)
            if len(fresh) > self.remaining_budget:
                raise ConfigError(
                    f"{self.name} planned {len(fresh)} new coalitions with {self.remaining_budget} budget left"
                )
            self._pending = fresh
            rounds_without_news = 0 if fresh else rounds_without_news + 1
