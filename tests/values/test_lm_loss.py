"""The language-modelling value: capped loss, chunking, fingerprints, and the demo model's reference numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.model.loading import LoadedModel
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.base import ModelGame
from shapley_svc.values.lm_loss import LanguageModelingLoss

GAME_TABLE = Path(default_data_dir()).parent / "games" / "smollm2_blocks18-29_wikitext.npz"


def direct_value(loaded: LoadedModel, masked: MaskedModel, mask: np.ndarray, tokens: torch.Tensor, cap: float) -> float:
    """Minus the mean capped next-token loss from the full logits of a plain forward under ``mask``."""
    with torch.inference_mode(), masked.active(mask):
        logits = loaded.model(tokens).logits[:, :-1].float()
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
    return -float(losses.clamp(max=cap).mean())


def test_value_equals_direct_computation_whatever_the_chunking(tiny_llama: LoadedModel) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, "sublayer")
    masks = np.random.default_rng(0).random((6, masked.n_players)) < 0.5
    values = []
    for chunk_tokens, windows_per_batch in ((7, 1), (1024, 8)):
        value_fn = LanguageModelingLoss(
            window=32, windows=3, chunk_tokens=chunk_tokens, windows_per_batch=windows_per_batch
        )
        values.append(ModelGame(masked, value_fn, tiny_llama.tokenizer, tiny_llama.fingerprint)(masks))
    np.testing.assert_allclose(values[0], values[1], rtol=0, atol=1e-6)
    tokens = value_fn._tokens
    assert tokens is not None
    cap = math.log(len(tiny_llama.tokenizer))
    direct = [direct_value(tiny_llama, masked, mask, tokens, cap) for mask in masks]
    np.testing.assert_allclose(values[1][:, 0], direct, rtol=0, atol=1e-5)


def test_cap_bounds_every_token_loss(tiny_llama: LoadedModel) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, "block")
    value_fn = LanguageModelingLoss(window=32, windows=2, cap=0.5)
    values = ModelGame(masked, value_fn, tiny_llama.tokenizer, tiny_llama.fingerprint)(np.ones((1, 6), dtype=bool))
    assert values[0, 0] >= -0.5


def test_fingerprint_is_stable_and_tracks_the_data_slice(tiny_llama: LoadedModel) -> None:
    def fingerprint(**settings: int) -> str:
        value_fn = LanguageModelingLoss(window=32, windows=2, **settings)
        value_fn.prepare(tiny_llama.tokenizer)
        return value_fn.fingerprint()

    assert fingerprint() == fingerprint()
    assert fingerprint() != fingerprint(first_window=1)
    assert fingerprint(chunk_tokens=5) == fingerprint(chunk_tokens=50)


@pytest.mark.slow
def test_demo_model_reference_loss_and_game_table(demo_fp32: LoadedModel) -> None:
    """Full model: 3.59 nats on the first 4 x 128 WikiText-2 test tokens; equal to the exact game table."""
    masked = MaskedModel(demo_fp32.model, demo_fp32.layout, "block")
    game = ModelGame(masked, LanguageModelingLoss(window=128, windows=4), demo_fp32.tokenizer, demo_fp32.fingerprint)
    table = np.load(GAME_TABLE)
    rows = [len(table["values"]) - 1, 0, 1, 0b100000000000, 0b011011011011, 1234]
    masks = np.ones((len(rows), 30), dtype=bool)
    masks[:, 18:] = table["coalitions"][rows]
    values = game(masks)[:, 0]
    assert values[0] == pytest.approx(-3.59, abs=0.01)
    np.testing.assert_allclose(values, table["values"][rows], rtol=0, atol=2e-4)
