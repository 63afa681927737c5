"""Plans judged across tasks: each plan's cost on every task's held-out items, paired over items.

Task trade-offs are a decision question: does the plan searched for task A cost task B more than B's own plan?
Every plan and the full model are scored item by item on the same held-out items of each task (one call per
task, so the engine shares hidden states between the coalitions and the store caches them), and each
comparison is a paired difference over items with a Student-t interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.stats import PairedInterval, paired_interval
from shapley_svc.types import Game


@dataclass(frozen=True)
class PlanJudgement:
    """Per judged task, float[1 + plans, items]: the full model's item values, then each plan's (higher is better)."""

    plans: tuple[str, ...]
    tasks: tuple[str, ...]
    metrics: dict[str, str]
    item_values: dict[str, np.ndarray]

    def value(self, plan: str | None, task: str) -> float:
        """Mean value on ``task``'s items of ``plan`` (None: the full model)."""
        return float(self._row(plan, task).mean())

    def cost(self, plan: str, task: str) -> PairedInterval:
        """How much ``plan`` lowers ``task``'s value from the full model's (positive: it costs)."""
        return paired_interval(self._row(None, task), self._row(plan, task))

    def excess(self, plan: str, than: str, task: str) -> PairedInterval:
        """How much more ``plan`` costs on ``task`` than the plan ``than`` (positive: ``plan`` is worse there)."""
        return paired_interval(self._row(than, task), self._row(plan, task))

    def _row(self, plan: str | None, task: str) -> np.ndarray:
        if task not in self.item_values:
            raise ConfigError(f"task {task!r} was not judged; judged tasks: {', '.join(self.tasks)}")
        if plan is not None and plan not in self.plans:
            raise ConfigError(f"no plan {plan!r}; plans: {', '.join(self.plans)}")
        return self.item_values[task][0 if plan is None else 1 + self.plans.index(plan)]


def judge_plans(
    plans: Mapping[str, np.ndarray], judges: Mapping[str, Game], metric: str | None = None
) -> PlanJudgement:
    """Score the full model and every plan (label -> coalition bool[n] it keeps) on each judge.

    A judge is a per-item game (columns ``metric@item``, as :class:`~shapley_svc.values.per_item.PerItem`
    gives); its value column ``metric`` is used where given and present, else its first metric.
    """
    if not plans or not judges:
        raise ConfigError("judge_plans needs at least one plan and one judged task")
    labels = tuple(plans)
    item_values, metrics = {}, {}
    for task, game in judges.items():
        sizes = {len(np.asarray(plans[label])) for label in labels}
        if sizes != {game.n_players}:
            raise ConfigError(f"plans have {sorted(sizes)} players, the judge of {task} {game.n_players}")
        coalitions = np.vstack([np.ones(game.n_players, bool)] + [np.asarray(plans[label], bool) for label in labels])
        columns = [name.rsplit("@", 1)[0] for name in game.task_names]
        chosen = metric if metric in columns else columns[0]
        indices = [index for index, name in enumerate(columns) if name == chosen]
        if len(indices) < 2:
            raise ConfigError(f"the judge of {task} has {len(indices)} item of {chosen}; a paired interval needs 2")
        item_values[task] = np.asarray(game(coalitions), dtype=float)[:, indices]
        metrics[task] = chosen
    return PlanJudgement(labels, tuple(judges), metrics, item_values)
