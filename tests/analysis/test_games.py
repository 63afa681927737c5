"""CachedGame serves repeats from the store and evaluates each miss once; BlockView equals block masking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shapley_svc.analysis import BlockView, CachedGame
from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.store import SQLiteStore
from shapley_svc.values import make_value_fn
from shapley_svc.values.base import ModelGame


class CountingAdditiveGame:
    """v(S) = sum of the weights of S in column 0 and |S| in column 1; counts every coalition it is asked."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=float)
        self.asked = 0

    @property
    def n_players(self) -> int:
        return len(self.weights)

    @property
    def player_names(self) -> tuple[str, ...]:
        return tuple(f"player{i}" for i in range(self.n_players))

    @property
    def task_names(self) -> tuple[str, ...]:
        return ("weight", "size")

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        self.asked += len(coalitions)
        return np.stack([coalitions @ self.weights, coalitions.sum(axis=1)], axis=1).astype(float)


def test_cached_game_evaluates_each_coalition_once_and_a_new_store_handle_reads_it_back(tmp_path: Path) -> None:
    inner = CountingAdditiveGame(np.array([1.0, -2.0, 3.0, 0.5]))
    coalitions = np.random.default_rng(0).random((12, 4)) < 0.5
    coalitions = np.vstack([coalitions, coalitions[:3]])  # repeats within one call
    store = SQLiteStore(tmp_path / "store.sqlite")
    game = CachedGame(inner, store, "game-a", chunk_size=3, progress=False)
    first = game(coalitions)
    distinct = len(np.unique(coalitions, axis=0))
    assert inner.asked == distinct == game.evaluated
    np.testing.assert_array_equal(first, inner(coalitions))
    inner.asked = 0
    store.close()
    again = CachedGame(inner, SQLiteStore(tmp_path / "store.sqlite"), "game-a", progress=False)
    np.testing.assert_array_equal(again(coalitions[::-1]), first[::-1])
    assert inner.asked == 0 and again.cache_hits == len(coalitions)
    other = CachedGame(inner, again.store, "game-b", progress=False)
    other(coalitions[:2])
    assert inner.asked == 2  # another fingerprint does not see game-a's values


def test_block_view_equals_the_block_granularity_game() -> None:
    tiny = tiny_model("llama", num_layers=3, seed=3)
    value_fn = make_value_fn("lm_loss", {"corpus": "wikitext2", "windows": 2, "window": 16})
    sublayer = ModelGame(MaskedModel(tiny.model, tiny.layout, "sublayer"), value_fn, tiny.tokenizer, tiny.fingerprint)
    block = ModelGame(MaskedModel(tiny.model, tiny.layout, "block"), value_fn, tiny.tokenizer, tiny.fingerprint)
    view = BlockView(sublayer)
    assert view.player_names == block.player_names
    coalitions = np.array([[True, True, True], [True, False, True], [False, False, True], [False, False, False]])
    np.testing.assert_allclose(view(coalitions), block(coalitions), rtol=0, atol=1e-6)


def test_block_view_refuses_a_block_game() -> None:
    with pytest.raises(ConfigError):
        BlockView(CountingAdditiveGame(np.ones(4)))
