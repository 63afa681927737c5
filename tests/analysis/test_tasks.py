"""Rank correlations with intervals, cross-ranking pruning curves and per-item paired differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shapley_svc.analysis import (
    paired_difference,
    rank_correlations,
    ranking_curves,
    repository_root,
    shapley_values,
    task_scores,
)
from shapley_svc.errors import ConfigError
from shapley_svc.stats import spearman


class AdditiveBlocks:
    """Additive game over blocks ``layer0..`` with one weight column per task."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=float)  # [t, n]

    @property
    def n_players(self) -> int:
        return self.weights.shape[1]

    @property
    def player_names(self) -> tuple[str, ...]:
        return tuple(f"layer{i}.block" for i in range(self.n_players))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(f"task{j}" for j in range(self.weights.shape[0]))

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return np.asarray(coalitions, dtype=float) @ self.weights.T


def test_rank_correlation_intervals_hold_the_estimate_and_widen_with_stderr() -> None:
    rng = np.random.default_rng(1)
    values = np.stack([np.arange(12.0), np.arange(12.0) + rng.normal(0, 3, 12), -np.arange(12.0)])
    tasks = ("a", "b", "c")
    sharp = rank_correlations(values, np.full(values.shape, 1e-9), tasks)
    loose = rank_correlations(values, np.full(values.shape, 2.0), tasks)
    assert sharp.pair("a", "c")[0] == pytest.approx(-1.0, abs=1e-5)
    rho, low, high = loose.pair("a", "b")
    assert low < rho < high and rho == pytest.approx(spearman(values[0], values[1]))
    sharp_width = sharp.pair("a", "b")[2] - sharp.pair("a", "b")[1]
    assert high - low > sharp_width + 0.05
    assert loose.level == pytest.approx(0.95, abs=1e-3)
    with pytest.raises(ConfigError):
        rank_correlations(values, np.ones((2, 12)), tasks)


def test_ranking_curves_remove_the_lowest_players_of_each_ranking_and_judge_every_task() -> None:
    weights = np.array([[5.0, 1.0, 3.0, 2.0, 4.0], [1.0, 5.0, 2.0, 4.0, 3.0]])
    game = AdditiveBlocks(weights)
    result = shapley_values(game, budget=64, estimator="exact")
    np.testing.assert_allclose(result.values, weights, atol=1e-9)
    curves = ranking_curves(game, task_scores(result), 5, target="block", max_removed=3)
    assert curves.removed[0] == ("layer1.block", "layer3.block", "layer2.block")
    assert curves.loss("task0", "task0", 3) == pytest.approx(1 + 2 + 3)
    assert curves.loss("task0", "task1", 3) == pytest.approx(5 + 4 + 2)  # pruning by task0 hurts task1
    assert curves.loss("task1", "task1", 2) == pytest.approx(1 + 2)
    assert curves.value("task1", "task0", 0) == pytest.approx(weights[0].sum())


def test_paired_difference_uses_the_spread_of_the_differences() -> None:
    first = np.array([0.5, 0.6, 0.7, 0.8])
    mean, stderr = paired_difference(first, first - np.array([0.1, 0.1, 0.1, 0.1]))
    assert mean == pytest.approx(0.1) and stderr == pytest.approx(0.0, abs=1e-12)
    mean, stderr = paired_difference(np.array([1.0, 0.0, 1.0, 0.0]), np.zeros(4))
    assert mean == pytest.approx(0.5) and stderr == pytest.approx(np.std([1, 0, 1, 0], ddof=1) / 2)
    with pytest.raises(ConfigError):
        paired_difference(np.ones(3), np.ones(4))


def test_repository_root_walks_up_to_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "notebooks" / "deep").mkdir(parents=True)
    assert repository_root(tmp_path / "notebooks" / "deep") == tmp_path.resolve()
    with pytest.raises(ConfigError, match=r"pyproject\.toml"):
        repository_root(Path("/"))
