"""Held-out check of a plan: the full model and the plan's remaining set on data the search never read.

The held-out game values each item (a corpus window, a question, a passage; see
:class:`~shapley_svc.values.per_item.PerItem`) apart, so the plan's cost is a paired difference over items,
with a Student-t interval. Both coalitions go through the evaluator of the held-out game, so they are cached
like any other value.
"""

from __future__ import annotations

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.planning.plan import HeldOut, RemovalPlan
from shapley_svc.planning.problem import RemovalProblem
from shapley_svc.runner.evaluator import Evaluator
from shapley_svc.stats import paired_interval

LEVEL = 0.95


def held_out_check(plan: RemovalPlan, problem: RemovalProblem, held_out: Evaluator) -> tuple[HeldOut, ...]:
    """Each held-out task's value with every player present and with the plan's players removed, and their
    paired difference (plan - full) with its 95% interval over the held-out items."""
    if held_out.game.player_names != problem.player_names:
        raise ConfigError("the held-out game must have the same players as the game the plan was searched on")
    removed = frozenset(problem.player_names.index(name) for name in plan.removed)
    values = held_out.evaluate(problem.coalitions([frozenset(), removed]))  # [2, items * tasks]
    columns: dict[str, list[int]] = {}
    for column, name in enumerate(held_out.game.task_names):
        columns.setdefault(name.rsplit("@", 1)[0], []).append(column)
    checks = []
    for task, indices in columns.items():
        if len(indices) < 2:
            raise ConfigError(f"held-out task {task} has {len(indices)} item; a paired interval needs at least 2")
        full, kept = values[0, indices], values[1, indices]
        interval = paired_interval(kept, full, LEVEL)
        checks.append(
            HeldOut(
                task=task,
                full=float(np.mean(full)),
                plan=float(np.mean(kept)),
                difference=interval.mean,
                low=interval.low,
                high=interval.high,
                items=interval.items,
            )
        )
    return tuple(checks)
