"""Saved pruned checkpoints load in plain transformers and match the masked model (logits and generate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import LoadedModel, layout_for, model_fingerprint, tiny_config, tiny_tokenizer
from shapley_svc.model.masked import MaskedModel, Player
from shapley_svc.pruning.apply import load_skipping, read_manifest, save_pruned, shrink_config
from shapley_svc.pruning.select import PruningPlan

TOKENS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(3))


def masked_logits(loaded: LoadedModel, plan: PruningPlan, input_ids: torch.Tensor) -> torch.Tensor:
    masked = MaskedModel(loaded.model, loaded.layout, "sublayer")
    with torch.no_grad(), masked.active(plan.present.reshape(-1)):
        return loaded.model(input_ids).logits


def greedy_without_cache(model: torch.nn.Module, input_ids: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        with torch.no_grad():
            following = model(input_ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        input_ids = torch.cat([input_ids, following], dim=1)
    return input_ids


def reload(folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_block_removed_checkpoint_matches_masked_model_and_generates(tiny: LoadedModel, tmp_path: Path) -> None:
    plan = PruningPlan.from_players([Player(1, "block"), Player(2, "block")], 4)
    save_pruned(tiny, plan, tmp_path / "pruned")
    plain = reload(tmp_path / "pruned")
    assert plain.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in plain.model.layers] == [0, 1]
    torch.testing.assert_close(plain(TOKENS).logits, masked_logits(tiny, plan, TOKENS), rtol=0, atol=1e-5)

    prompt = TOKENS[:1, :6]
    masked = MaskedModel(tiny.model, tiny.layout, "sublayer")
    with torch.no_grad(), masked.active(plan.present.reshape(-1)):
        expected = tiny.model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=2)
    generated = plain.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=2)
    assert torch.equal(generated, expected)
    assert torch.equal(generated, greedy_without_cache(plain, prompt, 8))
    assert (tmp_path / "pruned" / "tokenizer.json").is_file()


def test_sublayer_removed_checkpoint_is_identical_to_masked_model(tiny: LoadedModel, tmp_path: Path) -> None:
    plan = PruningPlan.from_players([Player(0, "mlp"), Player(2, "attn"), Player(3, "block")], 4)
    save_pruned(tiny, plan, tmp_path / "pruned")
    plain = reload(tmp_path / "pruned")
    expected = masked_logits(tiny, plan, TOKENS)
    with torch.no_grad():
        assert torch.equal(plain(TOKENS).logits, expected)
    skipping = load_skipping(tmp_path / "pruned")
    assert skipping.skip == (Player(0, "mlp"), Player(2, "attn"))
    with torch.no_grad(), skipping.skipping() as model:
        torch.testing.assert_close(model(TOKENS).logits, expected, rtol=0, atol=1e-5)
        model.generate(TOKENS[:1, :4], max_new_tokens=4, do_sample=False, pad_token_id=2)


def sliding_qwen2() -> LoadedModel:
    """A tiny Qwen2 whose layer_types differ per layer: layers 2, 3 use an 8-token sliding window."""
    settings = {k: v for k, v in tiny_config("qwen2").to_dict().items() if k not in ("model_type", "layer_types")}
    config = AutoConfig.for_model(
        "qwen2", **(settings | {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2})
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    return LoadedModel(
        model,
        tiny_tokenizer(),
        "tiny-qwen2-sliding",
        model_fingerprint(model),
        layout_for("qwen2"),
        torch.float32,
        torch.device("cpu"),
    )


def test_per_layer_config_lists_shrink_and_outputs_match(tmp_path: Path) -> None:
    loaded = sliding_qwen2()
    assert loaded.model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    plan = PruningPlan.from_players([Player(1, "block")], 4)
    save_pruned(loaded, plan, tmp_path / "pruned")
    plain = reload(tmp_path / "pruned")
    assert plain.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert plain.config.max_window_layers == 1
    torch.testing.assert_close(plain(TOKENS).logits, masked_logits(loaded, plan, TOKENS), rtol=0, atol=1e-5)
    prompt = TOKENS[:1, :6]
    generated = plain.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=2)
    assert torch.equal(generated, greedy_without_cache(plain, prompt, 12))


def test_manifest_and_refusals(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    plan = PruningPlan.from_players([Player(5, "block"), Player(1, "attn")], 6)
    save_pruned(tiny_llama, plan, tmp_path / "pruned", provenance={"ranking": "test"})
    manifest = read_manifest(tmp_path / "pruned")
    assert manifest["removed"] == ["layer1.attn", "layer5.block"]
    assert manifest["kept_layers"] == [0, 1, 2, 3, 4] and manifest["skip"] == ["layer1.attn"]
    with pytest.raises(ConfigError, match="not empty"):
        save_pruned(tiny_llama, plan, tmp_path / "pruned")
    with pytest.raises(ConfigError, match="every decoder block"):
        save_pruned(tiny_llama, PruningPlan.from_players([Player(i, "block") for i in range(6)], 6), tmp_path / "x")
    with pytest.raises(ConfigError, match="layers 0 to 5"):
        PruningPlan.from_players([Player(6, "block")], 6)
    assert np.array_equal(PruningPlan.from_players([Player(2, "attn"), Player(2, "mlp")], 6).removed_blocks, [2])


def test_only_per_layer_config_lists_shrink() -> None:
    """A list of end-of-sequence ids as long as the layer list is not per layer (Llama 3 lists three)."""
    config = tiny_config("gemma3_text", num_layers=3)
    config.eos_token_id = [1, 2, 3]
    shrink_config(config, (0, 2))
    assert config.eos_token_id == [1, 2, 3] and config.num_hidden_layers == 2
    assert config.layer_types == ["sliding_attention", "sliding_attention"]
