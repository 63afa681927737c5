"""MaskedModel: all-present is the plain model, skipping is removing, masks always restore, generate works."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from shapley_svc.errors import ConfigError
from shapley_svc.model.layouts import layout_for
from shapley_svc.model.loading import LoadedModel, tiny_config
from shapley_svc.model.masked import Granularity, MaskedModel


def token_ids(vocab: int = 512, batch: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def without_layer(loaded: LoadedModel, removed: int) -> torch.nn.Module:
    """A deep copy of the model with decoder layer ``removed`` physically deleted and indices renumbered."""
    model = copy.deepcopy(loaded.model)
    del model.model.layers[removed]
    model.config.num_hidden_layers -= 1
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types:
        model.config.layer_types = layer_types[:removed] + layer_types[removed + 1 :]
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    return model


@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_all_present_mask_gives_identical_logits(tiny: LoadedModel, granularity: str) -> None:
    masked = MaskedModel(tiny.model, tiny.layout, granularity)
    ids = token_ids()
    with torch.inference_mode():
        plain = tiny.model(ids).logits
        with masked.active(masked.full_mask()):
            under_mask = tiny.model(ids).logits
    assert torch.equal(plain, under_mask)


@pytest.mark.parametrize("removed", [0, 2, 3])
def test_skipping_both_sublayers_equals_removing_the_layer(tiny: LoadedModel, removed: int) -> None:
    masked = MaskedModel(tiny.model, tiny.layout, Granularity.SUBLAYER)
    mask = masked.full_mask()
    mask[2 * removed : 2 * removed + 2] = False
    ids = token_ids()
    with torch.inference_mode():
        with masked.active(mask):
            skipped = tiny.model(ids).logits
        removed_logits = without_layer(tiny, removed)(ids).logits
    torch.testing.assert_close(skipped, removed_logits, rtol=0, atol=1e-6)


def test_block_skip_equals_sublayer_skip_of_both_halves(tiny: LoadedModel) -> None:
    blocks = MaskedModel(tiny.model, tiny.layout, "block")
    sublayers = MaskedModel(tiny.model, tiny.layout, "sublayer")
    ids = token_ids()
    block_mask = np.array([True, False, True, False])
    with torch.inference_mode():
        with blocks.active(block_mask):
            by_block = tiny.model(ids).logits
        with sublayers.active(np.repeat(block_mask, 2)):
            by_sublayer = tiny.model(ids).logits
    assert torch.equal(by_block, by_sublayer)


def test_skipped_sublayer_runs_no_work(tiny: LoadedModel) -> None:
    masked = MaskedModel(tiny.model, tiny.layout, "sublayer")
    calls: list[str] = []
    layer = tiny.model.model.layers[1]
    handles = [
        layer.self_attn.register_forward_hook(lambda *_: calls.append("attn")),
        layer.mlp.register_forward_hook(lambda *_: calls.append("mlp")),
        layer.input_layernorm.register_forward_hook(lambda *_: calls.append("attn_norm")),
    ]
    mask = masked.full_mask()
    mask[2] = False  # attention of layer 1
    try:
        with torch.inference_mode(), masked.active(mask):
            tiny.model(token_ids())
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["mlp"]


def test_mask_restores_after_an_exception(tiny: LoadedModel) -> None:
    masked = MaskedModel(tiny.model, tiny.layout, "sublayer")
    ids = token_ids()
    with torch.inference_mode():
        before = tiny.model(ids).logits
    mask = np.zeros(masked.n_players, dtype=bool)
    with pytest.raises(RuntimeError, match="boom"), masked.active(mask):
        raise RuntimeError("boom")
    assert all("forward" not in vars(layer) for layer in masked.layers)
    assert [layer.self_attn.layer_idx for layer in masked.layers] == list(range(masked.num_layers))
    with torch.inference_mode():
        assert torch.equal(tiny.model(ids).logits, before)


@pytest.mark.parametrize("mask", [[True, False, True, True, True, True, False, True], [False] + [True] * 7])
def test_generate_with_kv_cache_matches_greedy_without_cache(tiny: LoadedModel, mask: list[bool]) -> None:
    """Generation under a mask (first attention skipped too) equals a greedy loop of full forwards."""
    masked = MaskedModel(tiny.model, tiny.layout, "sublayer")
    prompt = token_ids(batch=1, length=8, seed=3)
    with torch.inference_mode(), masked.active(mask):
        generated = tiny.model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        expected = prompt
        for _ in range(6):
            next_token = tiny.model(expected, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, next_token], dim=1)
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("bad_mask", [[True] * 3, [[True] * 4], [0, 1, 2, 1]])
def test_bad_mask_is_a_clear_error(tiny: LoadedModel, bad_mask: list) -> None:
    masked = MaskedModel(tiny.model, tiny.layout, "block")
    with pytest.raises(ConfigError, match="mask"), masked.active(bad_mask):
        pass


def test_unknown_granularity_is_a_clear_error(tiny: LoadedModel) -> None:
    with pytest.raises(ConfigError, match="block, sublayer"):
        MaskedModel(tiny.model, tiny.layout, "head")


def test_player_names_follow_layer_order(tiny: LoadedModel) -> None:
    assert MaskedModel(tiny.model, tiny.layout, "sublayer").player_names[:3] == (
        "layer0.attn",
        "layer0.mlp",
        "layer1.attn",
    )
    assert MaskedModel(tiny.model, tiny.layout, "block").player_names[-1] == "layer3.block"


def test_generate_with_mixed_sliding_and_full_attention_layers() -> None:
    """Qwen2 with sliding-window layers: a running attention keeps a KV-cache slot of its own layer type."""
    config = tiny_config("qwen2", num_layers=4)
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 4, 2
    config.layer_types = ["full_attention"] * 2 + ["sliding_attention"] * 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    masked = MaskedModel(model, layout_for(config.model_type), "sublayer")
    prompt = token_ids(batch=1, length=10, seed=4)
    for mask in ([False, True, True, True, True, True, True, True], [True, True, False, True, True, True, True, True]):
        with torch.inference_mode(), masked.active(mask):
            generated = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
            expected = prompt
            for _ in range(5):
                next_token = model(expected, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                expected = torch.cat([expected, next_token], dim=1)
        assert torch.equal(generated, expected), mask
