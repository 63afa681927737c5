"""An in-memory :class:`~shapley_svc.store.base.ValueCache`: the evaluator's cache in tests and notebooks.

Same keys and refusals as the SQLite store (game fingerprint, set-up, coalition; finite values only), gone
when the process ends.
"""

from __future__ import annotations

import threading

import numpy as np

from shapley_svc.coalitions import CoalitionTable
from shapley_svc.store.base import CacheLookup, cacheable
from shapley_svc.types import Coalitions, Values


class MemoryValueCache:
    """Coalition values in a dict per (game, set-up); thread-safe."""

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str], CoalitionTable] = {}
        self._lock = threading.Lock()

    def lookup_values(
        self, game: str, coalitions: Coalitions, n_tasks: int, *, setup: str | None = None
    ) -> CacheLookup:
        """Cached values of ``coalitions`` under ``game`` and ``setup`` (``None``: any set-up)."""
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        found = np.zeros(len(coalitions), dtype=bool)
        values = np.full((len(coalitions), n_tasks), np.nan)
        with self._lock:
            tables = [table for (name, kind), table in self._tables.items() if name == game and setup in (None, kind)]
            for table in tables:
                hit, hit_values = table.lookup(coalitions, n_tasks)
                new = hit & ~found
                found |= new
                values[new] = hit_values[new]
        return CacheLookup(found=found, values=values)

    def put_values(self, game: str, coalitions: Coalitions, values: Values, *, setup: str = "") -> None:
        """Cache finite ``values`` (float[k, t]) of ``coalitions``; non-finite values are a StoreError."""
        coalitions, values = cacheable(coalitions, values)
        with self._lock:
            self._tables.setdefault((game, setup), CoalitionTable()).put(coalitions, values)

    def count_values(self, game: str, *, setup: str | None = None) -> int:
        """How many values are cached under ``game`` (and ``setup``; ``None``: every set-up)."""
        setups = self.value_setups(game)
        return sum(setups.values()) if setup is None else setups.get(setup, 0)

    def value_setups(self, game: str) -> dict[str, int]:
        """The set-ups holding values of ``game``, with how many each."""
        with self._lock:
            return {kind: len(table) for (name, kind), table in self._tables.items() if name == game}
