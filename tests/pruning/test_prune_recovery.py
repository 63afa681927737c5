"""Recovery: closed-form emulators are exact on linear updates and never worsen the calibration loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from shapley_svc.engine import TokenBatch
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import Player
from shapley_svc.pruning.apply import load_skipping, prune_model, save_pruned
from shapley_svc.pruning.recovery import (
    RECOVERY_FILE,
    Emulator,
    _Moments,
    _solve,
    attached,
    calibrate_scales,
    evaluate_value,
    fit,
    load_adapters,
)
from shapley_svc.pruning.select import PruningPlan
from shapley_svc.values.lm_loss import LanguageModelingLoss


def test_reduced_rank_ridge_recovers_a_low_rank_affine_update() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 12, generator=generator, dtype=torch.float64)
    true_map = torch.randn(12, 2, generator=generator, dtype=torch.float64) @ torch.randn(
        2, 12, generator=generator, dtype=torch.float64
    )
    bias = torch.randn(12, generator=generator, dtype=torch.float64)
    moments = _Moments()
    moments.add(x, x @ true_map + bias, second_order=True)
    emulator = _solve(moments, "lowrank", rank=2, ridge=1e-9)
    torch.testing.assert_close(emulator(x.float()).double(), x @ true_map + bias, rtol=1e-3, atol=1e-3)
    mean_only = _solve(moments, "bias", rank=0, ridge=1e-9)
    torch.testing.assert_close(mean_only.bias.double(), (x @ true_map + bias).mean(0).float().double())


@pytest.mark.parametrize("kind", ["bias", "lowrank"])
def test_recovery_never_worsens_calibration_loss_and_reloads(
    tiny_llama: LoadedModel, tmp_path: Path, kind: str
) -> None:
    model, layout = tiny_llama.model, tiny_llama.layout
    plan = PruningPlan.from_players([Player(0, "block"), Player(2, "attn"), Player(3, "mlp"), Player(5, "block")], 6)
    calibration = LanguageModelingLoss(window=32, windows=4, first_window=4)
    batches = calibration.prepare(tiny_llama.tokenizer)

    def loss(candidate: torch.nn.Module) -> float:
        return -float(evaluate_value(candidate, layout, calibration, batches)[0])

    pruned = prune_model(model, layout, plan)
    adapters = fit(model, layout, plan, batches, kind=kind, rank=4)
    result = calibrate_scales(pruned, layout, adapters, loss)
    assert result.loss_with <= result.loss_without == loss(pruned)
    with attached(pruned, layout, adapters):
        assert loss(pruned) == result.loss_with

    save_pruned(tiny_llama, plan, tmp_path / "pruned", pruned=pruned)
    adapters.save(tmp_path / "pruned" / RECOVERY_FILE)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    loaded_adapters = load_adapters(tmp_path / "pruned")
    assert loaded_adapters.plan == plan and set(loaded_adapters.emulators) == set(adapters.emulators)
    with attached(reloaded, layout, loaded_adapters):
        assert loss(reloaded) == pytest.approx(result.loss_with, abs=1e-6)
    assert loss(reloaded) == pytest.approx(result.loss_without, abs=1e-6)
    skipping = load_skipping(tmp_path / "pruned")
    with skipping.skipping() as skip_form, attached(skip_form, layout, loaded_adapters):
        assert loss(skip_form) == pytest.approx(result.loss_with, abs=1e-5)


def test_a_harmful_emulator_is_dropped(tiny_llama: LoadedModel) -> None:
    model, layout = tiny_llama.model, tiny_llama.layout
    plan = PruningPlan.from_players([Player(3, "block")], 6)
    calibration = LanguageModelingLoss(window=32, windows=2, first_window=4)
    batches = calibration.prepare(tiny_llama.tokenizer)
    adapters = fit(model, layout, plan, batches, kind="bias")
    adapters.emulators["layer3.block"] = Emulator(torch.full((64,), 50.0), torch.zeros(64, 0), torch.zeros(0, 64))
    pruned = prune_model(model, layout, plan)
    result = calibrate_scales(
        pruned, layout, adapters, lambda m: -float(evaluate_value(m, layout, calibration, batches)[0])
    )
    assert result.loss_with == result.loss_without and adapters.emulators == {}


@pytest.mark.parametrize("architecture", ["llama", "gemma2", "olmo2", "granite"])
def test_bias_fitted_on_one_token_restores_it_exactly(architecture: str) -> None:
    """On a single token the mean update is the update: each emulator must add back what its branch added
    (norms after the sublayer and residual multipliers included), so the pruned model's logits come back."""
    loaded = tiny_model(architecture, num_layers=4, seed=3)
    model, layout = loaded.model, loaded.layout
    token = TokenBatch(torch.tensor([[17]]))
    plan = PruningPlan.from_players([Player(0, "block"), Player(1, "attn"), Player(2, "mlp")], 4)
    adapters = fit(model, layout, plan, [token], kind="bias")
    pruned = prune_model(model, layout, plan)
    with torch.inference_mode():
        original = model(token.input_ids).logits
        with attached(pruned, layout, adapters):
            torch.testing.assert_close(pruned(token.input_ids).logits, original, rtol=0, atol=1e-5)
        assert not torch.allclose(pruned(token.input_ids).logits, original, atol=1e-3)
