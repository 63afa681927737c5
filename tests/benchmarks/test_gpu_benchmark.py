"""benchmarks/gpu.py in its CPU mode on the tiny config, and its FLOP count against the model's own weights."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SUMMARY_KEYS = {
    "engine_masks_per_s",
    "alone_masks_per_s",
    "engine_over_alone",
    "flop_bound_masks_per_s",
    "alone_over_flop_bound",
    "engine_over_flop_bound",
    "engine_achieved_over_peak",
    "peak_tflops",
    "engine_peak_memory_bytes",
    "alone_peak_memory_bytes",
    "values_max_abs_diff",
    "values_bitwise_equal",
}


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The benchmark script as a module (it imports its sibling ``engine.py`` as the scripts do)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu

    return gpu


def test_cpu_mode_prints_the_summary_and_the_engine_equals_one_mask_at_a_time(
    gpu: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--device", "cpu", "--preset", "tiny", "--batch", "2", "--seq", "16", "--walks", "1", "--repeats", "1"]
    results = gpu.main([*argv, "--threads", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == results
    assert results.keys() >= SUMMARY_KEYS
    assert results["masks"] == 4  # one permutation walk over the tiny model's 4 blocks
    assert results["values_bitwise_equal"] and results["values_max_abs_diff"] == 0.0
    assert results["alone_layer_forwards"] == 1 + 2 + 3 + 4
    assert results["engine_layer_forwards"] < results["alone_layer_forwards"]
    assert 0 < results["engine_flop_ratio"] < 1
    assert results["engine_peak_memory_bytes"] is None  # CPU: torch tracks no peak


def test_a_token_costs_twice_the_matmul_weights_it_passes(gpu: ModuleType) -> None:
    config = LlamaConfig(**gpu.PRESETS["tiny"])
    model = gpu.build_model(config, torch.float32, torch.device("cpu"), seed=0)
    layer = model.model.layers[0]
    attention_weights = sum(module.weight.numel() for module in layer.self_attn.modules() if hasattr(module, "weight"))
    mlp_weights = sum(module.weight.numel() for module in layer.mlp.modules() if hasattr(module, "weight"))
    one_token = gpu.sublayer_flops(config, batch=1, seq=1)
    head_dim = config.hidden_size // config.num_attention_heads
    assert one_token.attention == 2 * attention_weights + 4 * config.num_attention_heads * head_dim  # + q.k and a.v
    assert one_token.mlp == 2 * mlp_weights
    assert gpu.sublayer_flops(config, batch=1, seq=2).head == 2 * model.lm_head.weight.numel()


def test_the_engine_count_shares_prefixes_and_one_at_a_time_does_not(gpu: ModuleType) -> None:
    flops = gpu.SublayerFlops(attention=1.0, mlp=10.0, head=100.0)
    plans = np.array(
        [
            [[1, 1], [1, 1], [0, 0]],  # layers 0 and 1
            [[1, 1], [1, 1], [1, 0]],  # shares layers 0-1, then layer 2's attention
            [[0, 0], [1, 1], [0, 0]],  # layer 1 alone: sorts first, shares nothing
        ],
        dtype=bool,
    )
    assert gpu.alone_flops(plans, flops) == 2 * 11 + (2 * 11 + 1) + 11 + 3 * 100
    assert gpu.engine_flops(plans, flops) == (11 + (2 * 11) + 1 + 3 * 100, 1 + 2 + 1)
