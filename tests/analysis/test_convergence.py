"""Estimator error against exact values on a table, and when "pruning set decided" fires."""

from __future__ import annotations

import numpy as np
import pytest

from shapley_svc.analysis import error_vs_budget, pruning_set_decided_runs, ranking_agreement
from shapley_svc.errors import ConfigError
from shapley_svc.estimators.table import TableGame

WEIGHTS = np.array([0.05, 2.0, 0.1, 1.5, 3.0, 0.15])  # three clearly small players: 0, 2, 5


def additive_table() -> TableGame:
    """An additive 6-player table game plus a pairwise term; exact Shapley values by construction."""
    n = len(WEIGHTS)
    coalitions = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1).astype(bool)
    values = coalitions @ WEIGHTS + 0.8 * (coalitions[:, 1] & coalitions[:, 3])
    exact = WEIGHTS + np.array([0, 0.4, 0, 0.4, 0, 0])
    return TableGame(values, tuple(f"layer{i}.block" for i in range(n)), exact_shapley=exact)


def test_exact_estimator_has_zero_error_and_sampling_error_shrinks_with_budget() -> None:
    exact = additive_table().exact_shapley[0]
    study = error_vs_budget(additive_table, exact, ["exact", "permutation"], budgets=[64], seeds=2)
    assert study.rmse_mean[0, 0] == pytest.approx(0.0, abs=1e-9)
    sampled = error_vs_budget(additive_table, exact, ["permutation"], budgets=[8, 48], seeds=6)
    assert sampled.rmse_mean[0, 1] < sampled.rmse_mean[0, 0]
    assert sampled.rmse_stderr.shape == (1, 2) and np.all(sampled.rmse_stderr >= 0)
    assert study.best(64) == "exact"
    with pytest.raises(ConfigError):
        error_vs_budget(additive_table, exact, [], budgets=[8], seeds=1)


def test_pruning_set_decided_fires_on_the_true_lowest_players() -> None:
    exact = additive_table().exact_shapley[0]
    runs = pruning_set_decided_runs(additive_table, exact, "player_stratified", k=3, max_budget=64, seeds=3)
    assert len(runs) == 3
    for run in runs:
        assert run.fired_at is not None and run.fired_at <= 64
        assert run.correct and run.chosen == (0, 2, 5)
        assert run.trace[-1] == (run.fired_at, 0)


def test_ranking_agreement_counts_shared_lowest_players() -> None:
    players = [f"layer{i}.block" for i in range(5)]
    base = dict(zip(players, [1.0, 2.0, 3.0, 4.0, 5.0], strict=True))
    reverse = {p: -v for p, v in base.items()}
    swapped = {**base, "layer1.block": 3.5}
    agreement = ranking_agreement({"a": base, "b": reverse, "c": swapped}, k=2)
    assert agreement.rho[0, 1] == pytest.approx(-1.0)
    assert agreement.overlap[0, 1] == 0 and agreement.overlap[0, 2] == 1
    assert agreement.lowest["a"] == ("layer0.block", "layer1.block")
    with pytest.raises(ConfigError, match="other players"):
        ranking_agreement({"a": base, "b": {"x": 1.0}}, k=2)
