"""Composable stopping criteria: combine with ``&`` (both), ``|`` (either) and ``~`` (not).

A criterion reads a :class:`~shapley_svc.estimators.result.ShapleyResult` and nothing else. Runs check it at
round boundaries only (:func:`round_hooks`), so (apart from ``MaxTime``) a run stops at the same point
whatever the batch size or tell order. Steering is a separate step: a criterion may name players to spend
the next rounds on (:meth:`StoppingCriterion.focus`), and the run, not the criterion, focuses a focusable
estimator (``player_stratified``) on them. ``PruningSetDecided`` does so with the players whose intervals
straddle the boundary of the k lowest (in the spirit of the adaptive sampling of Neuron Shapley, Ghorbani &
Zou 2020).

Each criterion keeps the latest value of what it watches (``measures()``, e.g. the largest stderr), so a
progress bar can show it without recomputing anything. Job specs name criteria through :func:`make_stopping`
(``stderr_below``, ``rank_stable``, ...) and compose them with ``all_of`` / ``any_of``
(:func:`make_stopping_rule`); a plain list is any-of.
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from shapley_svc.errors import ConfigError, at_least
from shapley_svc.estimators.base import Estimator
from shapley_svc.estimators.result import ShapleyResult
from shapley_svc.registry import Entry, Registry


class StoppingCriterion(abc.ABC):
    """A rule deciding, from an estimator's state, whether to stop."""

    measure_name: str = ""
    last_measure: float | None = None

    def measures(self) -> dict[str, float]:
        """The latest value of what this criterion watches, by name (empty before its first check)."""
        return {} if self.last_measure is None or not self.measure_name else {self.measure_name: self.last_measure}

    @abc.abstractmethod
    def should_stop(self, result: ShapleyResult) -> bool:
        """True to stop now, judged from the current ``result``."""

    def focus(self, result: ShapleyResult) -> tuple[int, ...] | None:
        """Players the next rounds should be spent on, or None for no preference."""
        return None

    def reset(self) -> None:  # noqa: B027 - stateless criteria keep this no-op; stateful ones override it
        """Forget state from an earlier run (history, start time)."""

    def __and__(self, other: StoppingCriterion) -> StoppingCriterion:
        return AllOf(self, other)

    def __or__(self, other: StoppingCriterion) -> StoppingCriterion:
        return AnyOf(self, other)

    def __invert__(self) -> StoppingCriterion:
        return Not(self)


NumberT = TypeVar("NumberT", int, float)


def _positive(value: NumberT, rule: str, what: str) -> NumberT:
    """``value``, or a ConfigError if it is not above zero."""
    if value <= 0:
        raise ConfigError(f"{rule} needs a positive {what}, got {value}")
    return value


class AllOf(StoppingCriterion):
    """Stop when both criteria say stop (both are always evaluated, so their state stays current)."""

    def __init__(self, left: StoppingCriterion, right: StoppingCriterion) -> None:
        self.left, self.right = left, right

    def should_stop(self, result: ShapleyResult) -> bool:
        """Both."""
        left, right = self.left.should_stop(result), self.right.should_stop(result)
        return left and right

    def focus(self, result: ShapleyResult) -> tuple[int, ...] | None:
        """The players either criterion wants the rounds spent on."""
        wanted = [players for players in (self.left.focus(result), self.right.focus(result)) if players is not None]
        return tuple(sorted(set().union(*wanted))) if wanted else None

    def measures(self) -> dict[str, float]:
        """Both criteria's measures."""
        return {**self.left.measures(), **self.right.measures()}

    def reset(self) -> None:
        """Reset both."""
        self.left.reset()
        self.right.reset()


class AnyOf(AllOf):
    """Stop when either criterion says stop."""

    def should_stop(self, result: ShapleyResult) -> bool:
        """Either."""
        left, right = self.left.should_stop(result), self.right.should_stop(result)
        return left or right


class Not(StoppingCriterion):
    """Stop when the wrapped criterion says go on."""

    def __init__(self, inner: StoppingCriterion) -> None:
        self.inner = inner

    def should_stop(self, result: ShapleyResult) -> bool:
        """Negation."""
        return not self.inner.should_stop(result)

    def measures(self) -> dict[str, float]:
        """The wrapped criterion's measures."""
        return self.inner.measures()

    def reset(self) -> None:
        """Reset the wrapped criterion."""
        self.inner.reset()


class MaxEvaluations(StoppingCriterion):
    """Stop once ``limit`` distinct coalitions have been evaluated."""

    measure_name = "evaluations"

    def __init__(self, limit: int) -> None:
        self.limit = _positive(limit, "MaxEvaluations", "limit")

    def should_stop(self, result: ShapleyResult) -> bool:
        """Evaluations used reached the limit."""
        self.last_measure = float(result.evaluations_used)
        return result.evaluations_used >= self.limit


class MaxTime(StoppingCriterion):
    """Stop once ``seconds`` of wall time have passed since the first check (not deterministic)."""

    measure_name = "seconds"

    def __init__(self, seconds: float) -> None:
        self.seconds = _positive(seconds, "MaxTime", "number of seconds")
        self._start: float | None = None

    def should_stop(self, result: ShapleyResult) -> bool:
        """Time is up."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self.last_measure = now - self._start
        return now - self._start >= self.seconds

    def reset(self) -> None:
        """Restart the clock."""
        self._start = None
        self.last_measure = None


class StderrBelow(StoppingCriterion):
    """Stop when every player's standard error (every task) is below ``threshold``."""

    measure_name = "max_stderr"

    def __init__(self, threshold: float) -> None:
        self.threshold = _positive(threshold, "StderrBelow", "threshold")

    def should_stop(self, result: ShapleyResult) -> bool:
        """Largest stderr below the threshold."""
        self.last_measure = float(np.max(result.stderr))
        return self.last_measure < self.threshold


class RankStable(StoppingCriterion):
    """Stop when the ranking (task 0) is unchanged over the last ``checkpoints`` round boundaries."""

    measure_name = "rank_unchanged"

    def __init__(self, checkpoints: int = 3) -> None:
        self.checkpoints = at_least(checkpoints, 2, "RankStable's checkpoints")
        self._history: list[tuple[int, ...]] = []

    def should_stop(self, result: ShapleyResult) -> bool:
        """Same order at the last ``checkpoints`` checks."""
        order = tuple(np.argsort(result.values[0], kind="stable").tolist())
        self._history = [*self._history[-(self.checkpoints - 1) :], order]
        unchanged = 0
        for seen in reversed(self._history):
            if seen != order:
                break
            unchanged += 1
        self.last_measure = float(unchanged)
        return len(self._history) == self.checkpoints and len(set(self._history)) == 1

    def reset(self) -> None:
        """Forget the history."""
        self._history = []
        self.last_measure = None


class PruningSetDecided(StoppingCriterion):
    """Stop when the k lowest players (task 0) are separated from the rest at ``z`` standard errors.

    Until then it asks for the rounds to be spent on the undecided players near the boundary (:meth:`focus`).
    """

    measure_name = "undecided"

    def __init__(self, k: int, z: float = 1.96) -> None:
        if k < 1:
            raise ConfigError(f"PruningSetDecided needs k >= 1, got {k}")
        self.k = k
        self.z = z

    def undecided(self, values: np.ndarray, stderr: np.ndarray) -> tuple[int, ...]:
        """Players whose confidence interval overlaps the gap between the k-th and (k+1)-th value."""
        order = np.argsort(values, kind="stable")
        lower, upper = order[: self.k], order[self.k :]
        upper_low = np.min(values[upper] - self.z * stderr[upper])
        lower_high = np.max(values[lower] + self.z * stderr[lower])
        straddling = [i for i in lower if values[i] + self.z * stderr[i] >= upper_low]
        straddling += [i for i in upper if values[i] - self.z * stderr[i] <= lower_high]
        return tuple(sorted(int(i) for i in straddling))

    def should_stop(self, result: ShapleyResult) -> bool:
        """No player straddles the boundary."""
        open_players = self._open(result)
        self.last_measure = float(len(open_players))
        return not open_players

    def focus(self, result: ShapleyResult) -> tuple[int, ...] | None:
        """The undecided players, while there are any."""
        return self._open(result) or None

    def _open(self, result: ShapleyResult) -> tuple[int, ...]:
        if self.k >= result.n_players:
            raise ConfigError(f"PruningSetDecided k={self.k} must be below the {result.n_players} players")
        return self.undecided(result.values[0], result.stderr[0])


def _rule(class_name: str, description: str) -> Entry:
    return Entry(f"shapley_svc.estimators.stopping:{class_name}", description)


STOPPING_RULES: Registry[StoppingCriterion] = Registry(
    "stopping rule",
    StoppingCriterion,
    {
        "max_evaluations": _rule("MaxEvaluations", "distinct coalitions evaluated reach limit"),
        "max_time": _rule("MaxTime", "seconds of wall time since the first check (not deterministic)"),
        "stderr_below": _rule("StderrBelow", "every standard error below threshold"),
        "rank_stable": _rule("RankStable", "the ranking unchanged over the last checkpoints"),
        "pruning_set_decided": _rule("PruningSetDecided", "the k lowest players separated at z standard errors"),
    },
)
"""Every stopping rule a job spec may name."""


def make_stopping(name: str, params: Mapping[str, Any] | None = None) -> StoppingCriterion:
    """The criterion registered as ``name`` built from ``params`` (e.g. ``stderr_below`` + ``threshold``).

    Example:
        >>> make_stopping("stderr_below", {"threshold": 0.01}).threshold
        0.01
    """
    return STOPPING_RULES.build(name, params=params)


def any_of(criteria: Sequence[StoppingCriterion]) -> StoppingCriterion | None:
    """One criterion that stops when any of ``criteria`` does (``None`` for an empty list)."""
    if not criteria:
        return None
    return functools.reduce(lambda left, right: left | right, criteria)


def make_stopping_rule(specs: Sequence[Any]) -> StoppingCriterion | None:
    """One criterion from a job spec's ``budget.stopping`` list: any of its entries, each a named rule or an
    ``all_of`` / ``any_of`` of entries (``None`` for an empty list)."""
    return any_of([_from_spec(spec) for spec in specs])


def _from_spec(spec: Any) -> StoppingCriterion:
    if spec.all_of is not None:
        return functools.reduce(lambda left, right: left & right, [_from_spec(inner) for inner in spec.all_of])
    if spec.any_of is not None:
        return functools.reduce(lambda left, right: left | right, [_from_spec(inner) for inner in spec.any_of])
    return make_stopping(spec.name, spec.params)


@dataclass(frozen=True)
class RoundHooks:
    """A criterion as a run uses it: a stopping rule, its measures and a steering step, on the estimator."""

    stopping: Callable[[Estimator], bool]
    measure: Callable[[Estimator], dict[str, float]]
    steer: Callable[[Estimator], None]


def round_hooks(criterion: StoppingCriterion) -> RoundHooks:
    """Check ``criterion`` at round boundaries only, on the estimator's result (computed once per boundary);
    where the estimator can focus, spend its next rounds on the players the criterion names."""

    def stopping(estimator: Estimator) -> bool:
        return (
            estimator.rounds_started > 0 and estimator.at_round_boundary and criterion.should_stop(estimator.result())
        )

    def steer(estimator: Estimator) -> None:
        if estimator.supports_focus and estimator.at_round_boundary and estimator.rounds_started > 0:
            players = criterion.focus(estimator.result())
            if players is not None:
                estimator.focus(players)

    return RoundHooks(stopping=stopping, measure=lambda _: criterion.measures(), steer=steer)
