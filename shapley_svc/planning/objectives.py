"""The objectives users state, as drivers of the plan searchers over one budgeted game.

- a constraint, "maximise task A while task B loses at most d": an :class:`~.problem.Objective` with
  ``limits``, searched like any other (:func:`shapley_svc.planning.search_plan`);
- "as many as possible while the loss stays within d": :func:`plan_most`, k = 1, 2, ... until no set of k
  keeps the limits;
- a Pareto front over two tasks: :func:`pareto_front`, the searcher run on weighted sums of the two tasks
  (scaled by their spread over single removals), the front the read sets no other read set beats on both;
- mixed sublayers under a cost budget: :func:`plan_for_savings`, every least mix of attention and MLP
  sublayers whose savings (parameters, decoder FLOPs or KV-cache bytes per player) reach a target, each mix
  searched as quotas, the best plan of them all.

Every driver reads through one :class:`~.problem.RemovalGame`, so a removal set is read (and counted) once
whatever the number of searches, and every value goes through the evaluator's cache.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from shapley_svc.errors import ConfigError
from shapley_svc.planning.plan import RemovalPlan
from shapley_svc.planning.problem import Objective, RemovalGame, RemovalProblem
from shapley_svc.runner.evaluator import Evaluator

Search = Callable[[RemovalGame], None]
"""Runs one searcher on a game (its name, options and seed bound), reading within ``game.budget``."""


def plan_most(
    problems: Callable[[int], RemovalProblem], evaluator: Evaluator, search: Search, *, budget: int, method: str
) -> RemovalPlan:
    """The plan of the largest k whose best set keeps the limits of ``problems(k)``'s objective.

    Each k may read about one greedy step more (its candidates not yet removed), k = 1 also every single
    removal. At the first k with no set within the limits, half the reads left take a second look at k; if
    that finds none either, the rest refine the plan of k - 1. The search ends there or when the budget is spent.
    """
    first = problems(1)
    if not first.objective.limits:
        raise ConfigError("'as many as possible' needs a limit: the most a task may lose (e.g. --max-loss task=0.05)")
    game, best = RemovalGame(first, evaluator, budget), None
    keeps_one = len(first.candidates) == len(first.player_names)  # a model keeps at least one player
    for k in range(1, len(first.candidates) + (0 if keeps_one else 1)):
        game.problem = problems(k)
        step_reads = len(first.candidates) - k + 1 + (len(first.candidates) + 1 if k == 1 else 0)
        game.budget = min(budget, game.used + step_reads)
        if game.remaining <= 0:
            break
        search(game)
        if not _feasible(game):
            game.budget = game.used + (budget - game.used) // 2
            _search_left(game, search)
        if not _feasible(game):
            if best is not None:
                game.problem, game.budget = problems(k - 1), budget
                _search_left(game, search)
                best = RemovalPlan.from_search(game, method=method, seed=0, params={"objective": "most"})
            break
        best = RemovalPlan.from_search(game, method=method, seed=0, params={"objective": "most"})
    if best is None:
        raise ConfigError(f"no single player can go within the limits {dict(first.objective.limits)}")
    # every read counts, also those of the first k no set kept the limits at
    return best.model_copy(update={"evaluations_used": game.used, "evaluations_computed": game.computed})


def _feasible(game: RemovalGame) -> bool:
    """Whether the game read a set filling its problem's quotas within the limits."""
    try:
        game.best()
    except ConfigError:
        return False
    return True


def _search_left(game: RemovalGame, search: Search) -> None:
    """``search`` once more on ``game`` if it has reads left."""
    if game.remaining > 0:
        search(game)


class FrontPoint(BaseModel):
    """One removal set on the front: its players and each of the two tasks' values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    removed: tuple[str, ...]
    values: dict[str, float]


class ParetoFront(BaseModel):
    """The removal sets of k no other read set beats on both tasks, best first on the first task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[str, str]
    k: int
    points: tuple[FrontPoint, ...]
    evaluations_used: int
    evaluations_computed: int


def pareto_front(
    problem: RemovalProblem,
    evaluator: Evaluator,
    search: Search,
    *,
    tasks: tuple[str, str],
    budget: int,
    weights: int = 5,
) -> ParetoFront:
    """The front of ``problem``'s k-sets over ``tasks``: ``search`` on ``weights`` weighted sums, one budget."""
    if weights < 2:
        raise ConfigError(f"a front needs at least 2 weightings of the tasks, got {weights}")
    Objective({task: 1.0 for task in tasks}).checked(problem.task_names)
    game = RemovalGame(problem, evaluator, budget)
    scales = np.ones(2)
    for index, share in enumerate(np.linspace(0.0, 1.0, weights)):
        weighting = {tasks[0]: (1 - share) / scales[0], tasks[1]: share / scales[1]}
        game.problem = dataclasses.replace(problem, objective=Objective(weighting))
        game.budget = min(budget, game.used + max(1, (budget - game.used) // (weights - index)))
        search(game)
        scales = _spreads(game, tasks)
    return _front(game, tasks)


def _spreads(game: RemovalGame, tasks: tuple[str, str]) -> np.ndarray:
    """Each task's spread over the single removals read (1 where there are none or they agree)."""
    columns = [game.evaluator.game.task_names.index(task) for task in tasks]
    singles = np.array([values[columns] for removal, values in game.task_values.items() if len(removal) == 1])
    spreads = singles.std(axis=0) if len(singles) > 1 else np.ones(2)
    return np.where(spreads > 0, spreads, 1.0)


def _front(game: RemovalGame, tasks: tuple[str, str]) -> ParetoFront:
    columns = [game.evaluator.game.task_names.index(task) for task in tasks]
    sets = [removal for removal in game.order if game.problem.complete(removal)]
    points = np.array([game.task_values[removal][columns] for removal in sets])
    front = [
        index
        for index, point in enumerate(points)
        if not np.any(np.all(points >= point, axis=1) & np.any(points > point, axis=1))
    ]
    front = sorted(dict.fromkeys(front), key=lambda index: -points[index, 0])
    return ParetoFront(
        tasks=tasks,
        k=game.problem.k,
        points=tuple(
            FrontPoint(
                removed=game.problem.names(sets[index]), values=dict(zip(tasks, points[index].tolist(), strict=True))
            )
            for index in front
        ),
        evaluations_used=game.used,
        evaluations_computed=game.computed,
    )


def least_mixes(savings: Mapping[str, float], available: Mapping[str, int], target: float) -> list[dict[str, int]]:
    """Every count of attention and MLP sublayers whose savings reach ``target`` with no player to spare.

    ``savings`` is what one player of each kind saves (parameters, FLOPs or KV bytes), ``available`` how many
    there are. Example: ``least_mixes({"attn": 2, "mlp": 3}, {"attn": 4, "mlp": 4}, 6)`` is
    ``[{"attn": 0, "mlp": 2}, {"attn": 2, "mlp": 1}, {"attn": 3, "mlp": 0}]``.
    """
    if set(savings) != {"attn", "mlp"} or set(available) != {"attn", "mlp"}:
        raise ConfigError(f"give the savings of 'attn' and 'mlp' players, got {sorted(savings)}")
    if target <= 0 or min(savings.values()) < 0:
        raise ConfigError(f"the target ({target}) must be positive and each saving ({dict(savings)}) at least 0")
    mixes = []
    for attention in range(available["attn"] + 1):
        short = target - attention * savings["attn"]
        mlp = 0 if short <= 0 else math.ceil(short / savings["mlp"]) if savings["mlp"] > 0 else available["mlp"] + 1
        if mlp <= available["mlp"] and (
            attention == 0 or short + savings["attn"] > 0
        ):  # one attention fewer falls short
            mixes.append({"attn": attention, "mlp": mlp})
    if not mixes:
        total = sum(savings[kind] * available[kind] for kind in savings)
        raise ConfigError(f"removing every sublayer saves {total}, short of the target {target}")
    return [mix for mix in mixes if not any(_below(other, mix) for other in mixes)]


def _below(first: dict[str, int], second: dict[str, int]) -> bool:
    return first != second and all(first[kind] <= second[kind] for kind in first)


def plan_for_savings(
    mixes: Sequence[dict[str, int]],
    problems: Callable[[dict[str, int]], RemovalProblem],
    evaluator: Evaluator,
    search: Search,
    *,
    budget: int,
    method: str,
) -> RemovalPlan:
    """The best plan over every mix (``problems(mix)`` removes that many of each kind), on one budget."""
    game = RemovalGame(problems(mixes[0]), evaluator, budget)
    plans: list[RemovalPlan] = []
    for index, mix in enumerate(mixes):
        game.problem = problems(mix)
        game.budget = min(budget, game.used + max(1, (budget - game.used) // (len(mixes) - index)))
        if game.remaining <= 0:
            continue
        search(game)
        try:
            plans.append(RemovalPlan.from_search(game, method=method, seed=0, params={"mix": mix}))
        except ConfigError:
            continue
    if not plans:
        raise ConfigError(f"no mix of {list(mixes)} was searched within the budget of {budget}")
    best = max(plans, key=lambda plan: plan.value)
    return best.model_copy(update={"evaluations_used": game.used, "evaluations_computed": game.computed})
