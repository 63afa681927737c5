"""Greedy generation under a mask: the KV cache changes nothing, batching changes nothing, and a masked model
writes what plain transformers writes on a checkpoint with those blocks removed; stops, caps and costs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from shapley_svc.engine.generation import StopRule, generate_greedy, generated_text, left_truncated
from shapley_svc.engine.shared_generation import generate_greedy_coalitions
from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.players import Player
from shapley_svc.pruning.apply import save_pruned
from shapley_svc.pruning.select import PruningPlan

TEXTS = ("The cat sat on the mat and", "A", "Once upon a time there was a small village near the river where")


def prompts(loaded: LoadedModel) -> list[list[int]]:
    return [loaded.tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]


def transformers_generate(model: torch.nn.Module, prompt: list[int], new_tokens: int, pad_id: int) -> list[int]:
    """Plain ``generate`` (greedy, KV cache) on one prompt: its new tokens."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    return out[0, len(prompt) :].tolist()


MASKS = {
    "full": [1, 1, 1, 1, 1, 1, 1, 1],
    "every_attention_off": [0, 1, 0, 1, 0, 1, 0, 1],
    "empty": [0, 0, 0, 0, 0, 0, 0, 0],
    "one_attention": [0, 0, 1, 0, 0, 0, 0, 1],
    "mixed": [1, 1, 0, 1, 1, 0, 0, 1],
}


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_cache_and_batching_change_nothing_and_match_transformers_generate(tiny: LoadedModel, mask_name: str) -> None:
    masked = MaskedModel(tiny.model, tiny.layout, "sublayer")
    mask = np.array(MASKS[mask_name], dtype=bool)
    rule = StopRule((), 10)
    ids = prompts(tiny)
    with masked.active(mask):
        expected = [transformers_generate(tiny.model, prompt, 10, tiny.tokenizer.pad_token_id) for prompt in ids]
        batched = generate_greedy(tiny.model, tiny.tokenizer, ids, rule, batch_size=3)
        uncached = generate_greedy(tiny.model, tiny.tokenizer, ids, rule, batch_size=3, use_cache=False)
        one_by_one = generate_greedy(tiny.model, tiny.tokenizer, ids, rule, batch_size=1)
    assert batched.tokens == expected
    assert uncached.tokens == expected
    assert one_by_one.tokens == expected
    # One forward per step and batch: the batch runs as long as its longest row, one by one each row's length.
    assert batched.cost.forwards == max(len(tokens) for tokens in expected)
    assert one_by_one.cost.forwards == one_by_one.cost.new_tokens == sum(len(tokens) for tokens in expected)


def test_shared_prefill_writes_what_each_mask_writes_alone(tiny: LoadedModel) -> None:
    """Masks sharing leading layers in several orders and depths (and repeated, and empty): same tokens, same counts."""
    masked = MaskedModel(tiny.model, tiny.layout, "sublayer")
    coalitions = np.array([*MASKS.values(), MASKS["mixed"], [1, 1, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 1, 1]], bool)
    ids = [*prompts(tiny), prompts(tiny)[0][:3]]
    rule = StopRule((), 9)
    shared = generate_greedy_coalitions(masked, tiny.tokenizer, ids, rule, coalitions, batch_size=3)
    for coalition, generation in zip(coalitions, shared, strict=True):
        with masked.active(coalition):
            alone = generate_greedy(tiny.model, tiny.tokenizer, ids, rule, batch_size=3)
        assert generation.tokens == alone.tokens, coalition.astype(int).tolist()
        assert generation.cost.forwards == alone.cost.forwards
        assert generation.cost.new_tokens == alone.cost.new_tokens
        assert generation.cost.prompt_tokens == alone.cost.prompt_tokens


def test_shared_prefill_keeps_stops_and_block_masks(tiny_llama: LoadedModel) -> None:
    masked = MaskedModel(tiny_llama.model, tiny_llama.layout, "block")
    coalitions = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1], [1, 0, 1, 1, 0, 1], [1, 1, 1, 0, 1, 0]], bool)
    ids = prompts(tiny_llama)
    free = generate_greedy(tiny_llama.model, tiny_llama.tokenizer, ids, StopRule((), 12))
    rule = StopRule((tiny_llama.tokenizer.decode(free.tokens[0][4:5]),), 12)
    shared = generate_greedy_coalitions(masked, tiny_llama.tokenizer, ids, rule, coalitions, batch_size=2)
    for coalition, generation in zip(coalitions, shared, strict=True):
        with masked.active(coalition):
            assert (
                generation.tokens
                == generate_greedy(tiny_llama.model, tiny_llama.tokenizer, ids, rule, batch_size=2).tokens
            )
    assert len(shared[0].tokens[0]) <= 5


def test_masked_generation_equals_plain_transformers_on_the_pruned_checkpoint(tmp_path: Path) -> None:
    loaded = tiny_model("llama", num_layers=4, seed=3)
    plan = PruningPlan.from_players([Player(1, "block"), Player(3, "block")], 4)
    save_pruned(loaded, plan, tmp_path / "pruned")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    masked = MaskedModel(loaded.model, loaded.layout, "block")
    ids = prompts(loaded)
    rule = StopRule((), 12)
    with masked.active(np.array([True, False, True, False])):
        ours = generate_greedy(loaded.model, loaded.tokenizer, ids, rule, batch_size=2)
        ours_uncached = generate_greedy(loaded.model, loaded.tokenizer, ids, rule, batch_size=3, use_cache=False)
    reference = [transformers_generate(plain, prompt, 12, loaded.tokenizer.pad_token_id) for prompt in ids]
    assert ours.tokens == reference
    assert ours_uncached.tokens == reference
    full = generate_greedy(loaded.model, loaded.tokenizer, ids, rule)
    assert full.tokens != ours.tokens, "removing two of four blocks should change what the model writes"


def test_a_stop_sequence_ends_a_row_and_is_cut_from_its_text(tiny_llama: LoadedModel) -> None:
    tokenizer = tiny_llama.tokenizer
    ids = prompts(tiny_llama)
    free = generate_greedy(tiny_llama.model, tokenizer, ids, StopRule((), 16))
    # A stop sequence first written by the sixth token of some row or later: a token's text not seen before it.
    row, stop = next(
        (row, piece)
        for row, tokens in enumerate(free.tokens)
        for k in range(5, len(tokens))
        if (piece := tokenizer.decode(tokens[k : k + 1])).strip() and piece not in tokenizer.decode(tokens[:k])
    )
    stopped = generate_greedy(tiny_llama.model, tokenizer, ids, StopRule((stop,), 16))
    tokens = stopped.tokens[row]
    assert 5 < len(tokens) < 16 and tokens == free.tokens[row][: len(tokens)]
    assert stop in tokenizer.decode(tokens) and stop not in tokenizer.decode(tokens[:-1])
    assert generated_text(tokenizer, tokens, (stop,)) == tokenizer.decode(free.tokens[row]).split(stop)[0]
    assert stopped.cost.new_tokens == sum(len(tokens) for tokens in stopped.tokens) < free.cost.new_tokens
    assert stopped.cost.prompts == 3 and stopped.cost.prompt_tokens == sum(len(prompt) for prompt in ids)


def test_an_end_of_sequence_token_ends_a_row(tiny_llama: LoadedModel) -> None:
    ids = prompts(tiny_llama)[:1]
    free = generate_greedy(tiny_llama.model, tiny_llama.tokenizer, ids, StopRule((), 12)).tokens[0]
    config = tiny_llama.model.generation_config
    original = config.eos_token_id
    config.eos_token_id = [original, free[5]]
    try:
        ended = generate_greedy(tiny_llama.model, tiny_llama.tokenizer, ids, StopRule((), 12)).tokens[0]
    finally:
        config.eos_token_id = original
    assert ended == free[: free.index(free[5]) + 1]


def test_prompts_are_left_truncated_to_leave_room_for_the_new_tokens(tiny_llama: LoadedModel) -> None:
    assert left_truncated(list(range(10)), 8, 3) == [5, 6, 7, 8, 9]
    assert left_truncated(list(range(10)), None, 3) == list(range(10))
    with pytest.raises(ConfigError, match="leaves no room"):
        left_truncated([1, 2], 4, 4)
    long_prompt = prompts(tiny_llama)[2] * 3
    rule = StopRule((), 4)
    cut = generate_greedy(tiny_llama.model, tiny_llama.tokenizer, [long_prompt], rule, max_length=20)
    same = generate_greedy(tiny_llama.model, tiny_llama.tokenizer, [long_prompt[-16:]], rule)
    assert cut.tokens == same.tokens and cut.cost.prompt_tokens == 16


def test_bad_settings_are_config_errors(tiny_llama: LoadedModel) -> None:
    with pytest.raises(ConfigError, match="max_new_tokens"):
        StopRule((), 0)
    with pytest.raises(ConfigError, match="at least one token"):
        generate_greedy(tiny_llama.model, tiny_llama.tokenizer, [[]], StopRule((), 2))
    with pytest.raises(ConfigError, match="batch_size"):
        generate_greedy(tiny_llama.model, tiny_llama.tokenizer, [[1]], StopRule((), 2), batch_size=0)
