"""The batched engine equals per-mask evaluation and runs fewer decoder-layer forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shapley_svc.engine import BatchedEngine, TokenBatch
from shapley_svc.engine.batched import count_present, lexicographic_order, shared_layer_prefix
from shapley_svc.model.loading import LoadedModel
from shapley_svc.model.masked import MaskedModel


class LayerForwardCounter:
    """Counts calls of the transformers decoder layers and sublayers through forward hooks."""

    def __init__(self, masked: MaskedModel):
        self.calls = 0
        modules = [m for layer in masked.layers for m in (layer.self_attn, layer.mlp)]
        self.handles = [module.register_forward_hook(self.count) for module in modules]

    def count(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def permutation_walk_masks(n_players: int, walks: int, seed: int) -> np.ndarray:
    """The coalitions visited by random permutation walks: after each player is added."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(walks):
        mask = np.zeros(n_players, dtype=bool)
        for player in rng.permutation(n_players):
            mask[player] = True
            masks.append(mask.copy())
    return np.array(masks)


@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_engine_equals_each_mask_alone(tiny_llama: LoadedModel, granularity: str) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, granularity)
    rng = np.random.default_rng(0)
    masks = rng.random((48, masked.n_players)) < 0.6
    masks[0] = True
    masks[1] = False
    ids = torch.randint(0, 512, (3, 24), generator=torch.Generator().manual_seed(1))
    engine = BatchedEngine(masked)
    batched = engine.evaluate(masks, TokenBatch(ids), readout=masked.head)
    with torch.inference_mode():
        for mask, logits in zip(masks, batched, strict=True):
            with masked.active(mask):
                alone = tiny_llama.model(ids).logits
            torch.testing.assert_close(logits, alone, rtol=0, atol=1e-5)


def test_engine_honours_padding_masks(tiny_llama: LoadedModel) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, "block")
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :4] = 0  # left padding in the second row
    masks = np.array([[True] * 6, [True, False, True, True, False, True]])
    batched = BatchedEngine(masked).evaluate(masks, TokenBatch(ids, attention_mask), readout=masked.head)
    with torch.inference_mode():
        for mask, logits in zip(masks, batched, strict=True):
            with masked.active(mask):
                alone = tiny_llama.model(ids, attention_mask=attention_mask).logits
            torch.testing.assert_close(logits[1, 4:], alone[1, 4:], rtol=0, atol=1e-5)
            torch.testing.assert_close(logits[0], alone[0], rtol=0, atol=1e-5)


def test_engine_runs_fewer_layer_forwards_on_permutation_walks(tiny_llama: LoadedModel) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, "block")
    masks = permutation_walk_masks(masked.n_players, walks=8, seed=0)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))
    counter = LayerForwardCounter(masked)
    try:
        BatchedEngine(masked).evaluate(masks, TokenBatch(ids), readout=lambda hidden: None)
        engine_calls = counter.calls
        counter.calls = 0
        with torch.inference_mode():
            for mask in masks:
                with masked.active(mask):
                    tiny_llama.model.model(ids)
        alone_calls = counter.calls
    finally:
        counter.close()
    assert alone_calls == 2 * count_present(masks, masked)
    assert engine_calls < 0.75 * alone_calls


def test_results_come_back_in_the_order_given(tiny_llama: LoadedModel) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, "block")
    masks = np.array([[True] * 6, [False] * 6, [True] * 6])
    ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(4))
    out = BatchedEngine(masked).evaluate(masks, TokenBatch(ids), readout=lambda hidden: hidden.sum().item())
    assert out[0] == out[2] != out[1]


def test_masks_sort_in_layer_order_and_share_layer_prefixes() -> None:
    codes = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 1, 1]], dtype=bool)
    assert lexicographic_order(codes).tolist() == [1, 3, 2, 0]
    plan_a = np.array([[1, 1], [0, 1], [1, 1]], dtype=bool)
    plan_b = np.array([[1, 1], [0, 1], [0, 1]], dtype=bool)
    assert shared_layer_prefix(plan_a, plan_b) == 2
    assert shared_layer_prefix(plan_a, plan_a) == 3
