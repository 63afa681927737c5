"""Composable stopping criteria: combine with ``&`` (both), ``|`` (either) and ``~`` (not).

Criteria are checked by the driver at round boundaries only, so (apart from ``MaxTime``) a run stops at
the same point whatever the batch size or tell order. ``PruningSetDecided`` is also a bandit: while the
k lowest players are not separated from the rest with confidence, it focuses a focusable estimator
(``player_stratified``) on the players whose intervals straddle the boundary (in the spirit of the
adaptive sampling of Neuron Shapley, Ghorbani & Zou 2020).

Each criterion keeps the latest value of what it watches (``measures()``, e.g. the largest stderr), so a
progress bar can show it without recomputing anything. Job specs name criteria through :func:`make_stopping`
(``stderr_below``, ``rank_stable``, ...); a list of them is combined with ``|`` by :func:`any_of`.
"""

from __future__ import annotations

import abc
import difflib
import functools
import inspect
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import Estimator


class StoppingCriterion(abc.ABC):
    """A rule deciding, from an estimator's state, whether to stop."""

    measure_name: str = ""
    last_measure: float | None = None

    def measures(self) -> dict[str, float]:
        """The latest value of what this criterion watches, by name (empty before its first check)."""
        return {} if self.last_measure is None or not self.measure_name else {self.measure_name: self.last_measure}

    @abc.abstractmethod
    def should_stop(self, estimator: Estimator) -> bool:
        """True to stop now."""

    def reset(self) -> None:  # noqa: B027 - stateless criteria keep this no-op; stateful ones override it
        """Forget state from an earlier run (history, start time)."""

    def __and__(self, other: StoppingCriterion) -> StoppingCriterion:
        return AllOf(self, other)

    def __or__(self, other: StoppingCriterion) -> StoppingCriterion:
        return AnyOf(self, other)

    def __invert__(self) -> StoppingCriterion:
        return Not(self)


class AllOf(StoppingCriterion):
    """Stop when both criteria say stop (both are always evaluated, so their state stays current)."""

    def __init__(self, left: StoppingCriterion, right: StoppingCriterion) -> None:
        self.left, self.right = left, right

    def should_stop(self, estimator: Estimator) -> bool:
        """Both."""
        left, right = self.left.should_stop(estimator), self.right.should_stop(estimator)
        return left and right

    def measures(self) -> dict[str, float]:
        """Both criteria's measures."""
        return {**self.left.measures(), **self.right.measures()}

    def reset(self) -> None:
        """Reset both."""
        self.left.reset()
        self.right.reset()


class AnyOf(AllOf):
    """Stop when either criterion says stop."""

    def should_stop(self, estimator: Estimator) -> bool:
        """Either."""
        left, right = self.left.should_stop(estimator), self.right.should_stop(estimator)
        return left or right


class Not(StoppingCriterion):
    """Stop when the wrapped criterion says go on."""

    def __init__(self, inner: StoppingCriterion) -> None:
        self.inner = inner

    def should_stop(self, estimator: Estimator) -> bool:
        """Negation."""
        return not self.inner.should_stop(estimator)

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
        if limit < 1:
            raise ConfigError(f"MaxEvaluations needs a positive limit, got {limit}")
        self.limit = limit

    def should_stop(self, estimator: Estimator) -> bool:
        """Evaluations used reached the limit."""
        self.last_measure = float(estimator.evaluations_used)
        return estimator.evaluations_used >= self.limit


class MaxTime(StoppingCriterion):
    """Stop once ``seconds`` of wall time have passed since the first check (not deterministic)."""

    measure_name = "seconds"

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ConfigError(f"MaxTime needs a positive number of seconds, got {seconds}")
        self.seconds = seconds
        self._start: float | None = None

    def should_stop(self, estimator: Estimator) -> bool:
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
        if threshold <= 0:
            raise ConfigError(f"StderrBelow needs a positive threshold, got {threshold}")
        self.threshold = threshold

    def should_stop(self, estimator: Estimator) -> bool:
        """Largest stderr below the threshold."""
        self.last_measure = float(np.max(estimator.result().stderr))
        return self.last_measure < self.threshold


class RankStable(StoppingCriterion):
    """Stop when the ranking (task 0) is unchanged over the last ``checkpoints`` round boundaries."""

    measure_name = "rank_unchanged"

    def __init__(self, checkpoints: int = 3) -> None:
        if checkpoints < 2:
            raise ConfigError(f"RankStable needs at least 2 checkpoints, got {checkpoints}")
        self.checkpoints = checkpoints
        self._history: list[tuple[int, ...]] = []

    def should_stop(self, estimator: Estimator) -> bool:
        """Same order at the last ``checkpoints`` checks."""
        order = tuple(np.argsort(estimator.result().values[0], kind="stable").tolist())
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

    Each check focuses a focusable estimator on the undecided players near the boundary.
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

    def should_stop(self, estimator: Estimator) -> bool:
        """No player straddles the boundary; otherwise focus the estimator on those that do."""
        if self.k >= estimator.n_players:
            raise ConfigError(f"PruningSetDecided k={self.k} must be below the {estimator.n_players} players")
        result = estimator.result()
        open_players = self.undecided(result.values[0], result.stderr[0])
        self.last_measure = float(len(open_players))
        if not open_players:
            return True
        if estimator.supports_focus:
            estimator.focus(open_players)
        return False


STOPPING_RULES: dict[str, type[StoppingCriterion]] = {
    "max_evaluations": MaxEvaluations,
    "max_time": MaxTime,
    "stderr_below": StderrBelow,
    "rank_stable": RankStable,
    "pruning_set_decided": PruningSetDecided,
}


def make_stopping(name: str, params: Mapping[str, Any] | None = None) -> StoppingCriterion:
    """The criterion registered as ``name`` built from ``params`` (e.g. ``stderr_below`` + ``threshold``).

    Example:
        >>> make_stopping("stderr_below", {"threshold": 0.01}).threshold
        0.01
    """
    if name not in STOPPING_RULES:
        close = difflib.get_close_matches(name, list(STOPPING_RULES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown stopping rule {name!r}: {hint}known: {', '.join(STOPPING_RULES)}")
    cls = STOPPING_RULES[name]
    accepted = list(inspect.signature(cls.__init__).parameters)[1:]  # drop self
    given = dict(params or {})
    unknown = [key for key in given if key not in accepted]
    if unknown:
        raise ConfigError(f"stopping rule {name!r} does not take {unknown}; it takes {accepted}")
    try:
        return cls(**given)
    except TypeError as error:  # a required parameter is missing or has the wrong type
        raise ConfigError(f"stopping rule {name!r} needs {accepted}, got {given}: {error}") from error


def any_of(criteria: Sequence[StoppingCriterion]) -> StoppingCriterion | None:
    """One criterion that stops when any of ``criteria`` does (``None`` for an empty list)."""
    if not criteria:
        return None
    return functools.reduce(lambda left, right: left | right, criteria)
