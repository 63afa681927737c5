"""Plans judged across tasks: costs and trade-offs paired over each task's held-out items."""

from __future__ import annotations

import numpy as np
import pytest

from shapley_svc.analysis import judge_plans
from shapley_svc.errors import ConfigError


class PerItemAdditive:
    """A per-item game: item i of the task scores ``weights[i] @ coalition``; columns ``metric@item``."""

    def __init__(self, weights: np.ndarray, metrics: tuple[str, ...] = ("score",)) -> None:
        self.weights = np.asarray(weights, dtype=float)  # [items, n]
        self.metrics = metrics
        self.calls: list[int] = []

    @property
    def n_players(self) -> int:
        return self.weights.shape[1]

    @property
    def player_names(self) -> tuple[str, ...]:
        return tuple(f"layer{i}.block" for i in range(self.n_players))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(f"{metric}@{item}" for item in range(len(self.weights)) for metric in self.metrics)

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        self.calls.append(len(coalitions))
        per_item = np.asarray(coalitions, dtype=float) @ self.weights.T  # [k, items]
        return np.repeat(per_item, len(self.metrics), axis=1) * np.tile(
            np.arange(1, len(self.metrics) + 1), len(self.weights)
        )


def test_costs_and_trade_offs_are_paired_over_the_judged_tasks_items() -> None:
    rng = np.random.default_rng(3)
    task_a = PerItemAdditive(np.abs(rng.normal(1, 0.3, (40, 3))) * [1.0, 0.1, 0.1])  # needs player 0
    task_b = PerItemAdditive(np.abs(rng.normal(1, 0.3, (40, 3))) * [0.1, 1.0, 0.1])  # needs player 1
    plans = {"a": np.array([True, False, True]), "b": np.array([False, True, True])}  # each keeps what it needs
    judgement = judge_plans(plans, {"a": task_a, "b": task_b})
    assert task_a.calls == [3] and task_b.calls == [3]  # the full model and every plan in one call per task
    full_b, a_on_b = task_b.weights.sum(axis=1), task_b.weights[:, [0, 2]].sum(axis=1)
    cost = judgement.cost("a", "b")
    assert cost.mean == pytest.approx(np.mean(full_b - a_on_b)) and cost.items == 40
    assert cost.low < cost.mean < cost.high and cost.resolved
    excess = judgement.excess("a", "b", "b")  # a's plan against b's own plan, on b's items
    assert excess.mean == pytest.approx(np.mean(task_b.weights[:, [1, 2]].sum(axis=1) - a_on_b))
    assert excess.resolved and excess.mean > 0.5
    assert judgement.excess("b", "b", "b").mean == 0 and not judgement.excess("b", "b", "b").resolved
    assert judgement.value(None, "a") == pytest.approx(task_a.weights.sum(axis=1).mean())


def test_an_unresolved_difference_keeps_zero_inside_its_interval() -> None:
    rng = np.random.default_rng(0)
    noisy = PerItemAdditive(rng.normal(0, 1, (12, 2)))
    judgement = judge_plans({"drop0": np.array([False, True]), "drop1": np.array([True, False])}, {"t": noisy})
    gap = judgement.excess("drop0", "drop1", "t")
    differences = noisy.weights[:, 0] - noisy.weights[:, 1]  # drop1's item values minus drop0's
    assert gap.mean == pytest.approx(differences.mean())
    half_width = (gap.high - gap.low) / 2
    assert half_width == pytest.approx(2.201 * differences.std(ddof=1) / np.sqrt(12), rel=0.02)  # t(0.975, 11)


def test_the_named_metric_is_judged_and_bad_requests_are_refused() -> None:
    game = PerItemAdditive(np.ones((5, 2)), metrics=("first", "second"))
    plans = {"p": np.array([True, False])}
    assert judge_plans(plans, {"t": game}, metric="second").cost("p", "t").mean == pytest.approx(2.0)
    assert judge_plans(plans, {"t": game}).metrics == {"t": "first"}
    with pytest.raises(ConfigError, match=r"\[3\] players"):
        judge_plans({"p": np.ones(3, bool)}, {"t": game})
    with pytest.raises(ConfigError, match="1 item"):
        judge_plans(plans, {"t": PerItemAdditive(np.ones((1, 2)))})
    with pytest.raises(ConfigError, match="not judged"):
        judge_plans(plans, {"t": game}).cost("p", "other")
    with pytest.raises(ConfigError, match="at least one"):
        judge_plans({}, {"t": game})
