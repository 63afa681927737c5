"""Leave-one-out: one batched engine call equals evaluating each mask alone; known answers on an additive game."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shapley_svc.engine.batched import count_present
from shapley_svc.errors import ConfigError
from shapley_svc.metrics import leave_one_out, leave_one_out_coalitions
from shapley_svc.metrics.loo import LeaveOneOut
from shapley_svc.model.loading import LoadedModel
from shapley_svc.model.masked import MaskedModel
from shapley_svc.types import Coalitions, Values
from shapley_svc.values.base import ModelGame
from shapley_svc.values.lm_loss import LanguageModelingLoss


class AdditiveGame:
    """v(S) = sum of the weights of S, one column per row of ``weights`` [t, n]; counts its calls."""

    def __init__(self, weights: np.ndarray):
        self.weights = weights
        self.calls: list[int] = []

    @property
    def n_players(self) -> int:
        return self.weights.shape[1]

    @property
    def player_names(self) -> tuple[str, ...]:
        return tuple(f"layer{i}.block" for i in range(self.n_players))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(f"task{t}" for t in range(len(self.weights)))

    def __call__(self, coalitions: Coalitions) -> Values:
        self.calls.append(len(coalitions))
        return coalitions.astype(np.float64) @ self.weights.T


def test_coalitions_are_the_full_set_then_each_player_removed() -> None:
    coalitions = leave_one_out_coalitions(3)
    np.testing.assert_array_equal(coalitions, [[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]])
    with pytest.raises(ConfigError, match="positive integer"):
        leave_one_out_coalitions(0)


def test_additive_game_gets_its_weights_from_one_call() -> None:
    weights = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    game = AdditiveGame(weights)
    result = leave_one_out(game)
    np.testing.assert_allclose(result.values, weights)
    np.testing.assert_allclose(result.v_full, weights.sum(axis=1))
    assert game.calls == [5]
    rankings = result.rankings("block", model_fingerprint="m", value_fingerprint="v")
    assert [r.task for r in rankings] == ["task0", "task1"]
    assert rankings[0].least_important(1) == ["layer1.block"] and rankings[0].metadata["v_full"] == 1.5
    with pytest.raises(ConfigError, match="ModelGame"):
        leave_one_out(game, progress=lambda: None)
    with pytest.raises(ConfigError, match=r"expected \(5, 2\)"):
        LeaveOneOut.from_values(np.zeros((4, 2)), game.player_names, game.task_names)


def direct_value(loaded: LoadedModel, masked: MaskedModel, mask: np.ndarray, tokens: torch.Tensor) -> float:
    """Minus the mean next-token loss, capped at ln(vocab), from a plain forward under ``mask``."""
    with torch.inference_mode(), masked.active(mask):
        logits = loaded.model(tokens).logits[:, :-1].float()
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
    return -float(losses.clamp(max=math.log(len(loaded.tokenizer))).mean())


def test_engine_leave_one_out_equals_each_mask_alone(tiny_llama: LoadedModel) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, "sublayer")
    value_fn = LanguageModelingLoss(window=24, windows=2)
    game = ModelGame(masked, value_fn, tiny_llama.tokenizer, tiny_llama.fingerprint)
    ticks: list[None] = []
    result = leave_one_out(game, progress=lambda: ticks.append(None))
    tokens = value_fn._tokens
    assert tokens is not None
    coalitions = leave_one_out_coalitions(masked.n_players)
    direct = np.array([direct_value(tiny_llama, masked, mask, tokens) for mask in coalitions])
    np.testing.assert_allclose(result.v_full, direct[:1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.values[0], direct[0] - direct[1:], rtol=0, atol=1e-5)
    assert result.values.shape == (1, masked.n_players) and result.player_names == masked.player_names
    assert len(ticks) == game.engine.stats.masks == masked.n_players + 1  # one engine pass over one token batch
    assert game.engine.stats.layer_forwards < count_present(coalitions, masked)
