"""The table game: lookup, distinct-coalition counting, budget refusal, file errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from estimator_games import SHIPPED_TABLE

from shapley_svc.errors import BudgetExceededError, DataError
from shapley_svc.estimators import estimate, make_estimator
from shapley_svc.estimators.exact import all_coalitions, shapley_from_table
from shapley_svc.estimators.table import TableGame


def write_table(path: Path, n_players: int = 4) -> np.ndarray:
    coalitions = all_coalitions(n_players)
    values = np.tanh(coalitions @ np.arange(1.0, n_players + 1) / 3)
    np.savez(
        path,
        coalitions=coalitions,
        values=values,
        player_names=np.array([f"b{i}" for i in range(n_players)]),
        shapley=shapley_from_table(values[:, None])[0],
        description="test",
    )
    return values


def test_lookup_counts_distinct_coalitions_and_refuses_past_budget(tmp_path: Path) -> None:
    values = write_table(tmp_path / "t.npz")
    game = TableGame.from_npz(tmp_path / "t.npz", budget=3)
    rows = np.array([[True, False, False, False], [True, False, False, False], [False, True, True, False]])
    np.testing.assert_allclose(game(rows)[:, 0], values[[1, 1, 6]])
    assert game.evaluations_used == 2
    game(rows[:1])  # a coalition already served is free
    assert game.evaluations_used == 2
    with pytest.raises(BudgetExceededError, match="past the budget of 3"):
        game(np.array([[False, False, False, True], [True, True, True, True]]))
    assert game.evaluations_used == 2  # a refused call serves nothing


def test_exact_estimator_reproduces_the_stored_values(tmp_path: Path) -> None:
    write_table(tmp_path / "t.npz")
    game = TableGame.from_npz(tmp_path / "t.npz", budget=16)
    result = estimate(make_estimator("exact", 4, 16), game)
    np.testing.assert_allclose(result.values, game.exact_shapley, atol=1e-12)
    assert result.player_names == ("b0", "b1", "b2", "b3")


def test_missing_and_malformed_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        TableGame.from_npz(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a game table"):
        TableGame.from_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "shuffled.npz", coalitions=all_coalitions(3)[::-1], values=np.zeros(8))
    with pytest.raises(DataError, match="bits of m"):
        TableGame.from_npz(tmp_path / "shuffled.npz")


@pytest.mark.skipif(not SHIPPED_TABLE.is_file(), reason="the shared game tables are not checked out next to the repo")
def test_shipped_table_default_estimator_beats_kernelshap() -> None:
    errors = {}
    for name in ("default", "kernelshap"):
        squared = []
        for seed in range(5):
            game = TableGame.from_npz(SHIPPED_TABLE, budget=120)
            result = estimate(make_estimator(name, 12, 120, seed=seed), game)
            assert game.evaluations_used <= 120
            squared.append(np.mean((result.values - game.exact_shapley) ** 2))
        errors[name] = float(np.sqrt(np.mean(squared)))
    assert errors["default"] < 0.8 * errors["kernelshap"]
