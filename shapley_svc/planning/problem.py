"""What a plan search sees: which players may go, how many, what is maximised, and a budgeted game of
removal sets.

A *removal set* R (a frozenset of player indices) is scored by the objective on the coalition ``N \\ R``
(every player present but those in R). Every searcher reads values only through :class:`RemovalGame`, which
asks the one :class:`~shapley_svc.runner.evaluator.Evaluator` for them (so cached values are reused and new
ones cached), counts every distinct removal set read against the budget, whether computed or served from
the cache, refuses a read past the budget, and keeps the search path.

A game may also hold a *selection* evaluator: the same tasks on fresh data (other windows or items than the
calibration data, and than the held-out data). A search that has read many sets on little calibration data
overfits it (the best of many noisy values is biased upwards); reading a few finalists on the selection data
(:meth:`RemovalGame.select`, counted against the same budget) and keeping the best there removes that bias.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shapley_svc.errors import BudgetExceededError, ConfigError
from shapley_svc.players import Player
from shapley_svc.runner.evaluator import Evaluator
from shapley_svc.types import Coalitions, Values

Removal = frozenset[int]
"""A removal set: indices of the players removed from the full coalition."""

TARGETS = ("block", "attn", "mlp", "any")
"""Which players may be removed: blocks, attention sublayers only, MLP sublayers only, or any player."""


FULL: frozenset[int] = frozenset()
"""The empty removal set: every player present (read once by an objective with limits)."""

LIMIT_PENALTY = 10.0
"""Objective units lost per unit a limit is exceeded by, so that searchers see infeasible sets as bad."""


@dataclass(frozen=True)
class Objective:
    """A weighted sum of a game's task columns (one task: a single weight of 1), optionally under limits: the
    most each named task may lose against the full model (``{"mmlu.p_correct": 0.01}``)."""

    weights: Mapping[str, float]
    limits: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None, task_names: Sequence[str]) -> Objective:
        """``None`` (the only task), ``task`` or ``task=weight,task=weight`` over ``task_names``."""
        if text is None:
            if len(task_names) != 1:
                raise ConfigError(f"the game has tasks {list(task_names)}: name the objective, e.g. {task_names[0]}")
            return cls({task_names[0]: 1.0})
        weights: dict[str, float] = {}
        for part in text.split(","):
            name, _, weight = part.partition("=")
            try:
                weights[name.strip()] = float(weight) if weight else 1.0
            except ValueError:
                raise ConfigError(f"objective weight {weight!r} of {name!r} is not a number") from None
        return cls(weights).checked(task_names)

    def checked(self, task_names: Sequence[str]) -> Objective:
        """This objective, or a ConfigError naming a task the game does not have."""
        unknown = [name for name in [*self.weights, *self.limits] if name not in task_names]
        if unknown or not self.weights:
            raise ConfigError(
                f"objective tasks {unknown or '(none)'} are not among the game's tasks {list(task_names)}"
            )
        return self

    def column_weights(self, task_names: Sequence[str]) -> np.ndarray:
        """float[t]: the weight of each task column (0 for tasks the objective leaves out)."""
        return np.array([float(self.weights.get(name, 0.0)) for name in task_names])

    def excess(self, values: np.ndarray, full: np.ndarray | None, task_names: Sequence[str]) -> float:
        """How far a set's task values (float[t]) exceed the limits against the full model's (0: within them)."""
        if not self.limits or full is None:
            return 0.0
        losses = {name: float(full[index] - values[index]) for index, name in enumerate(task_names)}
        return sum(max(0.0, losses[name] - limit) for name, limit in self.limits.items())

    def score(self, values: np.ndarray, full: np.ndarray | None, task_names: Sequence[str]) -> float:
        """The weighted sum, less ``LIMIT_PENALTY`` per unit a limit is exceeded by."""
        return float(values @ self.column_weights(task_names)) - LIMIT_PENALTY * self.excess(values, full, task_names)


@dataclass(frozen=True)
class Quota:
    """Remove exactly ``count`` of ``candidates`` (player indices, in layer order)."""

    candidates: tuple[int, ...]
    count: int


@dataclass(frozen=True)
class RemovalProblem:
    """Remove ``count`` players of each quota's candidates from an ``n_players`` game to maximise ``objective``.

    One quota is the usual "k of these"; several (e.g. a attention and m MLP sublayers) fix the mix.
    """

    player_names: tuple[str, ...]
    task_names: tuple[str, ...]
    quotas: tuple[Quota, ...]
    objective: Objective

    def __post_init__(self) -> None:
        most = len(self.candidates) - (1 if len(self.candidates) == len(self.player_names) else 0)
        if not 1 <= self.k <= most or any(not 0 <= quota.count <= len(quota.candidates) for quota in self.quotas):
            raise ConfigError(
                f"cannot remove {[quota.count for quota in self.quotas]} of {[len(q.candidates) for q in self.quotas]} "
                f"candidate players: remove from 1 to {most} in all (a model keeps at least one player)"
            )
        self.objective.checked(self.task_names)

    @classmethod
    def of(
        cls,
        player_names: Sequence[str],
        task_names: Sequence[str],
        k: int,
        *,
        target: str = "any",
        objective: Objective | None = None,
    ) -> RemovalProblem:
        """The problem over a game's players; ``target`` keeps only blocks, attention or MLP sublayers."""
        return cls.mixed(player_names, task_names, {target: k}, objective=objective)

    @classmethod
    def mixed(
        cls,
        player_names: Sequence[str],
        task_names: Sequence[str],
        counts: dict[str, int],
        *,
        objective: Objective | None = None,
    ) -> RemovalProblem:
        """Remove ``counts[target]`` players of each target (``{"attn": 3, "mlp": 1}``)."""
        quotas = []
        for target, count in counts.items():
            if target not in TARGETS:
                raise ConfigError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
            kinds = {"block": ("block",), "attn": ("attn",), "mlp": ("mlp",)}.get(target)
            members = tuple(index for index, name in enumerate(player_names) if kinds is None or _kind(name) in kinds)
            if not members:
                raise ConfigError(f"the game has no {target} players: its players are {list(player_names)[:4]}...")
            quotas.append(Quota(members, count))
        chosen = objective or Objective.parse(None, task_names)
        return cls(tuple(player_names), tuple(task_names), tuple(quotas), chosen)

    @property
    def n_players(self) -> int:
        return len(self.player_names)

    @property
    def k(self) -> int:
        """How many players go in all."""
        return sum(quota.count for quota in self.quotas)

    @property
    def candidates(self) -> tuple[int, ...]:
        """Every player some quota may remove, in layer order."""
        return tuple(sorted({player for quota in self.quotas for player in quota.candidates}))

    def allows(self, removal: Iterable[int]) -> bool:
        """Whether ``removal`` stays within every quota (it may still be short of them)."""
        chosen = set(removal)
        inside = set().union(*(quota.candidates for quota in self.quotas))
        return chosen <= inside and all(len(chosen & set(q.candidates)) <= q.count for q in self.quotas)

    def complete(self, removal: Iterable[int]) -> bool:
        """Whether ``removal`` fills every quota exactly."""
        chosen = set(removal)
        return self.allows(chosen) and all(len(chosen & set(q.candidates)) == q.count for q in self.quotas)

    def coalitions(self, removals: Sequence[Removal]) -> Coalitions:
        """bool[m, n]: the coalition each removal set leaves."""
        coalitions = np.ones((len(removals), self.n_players), dtype=bool)
        for row, removal in enumerate(removals):
            coalitions[row, list(removal)] = False
        return coalitions

    def names(self, removal: Iterable[int]) -> tuple[str, ...]:
        """The names of the removed players, in layer order."""
        return tuple(self.player_names[index] for index in sorted(removal))


def _kind(name: str) -> str:
    try:
        return Player.parse(name).kind
    except ConfigError:
        return "any"


@dataclass(frozen=True)
class Step:
    """One removal set the search read, with its objective value and whether it keeps the limits."""

    removed: Removal
    value: float
    feasible: bool = True


@dataclass
class RemovalGame:
    """The budgeted game a searcher plays: objective values of removal sets, read through the evaluator.

    The problem (its quotas, its objective) may change between searches of one game, as the drivers of
    :mod:`shapley_svc.planning.objectives` do: what was read stays read and counted once.
    """

    problem: RemovalProblem
    evaluator: Evaluator
    budget: int
    selection: Evaluator | None = None
    order: list[Removal] = field(default_factory=list)
    task_values: dict[Removal, np.ndarray] = field(default_factory=dict)
    selection_values: dict[Removal, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ConfigError(f"the budget must be at least 1 evaluation, got {self.budget}")
        if self.selection is not None and self.selection.game.task_names != self.task_names:
            raise ConfigError(
                f"the selection game's tasks {list(self.selection.game.task_names)} are not the calibration "
                f"game's {list(self.task_names)}"
            )
        self._computed_before = self._evaluated()

    def _evaluated(self) -> int:
        return self.evaluator.stats.evaluated + (self.selection.stats.evaluated if self.selection else 0)

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.evaluator.game.task_names

    @property
    def used(self) -> int:
        """Distinct removal sets read so far (computed or from the cache), on the calibration data and on the
        selection data."""
        return len(self.task_values) + len(self.selection_values)

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    @property
    def computed(self) -> int:
        """Coalitions the evaluators computed for this search (the rest came from the cache)."""
        return self._evaluated() - self._computed_before

    @property
    def path(self) -> list[Step]:
        """Every removal set read, in reading order, scored by the current objective."""
        return [self.step(removal) for removal in self.order]

    def step(self, removal: Removal) -> Step:
        """A read removal set with its value and feasibility under the current objective."""
        values, tasks = self.task_values[removal], self.task_names
        full = self.task_values.get(FULL)
        objective = self.problem.objective
        return Step(removal, objective.score(values, full, tasks), objective.excess(values, full, tasks) == 0)

    def known(self, removal: Removal) -> float | None:
        """The objective value of a removal set already read, else None (free: reads nothing)."""
        return self.step(removal).value if removal in self.task_values else None

    def values(self, removals: Sequence[Iterable[int]]) -> np.ndarray:
        """float[m]: the objective value of each removal set; new ones count against the budget, in one batch
        (with the full model first, once, when the objective has limits)."""
        sets = [frozenset(removal) for removal in removals]
        needed = [FULL] if self.problem.objective.limits else []
        self.order += self._read(self.evaluator, self.task_values, [*needed, *sets], "new removal sets")
        return np.array([self.known(removal) for removal in sets], dtype=np.float64)

    def select(self, removals: Sequence[Iterable[int]]) -> np.ndarray:
        """float[m]: the objective's weighted sum of each removal set's values on the selection data (limits are
        judged on the calibration data); new ones count against the budget, in one batch."""
        if self.selection is None:
            raise ConfigError("this plan search has no selection data")
        sets = [frozenset(removal) for removal in removals]
        self._read(self.selection, self.selection_values, sets, "removal sets on the selection data")
        return np.array([self.selected(removal) for removal in sets], dtype=np.float64)

    def _read(
        self, evaluator: Evaluator, known: dict[Removal, np.ndarray], sets: list[Removal], what: str
    ) -> list[Removal]:
        """Evaluate the sets of ``sets`` not in ``known`` in one batch, within the budget, into ``known``; the new
        sets, in order."""
        new = list(dict.fromkeys(removal for removal in sets if removal not in known))
        if len(new) > self.remaining:
            raise BudgetExceededError(
                f"reading {len(new)} {what} would use {self.used + len(new)} of a budget of {self.budget}"
            )
        if new:
            values: Values = evaluator.evaluate(self.problem.coalitions(new))
            for removal, row in zip(new, values, strict=True):
                known[removal] = np.asarray(row, dtype=np.float64)
        return new

    def selected(self, removal: Removal) -> float:
        """A removal set's objective weighted sum on the selection data (read by :meth:`select` first)."""
        return float(self.selection_values[removal] @ self.problem.objective.column_weights(self.task_names))

    def best(self, size: int | None = None) -> Step:
        """The best removal set read within the limits: of ``size`` players, or by default one that fills the
        problem's quotas, and then the best on the selection data of those read there, if any were."""
        if size is None:
            steps = [step for step in self.path if self.problem.complete(step.removed) and step.feasible]
            finalists = [step for step in steps if step.removed in self.selection_values]
            if finalists:
                return max(finalists, key=lambda step: self.selected(step.removed))
        else:
            steps = [step for step in self.path if len(step.removed) == size and step.feasible]
        wanted = self.problem.k if size is None else size
        if not steps:
            limits = (
                f" keeping the limits {dict(self.problem.objective.limits)}" if self.problem.objective.limits else ""
            )
            raise ConfigError(
                f"the search read no removal set of {wanted} players{limits} within its budget of {self.budget}"
            )
        return max(steps, key=lambda step: step.value)  # ties: the first read, so the same path gives the same plan
