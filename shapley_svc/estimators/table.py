"""A ``Game`` served from a stored table of every coalition's value (the npz format of shared/games).

File format (numpy ``.npz``, read without pickle): ``coalitions`` bool[2^n, n] (row m is the coalition
whose bit i is ``m >> i & 1``), ``values`` float[2^n] or float[2^n, t], optional ``shapley`` float[n]
or float[t, n] (exact values), ``player_names`` str[n], ``description``. The game counts the distinct
coalitions it has served and refuses a call that would take it past its budget.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from shapley_svc.errors import BudgetExceededError, DataError
from shapley_svc.types import Coalitions, Values


class TableGame:
    """Answers coalitions by lookup in a full table; ``evaluations_used`` counts distinct coalitions."""

    def __init__(
        self,
        values: np.ndarray,
        player_names: tuple[str, ...],
        budget: int | None = None,
        exact_shapley: np.ndarray | None = None,
        task_names: tuple[str, ...] | None = None,
    ) -> None:
        table = np.asarray(values, dtype=np.float64)
        if table.ndim == 1:
            table = table[:, None]
        n_players = len(player_names)
        if table.shape[0] != 1 << n_players:
            raise DataError(
                f"a table over {n_players} players needs 2^{n_players} = {1 << n_players} values, got {table.shape[0]}"
            )
        self._table = table
        self._player_names = tuple(player_names)
        self._task_names = task_names or (
            ("value",) if table.shape[1] == 1 else tuple(f"task{j}" for j in range(table.shape[1]))
        )
        self.budget = budget
        self.exact_shapley = None if exact_shapley is None else np.atleast_2d(np.asarray(exact_shapley, float))
        self._served: set[int] = set()
        self._powers = np.left_shift(np.int64(1), np.arange(n_players, dtype=np.int64))

    @classmethod
    def from_npz(cls, path: str | Path, budget: int | None = None) -> TableGame:
        """Load a table file; a missing or malformed file raises ``DataError`` naming the problem."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"table file {str(path)!r} does not exist; pass the path of an .npz game table")
        try:
            with np.load(path, allow_pickle=False) as data:
                coalitions = np.asarray(data["coalitions"], dtype=bool)
                values = np.asarray(data["values"], dtype=np.float64)
                names = tuple(str(name) for name in data["player_names"]) if "player_names" in data else None
                shapley = np.asarray(data["shapley"], dtype=np.float64) if "shapley" in data else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise DataError(
                f"{str(path)!r} is not a game table (.npz with 'coalitions' and 'values'): {error}"
            ) from error
        n_players = coalitions.shape[1]
        expected = ((np.arange(1 << n_players)[:, None] >> np.arange(n_players)) & 1).astype(bool)
        if coalitions.shape != expected.shape or not np.array_equal(coalitions, expected):
            raise DataError(f"{str(path)!r}: row m of 'coalitions' must hold the bits of m (see the README)")
        names = names or tuple(f"player{i}" for i in range(n_players))
        return cls(values, names, budget=budget, exact_shapley=shapley)

    @property
    def n_players(self) -> int:
        """Number of players."""
        return len(self._player_names)

    @property
    def player_names(self) -> tuple[str, ...]:
        """Player names from the file."""
        return self._player_names

    @property
    def task_names(self) -> tuple[str, ...]:
        """One name per value column."""
        return self._task_names

    @property
    def evaluations_used(self) -> int:
        """Distinct coalitions served so far."""
        return len(self._served)

    def __call__(self, coalitions: Coalitions) -> Values:
        """Values float[k, t] of coalitions bool[k, n]; raises BudgetExceededError past the budget."""
        matrix = np.asarray(coalitions)
        if matrix.ndim != 2 or matrix.shape[1] != self.n_players or matrix.dtype != np.bool_:
            raise DataError(f"coalitions must be bool[k, {self.n_players}], got {matrix.dtype}{list(matrix.shape)}")
        codes = matrix.astype(np.int64) @ self._powers
        new = set(codes.tolist()) - self._served
        if self.budget is not None and len(self._served) + len(new) > self.budget:
            raise BudgetExceededError(
                f"serving {len(new)} new coalitions would use {len(self._served) + len(new)} evaluations, "
                f"past the budget of {self.budget}"
            )
        self._served |= new
        return self._table[codes]
