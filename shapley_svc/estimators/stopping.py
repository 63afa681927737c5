"""Composable stopping criteria: combine with ``&`` (both), ``|`` (either) and ``~`` (not).

Criteria are checked by the driver at round boundaries only, so (apart from ``MaxTime``) a run stops at
the same point whatever the batch size or tell order. ``PruningSetDecided`` is also a bandit: while the
k lowest players are not separated from the rest with confidence, it focuses a focusable estimator
(``player_stratified``) on the players whose intervals straddle the boundary (in the spirit of the
adaptive sampling of Neuron Shapley, Ghorbani & Zou 2020).
"""

from __future__ import annotations

import abc
import time

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import Estimator


class StoppingCriterion(abc.ABC):
    """A rule deciding, from an estimator's state, whether to stop."""

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

    def reset(self) -> None:
        """Reset the wrapped criterion."""
        self.inner.reset()


class MaxEvaluations(StoppingCriterion):
    """Stop once ``limit`` distinct coalitions have been evaluated."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"MaxEvaluations needs a positive limit, got {limit}")
        self.limit = limit

    def should_stop(self, estimator: Estimator) -> bool:
        """Evaluations used reached the limit."""
        return estimator.evaluations_used >= self.limit


class MaxTime(StoppingCriterion):
    """Stop once ``seconds`` of wall time have passed since the first check (not deterministic)."""

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
        return now - self._start >= self.seconds

    def reset(self) -> None:
        """Restart the clock."""
        self._start = None


class StderrBelow(StoppingCriterion):
    """Stop when every player's standard error (every task) is below ``threshold``."""

    def __init__(self, threshold: float) -> None:
        if threshold <= 0:
            raise ConfigError(f"StderrBelow needs a positive threshold, got {threshold}")
        self.threshold = threshold

    def should_stop(self, estimator: Estimator) -> bool:
        """Largest stderr below the threshold."""
        return bool(np.max(estimator.result().stderr) < self.threshold)


class RankStable(StoppingCriterion):
    """Stop when the ranking (task 0) is unchanged over the last ``checkpoints`` round boundaries."""

    def __init__(self, checkpoints: int = 3) -> None:
        if checkpoints < 2:
            raise ConfigError(f"RankStable needs at least 2 checkpoints, got {checkpoints}")
        self.checkpoints = checkpoints
        self._history: list[tuple[int, ...]] = []

    def should_stop(self, estimator: Estimator) -> bool:
        """Same order at the last ``checkpoints`` checks."""
        order = tuple(np.argsort(estimator.result().values[0], kind="stable").tolist())
        self._history = [*self._history[-(self.checkpoints - 1) :], order]
        return len(self._history) == self.checkpoints and len(set(self._history)) == 1

    def reset(self) -> None:
        """Forget the history."""
        self._history = []


class PruningSetDecided(StoppingCriterion):
    """Stop when the k lowest players (task 0) are separated from the rest at ``z`` standard errors.

    Each check focuses a focusable estimator on the undecided players near the boundary.
    """

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
        if not open_players:
            return True
        if estimator.supports_focus:
            estimator.focus(open_players)
        return False
