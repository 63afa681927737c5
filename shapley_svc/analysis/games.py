"""Games for analyses: a store-backed cached game (a rerun reads its values back) and a block view of a
sublayer game (block i present = both sublayers of layer i present), so one cache serves both granularities.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from shapley_svc.errors import ConfigError
from shapley_svc.players import Player, block_names
from shapley_svc.runner.driver import lexicographic_rows
from shapley_svc.store.base import ResultStore
from shapley_svc.types import Coalitions, Game, Values


class CachedGame:
    """A :class:`~shapley_svc.types.Game` that answers from the store's coalition-value cache and evaluates
    only the misses, ``chunk_size`` at a time in layer order, storing each chunk as soon as it is done.

    ``fingerprint`` names what the values depend on (``ModelGame.fingerprint()``); ``evaluated`` and
    ``cache_hits`` count distinct coalitions computed and coalitions served from the store.
    """

    def __init__(
        self, game: Game, store: ResultStore, fingerprint: str, chunk_size: int = 16, progress: bool = True
    ) -> None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.game = game
        self.store = store
        self.fingerprint = fingerprint
        self.chunk_size = chunk_size
        self.progress = progress
        self.evaluated = 0
        self.cache_hits = 0

    @property
    def n_players(self) -> int:
        return self.game.n_players

    @property
    def player_names(self) -> tuple[str, ...]:
        return tuple(self.game.player_names)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self.game.task_names)

    def __call__(self, coalitions: Coalitions) -> Values:
        """float[k, t]: cached values where the store has them, the others evaluated once and stored."""
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        if coalitions.shape[1] != self.n_players:
            raise ConfigError(f"coalitions have {coalitions.shape[1]} players, the game {self.n_players}")
        lookup = self.store.lookup_values(self.fingerprint, coalitions, len(self.task_names))
        values = np.array(lookup.values, dtype=np.float64)
        self.cache_hits += int(lookup.found.sum())
        missing = np.flatnonzero(~lookup.found)
        if missing.size == 0:
            return values
        unique = np.unique(coalitions[missing], axis=0)
        unique = unique[lexicographic_rows(unique)]  # layer order: consecutive chunks share prefixes
        position = {row.tobytes(): index for index, row in enumerate(unique)}
        fresh = np.empty((len(unique), len(self.task_names)))
        with tqdm(total=len(unique), desc="coalitions", unit="coal", disable=not self.progress) as bar:
            for start in range(0, len(unique), self.chunk_size):
                chunk = unique[start : start + self.chunk_size]
                chunk_values = np.asarray(self.game(chunk), dtype=np.float64)
                self.store.put_values(self.fingerprint, chunk, chunk_values)
                fresh[start : start + len(chunk)] = chunk_values
                self.evaluated += len(chunk)
                bar.update(len(chunk))
        values[missing] = fresh[[position[row.tobytes()] for row in coalitions[missing]]]
        return values


class BlockView:
    """The block-granularity game of a sublayer-granularity game: block i stands for both sublayers of layer i."""

    def __init__(self, sublayer_game: Game) -> None:
        players = [Player.parse(name) for name in sublayer_game.player_names]
        layers = sorted({player.layer for player in players})
        expected = [Player(layer, kind) for layer in layers for kind in ("attn", "mlp")]
        if players != expected:
            raise ConfigError(
                "BlockView needs a sublayer game whose players are layerN.attn, layerN.mlp for each layer in order"
            )
        self.game = sublayer_game
        self._names = block_names(layers)

    @property
    def n_players(self) -> int:
        return len(self._names)

    @property
    def player_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self.game.task_names)

    def __call__(self, coalitions: Coalitions) -> Values:
        """float[k, t]: the sublayer game's values with each block's two sublayers switched together."""
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        return self.game(np.repeat(coalitions, 2, axis=1))
