"""Games for analyses: a store-backed cached game (a rerun reads its values back) and a block view of a
sublayer game (block i present = both sublayers of layer i present), so one cache serves both granularities.
"""

from __future__ import annotations

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.players import Player, block_names
from shapley_svc.runner.evaluator import Control, Evaluator
from shapley_svc.store.base import ValueCache
from shapley_svc.types import Coalitions, Game, Values


class CachedGame:
    """A :class:`~shapley_svc.types.Game` answered through an :class:`~shapley_svc.runner.evaluator.Evaluator`
    on the store's coalition-value cache: misses are evaluated once, ``chunk_size`` at a time in layer order,
    each chunk stored as soon as it is done.

    ``fingerprint`` names what the values depend on (``ModelGame.fingerprint()``); ``evaluated`` and
    ``cache_hits`` count distinct coalitions computed and coalitions served from the store.
    """

    def __init__(
        self, game: Game, store: ValueCache, fingerprint: str, chunk_size: int = 16, progress: bool = True
    ) -> None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.store = store
        self.progress = progress
        self.evaluator = Evaluator.of(game, store, fingerprint=fingerprint, chunk_size=chunk_size)
        self.n_players = game.n_players
        self.player_names = tuple(game.player_names)
        self.task_names = tuple(game.task_names)

    @property
    def evaluated(self) -> int:
        return self.evaluator.stats.evaluated

    @property
    def cache_hits(self) -> int:
        return self.evaluator.stats.cache_hits

    def __call__(self, coalitions: Coalitions) -> Values:
        """float[k, t]: cached values where the store has them, the others evaluated once and stored."""
        with self.evaluator.tracking(Control(progress_bar=self.progress)):
            return self.evaluator.evaluate(coalitions)


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
