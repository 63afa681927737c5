"""Every layout on a tiny random model of its architecture, built from the transformers config class.

Each test checks the masked model against something done by hand on plain transformers modules: the plain
model, a layer deleted from the layer list, an output projection set to zero, a greedy loop without KV
cache, a pruned checkpoint reloaded by ``AutoModelForCausalLM``. Norm weights are randomised first, so that a
layout naming the wrong norm (Gemma's four, OLMo-2's two) cannot pass by all norms being equal.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from shapley_svc.engine import BatchedEngine, TokenBatch
from shapley_svc.model.layouts import LAYOUTS, resolve
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import LogitsHead, MaskedModel
from shapley_svc.players import Player
from shapley_svc.pruning.apply import save_pruned
from shapley_svc.pruning.select import PruningPlan

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "olmo2", "granite")
OUTPUT_PROJECTIONS = {"attn": "self_attn.o_proj", "mlp": "mlp.down_proj"}
"""Where each of these architectures keeps its output projections, read from its transformers module."""
TOKENS = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(7))
PROMPT = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(8))


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request: pytest.FixtureRequest) -> LoadedModel:
    """A tiny random model of one architecture (4 layers, fp32) with randomised norm weights."""
    loaded = tiny_model(request.param, num_layers=4, seed=2)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if "norm" in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return loaded


def logits_under(loaded: LoadedModel, mask: np.ndarray, ids: torch.Tensor = TOKENS) -> torch.Tensor:
    masked = MaskedModel(loaded.model, loaded.layout, "sublayer")
    with torch.inference_mode(), masked.active(mask):
        return loaded.model(ids).logits


def sublayer_mask(skipped: list[str], num_layers: int = 4) -> np.ndarray:
    """The sublayer mask with the players named ``layerI.attn`` / ``layerI.mlp`` / ``layerI.block`` skipped."""
    plan = PruningPlan.from_players([Player(int(n[5 : n.index(".")]), n.split(".")[1]) for n in skipped], num_layers)
    return plan.present.reshape(-1)


def test_every_architecture_is_tested() -> None:
    assert set(ARCHITECTURES) == set(LAYOUTS.names())


def test_layout_branches_cover_every_weighted_module_of_a_layer(model: LoadedModel) -> None:
    """No norm of a layer is left out of its two branches (so skipping a branch drops all of it)."""
    layout = model.layout
    for layer in resolve(model.model, layout.layers):
        weighted = {name for name, child in layer.named_children() if any(True for _ in child.parameters())}
        assert weighted == set(layout.branch("attn").paths) | set(layout.branch("mlp").paths)


@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_all_players_present_is_the_plain_model(model: LoadedModel, granularity: str) -> None:
    masked = MaskedModel(model.model, model.layout, granularity)
    with torch.inference_mode():
        plain = model.model(TOKENS).logits
        with masked.active(masked.full_mask()):
            assert torch.equal(model.model(TOKENS).logits, plain)


@pytest.mark.parametrize("removed", [0, 1, 3])
def test_skipping_a_block_equals_deleting_the_layer_by_hand(model: LoadedModel, removed: int) -> None:
    by_hand = copy.deepcopy(model.model)
    del by_hand.model.layers[removed]
    by_hand.config.num_hidden_layers -= 1
    if getattr(by_hand.config, "layer_types", None):
        del by_hand.config.layer_types[removed]
    for index, layer in enumerate(by_hand.model.layers):
        layer.self_attn.layer_idx = index
    with torch.inference_mode():
        expected = by_hand(TOKENS).logits
    masked = MaskedModel(model.model, model.layout, "block")
    mask = masked.full_mask()
    mask[removed] = False
    with torch.inference_mode(), masked.active(mask):
        torch.testing.assert_close(model.model(TOKENS).logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("player", ["layer0.attn", "layer1.mlp", "layer2.attn", "layer3.mlp"])
def test_skipping_a_sublayer_equals_zeroing_its_output_projection(model: LoadedModel, player: str) -> None:
    layer_index, kind = int(player[5]), player.split(".")[1]
    zeroed = copy.deepcopy(model.model)
    projection = resolve(zeroed.model.layers[layer_index], OUTPUT_PROJECTIONS[kind])
    assert isinstance(projection, nn.Linear)
    with torch.no_grad():
        projection.weight.zero_()
        if projection.bias is not None:
            projection.bias.zero_()
        expected = zeroed(TOKENS).logits
    torch.testing.assert_close(logits_under(model, sublayer_mask([player])), expected, rtol=0, atol=1e-6)


def test_a_skipped_sublayer_runs_nothing_of_its_branch(model: LoadedModel) -> None:
    layer = resolve(model.model, model.layout.layers)[1]
    calls: list[str] = []
    handles = [
        getattr(layer, name).register_forward_hook(lambda *_, name=name: calls.append(name))
        for name, child in layer.named_children()
        if any(True for _ in child.parameters())
    ]
    try:
        logits_under(model, sublayer_mask(["layer1.attn"]))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == list(model.layout.branch("mlp").paths)


def test_engine_and_head_give_the_model_logits(model: LoadedModel) -> None:
    """The engine's final hidden state through :attr:`MaskedModel.head` is what the model returns (scaling too)."""
    masked = MaskedModel(model.model, model.layout, "sublayer")
    masks = np.stack(
        [masked.full_mask(), sublayer_mask(["layer1.block", "layer2.mlp"]), sublayer_mask(["layer0.attn"])]
    )
    results = BatchedEngine(masked).evaluate(masks, TokenBatch(TOKENS), readout=masked.head)
    for mask, logits in zip(masks, results, strict=True):
        torch.testing.assert_close(logits, logits_under(model, mask), rtol=0, atol=1e-5)
    scaled = model.layout.logits_divisor is not None or model.layout.logits_softcap is not None
    assert isinstance(masked.head, LogitsHead) == scaled


@pytest.mark.parametrize("skipped", [["layer0.attn"], ["layer1.block", "layer2.mlp"], ["layer2.attn", "layer3.attn"]])
def test_generate_with_kv_cache_under_a_mask_equals_generation_without_it(
    model: LoadedModel, skipped: list[str]
) -> None:
    """16 tokens in all, past the tiny Gemma sliding window of 8."""
    masked = MaskedModel(model.model, model.layout, "sublayer")
    with torch.inference_mode(), masked.active(sublayer_mask(skipped)):
        generated = model.model.generate(PROMPT, max_new_tokens=6, do_sample=False, pad_token_id=2)
        expected = PROMPT
        for _ in range(6):
            following = model.model(expected, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, following], dim=1)
    assert torch.equal(generated, expected)


def test_pruned_checkpoint_reloads_in_plain_transformers_with_the_masked_logits(
    model: LoadedModel, tmp_path: Path
) -> None:
    plan = PruningPlan.from_players([Player(1, "block"), Player(0, "mlp"), Player(2, "attn")], 4)
    save_pruned(model, plan, tmp_path / "pruned")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert plain.config.num_hidden_layers == 3
    original_types = getattr(model.model.config, "layer_types", None)
    if original_types is not None:
        assert plain.config.layer_types == [original_types[i] for i in (0, 2, 3)]
    with torch.inference_mode():
        torch.testing.assert_close(
            plain(TOKENS).logits, logits_under(model, plan.present.reshape(-1)), rtol=0, atol=1e-5
        )
        generated = plain.generate(PROMPT, max_new_tokens=6, do_sample=False, pad_token_id=2)
        expected = PROMPT
        for _ in range(6):
            following = plain(expected, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, following], dim=1)
    assert torch.equal(generated, expected)
