"""Coalitions as data: one key per coalition, the layer order that shares prefixes, an in-memory table.

A coalition is a row of a bool[k, n] matrix (:mod:`shapley_svc.types`). Everything that keys, sorts or
stores coalitions goes through here, so the value cache, the evaluator, the engine and the estimators agree
on what "the same coalition" and "layer order" mean.
"""

from __future__ import annotations

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.types import Coalitions, Values


def coalition_key(coalition: np.ndarray) -> bytes:
    """The key of one coalition (bool[n]): its bits packed, player 0 in the top bit."""
    return np.packbits(np.asarray(coalition, dtype=bool)).tobytes()


def as_coalitions(coalitions: object, n_players: int) -> Coalitions:
    """``coalitions`` as a bool[k, n_players] matrix (one row is promoted); a wrong width is a ConfigError."""
    matrix = np.atleast_2d(np.asarray(coalitions, dtype=bool))
    if matrix.ndim != 2 or matrix.shape[1] != n_players:
        raise ConfigError(
            f"coalitions have shape {list(matrix.shape)} but the game has {n_players} players: "
            f"give a bool[k, {n_players}] matrix"
        )
    return matrix


def layer_order(rows: np.ndarray) -> np.ndarray:
    """Row indices of a bool matrix sorted lexicographically, column 0 (the first layer) most significant.

    Consecutive rows in this order share the longest prefixes of present layers, which the engine reuses.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=int)
    return np.lexsort(np.asarray(rows, dtype=np.int8).T[::-1])


def full_and_empty(n_players: int) -> Coalitions:
    """The empty and the full coalition, as a bool[2, n] matrix."""
    return np.array([np.zeros(n_players, dtype=bool), np.ones(n_players, dtype=bool)])


class CoalitionTable:
    """Value rows (float[t]) by coalition, in memory: what a game has answered, looked up by coalition."""

    def __init__(self) -> None:
        self._rows: dict[bytes, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, coalition: object) -> bool:
        return coalition_key(np.asarray(coalition)) in self._rows

    def keys(self) -> set[bytes]:
        """The :func:`coalition_key` of every coalition in the table."""
        return set(self._rows)

    def get(self, coalition: np.ndarray) -> np.ndarray | None:
        """The value row of ``coalition``, or None when it is not in the table."""
        return self._rows.get(coalition_key(coalition))

    def put(self, coalitions: Coalitions, values: Values) -> None:
        """Record one value row per coalition (a coalition given again keeps its latest row)."""
        for coalition, row in zip(coalitions, np.atleast_2d(values), strict=True):
            self._rows[coalition_key(coalition)] = np.array(row, dtype=np.float64)

    def lookup(self, coalitions: Coalitions, n_tasks: int) -> tuple[np.ndarray, Values]:
        """bool[k] found and float[k, t] values (NaN where not found) of ``coalitions``."""
        found = np.zeros(len(coalitions), dtype=bool)
        values = np.full((len(coalitions), n_tasks), np.nan)
        for index, coalition in enumerate(coalitions):
            row = self.get(coalition)
            if row is not None:
                found[index], values[index] = True, row
        return found, values
