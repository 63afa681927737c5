"""Static metrics: equal to a direct float64 computation from hidden states, per block and per sublayer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shapley_svc.engine import BatchedEngine, TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.metrics import METHODS, static_metrics, token_metrics
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel


def direct_metrics(inputs: torch.Tensor, outputs: torch.Tensor) -> np.ndarray:
    """float[3]: 1 - cos, arccos(cos) / pi and |y - x| / |x|, in float64 with the textbook formulas, token mean."""
    x = inputs.double().reshape(-1, inputs.shape[-1])
    y = outputs.double().reshape(-1, outputs.shape[-1])
    cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
    return np.array(
        [
            float((1 - cos).mean()),
            float((torch.arccos(cos.clamp(-1, 1)) / math.pi).mean()),
            float(((y - x).norm(dim=-1) / x.norm(dim=-1)).mean()),
        ]
    )


def token_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(4, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


def reference_states(loaded: LoadedModel, masked: MaskedModel, ids: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Per layer: (input, stream after attention only, output), from output_hidden_states and run_layer."""
    with torch.inference_mode():
        hidden = loaded.model(ids, output_hidden_states=True).hidden_states  # L + 1 entries, the last normed
        layer_kwargs = BatchedEngine(masked).prepare(TokenBatch(ids)).layer_kwargs
        states = []
        for index in range(masked.num_layers):
            inputs = hidden[index]
            after_attention = masked.run_layer(index, inputs, True, False, layer_kwargs[index])
            if index < masked.num_layers - 1:
                outputs = hidden[index + 1]
            else:  # hidden_states[L] has the final norm applied: run the last layer directly instead
                outputs = masked.run_layer(index, inputs, True, True, layer_kwargs[index])
                torch.testing.assert_close(masked.final_norm(outputs), hidden[index + 1])
            torch.testing.assert_close(
                masked.run_layer(index, after_attention, False, True, layer_kwargs[index]), outputs
            )
            states.append((inputs, after_attention, outputs))
    return states


def test_block_metrics_equal_a_direct_computation_from_hidden_states(tiny: LoadedModel) -> None:
    masked = MaskedModel(tiny.model, tiny.layout, "block")
    ids = token_ids(2, 24, seed=0)
    result = static_metrics(masked, TokenBatch(ids))
    expected = np.stack([direct_metrics(x, y) for x, _, y in reference_states(tiny, masked, ids)])  # [L, 3]
    got = np.stack([result.scores(method) for method in METHODS], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert result.players == masked.player_names and result.granularity == "block" and result.tokens == 48


def test_sublayer_metrics_equal_a_direct_computation_through_run_layer(tiny: LoadedModel) -> None:
    masked = MaskedModel(tiny.model, tiny.layout, "sublayer")
    ids = token_ids(2, 24, seed=1)
    result = static_metrics(masked, [TokenBatch(ids[:1]), TokenBatch(ids[1:])])
    expected = []
    for x, middle, y in reference_states(tiny, masked, ids):
        expected += [direct_metrics(x, middle), direct_metrics(middle, y)]  # attn, then mlp of each layer
    got = np.stack([result.scores(method) for method in METHODS], axis=1)
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-6)
    assert result.players[:2] == ("layer0.attn", "layer0.mlp")


def test_padding_positions_are_left_out(tiny_llama: LoadedModel) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, "sublayer")
    long, short = token_ids(1, 20, seed=2), token_ids(1, 12, seed=3)
    separate = static_metrics(masked, [TokenBatch(long), TokenBatch(short)])
    for pad_id in (0, 77):
        padded = torch.cat([long, torch.cat([short, torch.full((1, 8), pad_id)], dim=1)])
        attention_mask = (torch.arange(20) < torch.tensor([[20], [12]])).long()
        together = static_metrics(masked, TokenBatch(padded, attention_mask))
        assert together.tokens == separate.tokens == 32
        for method in METHODS:
            np.testing.assert_allclose(together.scores(method), separate.scores(method), rtol=1e-5, atol=1e-6)


def test_bfloat16_model_is_measured_in_float32() -> None:
    ids = TokenBatch(token_ids(2, 16, seed=4))
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        loaded = tiny_model("llama", num_layers=4, seed=0, dtype=dtype)
        results.append(static_metrics(MaskedModel(loaded.model, loaded.layout, "block"), ids))
    for method in METHODS:
        assert results[1].scores(method).dtype == np.float64
        np.testing.assert_allclose(results[1].scores(method), results[0].scores(method), rtol=0.05)


def test_token_metrics_on_known_vectors_and_near_parallel_states() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [2.0, 0.0]])
    expected = torch.tensor([[1.0, 0.5, math.sqrt(2)], [2.0, 1.0, 2.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(token_metrics(x, y), expected)
    # A 1e-4 rad turn: arccos of a float32 cosine rounds it to 0 or 3.5e-4; the half-angle form keeps it.
    angle = 1e-4
    turned = torch.tensor([[math.cos(angle), math.sin(angle)]])
    block_influence, angular, _ = token_metrics(x[:1], turned)[0].tolist()
    assert angular == pytest.approx(angle / math.pi, rel=1e-4)
    assert block_influence == pytest.approx(1 - math.cos(angle), rel=1e-4)


def test_rankings_carry_each_metric_and_refuse_a_masked_model(tiny_llama: LoadedModel) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, "block")
    result = static_metrics(masked, TokenBatch(token_ids(1, 8, seed=5)))
    rankings = result.rankings(tiny_llama.fingerprint)
    assert [r.method for r in rankings] == list(METHODS)
    assert rankings[0].players == masked.player_names and rankings[0].task is None
    assert rankings[0].value_fingerprint is None and rankings[0].metadata["tokens"] == 8
    with pytest.raises(ConfigError, match="unknown static metric"):
        result.scores("cosine")
    mask = masked.full_mask()
    mask[2] = False
    with masked.active(mask), pytest.raises(ConfigError, match="full model"):
        static_metrics(masked, TokenBatch(token_ids(1, 8, seed=5)))


@pytest.mark.parametrize("architecture", ["qwen3", "phi3", "gemma2", "gemma3_text", "olmo2", "granite"])
def test_sublayer_metrics_follow_each_layouts_branches(architecture: str) -> None:
    """Norms after a sublayer (Gemma, OLMo-2) and residual multipliers (Granite) are part of its update."""
    loaded = tiny_model(architecture, num_layers=3, seed=2)
    masked = MaskedModel(loaded.model, loaded.layout, "sublayer")
    ids = token_ids(2, 20, seed=5)
    result = static_metrics(masked, TokenBatch(ids))
    expected = []
    for x, middle, y in reference_states(loaded, masked, ids):
        expected += [direct_metrics(x, middle), direct_metrics(middle, y)]
    got = np.stack([result.scores(method) for method in METHODS], axis=1)
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-4, atol=1e-5)
