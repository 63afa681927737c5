"""Savings: parameter counts and KV-cache bytes per token are exact; timing is interleaved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import Player
from shapley_svc.pruning.apply import save_pruned
from shapley_svc.pruning.savings import footprint, interleaved_median, parameter_count
from shapley_svc.pruning.select import PruningPlan

# Tiny Llama (hidden 64, MLP 128, 4 heads of 16, 2 KV heads, vocab 512, untied head), by hand:
HIDDEN, MLP, KV_WIDTH, VOCAB = 64, 128, 2 * 16, 512
ATTENTION = HIDDEN * HIDDEN * 2 + HIDDEN * KV_WIDTH * 2 + HIDDEN  # q, o, k, v + input norm
FEED_FORWARD = 3 * HIDDEN * MLP + HIDDEN  # gate, up, down + post-attention norm
LAYER = ATTENTION + FEED_FORWARD
KV_PER_ATTENTION = 2 * KV_WIDTH * 4  # K and V, fp32


def test_parameters_and_kv_bytes_are_exact(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, layout = tiny_llama.model, tiny_llama.layout
    total = 2 * VOCAB * HIDDEN + HIDDEN + 6 * LAYER  # embedding, head, final norm, 6 layers
    before = footprint(model, layout)
    assert (before.parameters, before.active_parameters) == (total, total)
    assert before.kv_bytes_per_token == before.kv_bytes_per_token_plain == 6 * KV_PER_ATTENTION

    plan = PruningPlan.from_players([Player(4, "block"), Player(5, "block"), Player(1, "attn"), Player(2, "mlp")], 6)
    after = footprint(model, layout, plan)
    assert after.parameters == total - 2 * LAYER
    assert after.active_parameters == total - 2 * LAYER - ATTENTION - FEED_FORWARD
    assert after.kv_bytes_per_token == 3 * KV_PER_ATTENTION  # layers 0, 2, 3 run attention
    assert after.kv_bytes_per_token_plain == 4 * KV_PER_ATTENTION  # the plain form still caches layer 1

    save_pruned(tiny_llama, plan, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert parameter_count(reloaded) == after.parameters
    bf16 = footprint(model.to(torch.bfloat16), layout, plan)
    model.to(torch.float32)
    assert bf16.kv_bytes_per_token == after.kv_bytes_per_token // 2


def test_interleaved_median_times_each_variant() -> None:
    order: list[str] = []
    times = interleaved_median({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4 and set(times) == {"a", "b"}
    with pytest.raises(ConfigError, match="repeats"):
        interleaved_median({"a": lambda: None}, repeats=0)


def test_a_removed_sublayer_frees_its_whole_branch_norms_after_it_included() -> None:
    """Gemma 2 norms before and after each sublayer: both norms of a removed branch count as inactive."""
    loaded = tiny_model("gemma2", num_layers=2)
    plan = PruningPlan.from_players([Player(0, "attn"), Player(1, "mlp")], 2)
    before, after = footprint(loaded.model, loaded.layout), footprint(loaded.model, loaded.layout, plan)
    attention_branch = HIDDEN * HIDDEN * 2 + HIDDEN * KV_WIDTH * 2 + 2 * HIDDEN  # q, o, k, v + two norms
    mlp_branch = 3 * HIDDEN * MLP + 2 * HIDDEN  # gate, up, down + two norms
    assert before.active_parameters - after.active_parameters == attention_branch + mlp_branch
