"""Greedy generation under many masks of one model, sharing the prompts' prefill between masks.

Two masks that agree on every player of layers ``0..d-1`` give the prompts the same hidden state before
layer ``d`` and the same keys and values in the KV-cache slots of those layers (slots are assigned in layer
order, :meth:`~shapley_svc.model.masked.MaskedModel.active`). As :class:`~shapley_svc.engine.batched.BatchedEngine`
does for likelihoods, the masks are sorted in layer order and walked depth first: for each prompt batch a
mask prefills only the layers from the first one where it differs from the previous mask, starting from the
stored hidden state and cache slots of that depth (the cache's layer objects are copied, their tensors
shared: the cache replaces tensors, never writes into them). Then it decodes as
:func:`~shapley_svc.engine.generation.generate_greedy` does, under its own mask. The tokens are those of
``generate_greedy`` under each mask alone: the same batches, the same layer calls with the same inputs.

Stored per batch: one hidden state [b, s, d] and one list of cache layers per depth (``L + 1``), so memory
is bounded whatever the number of masks.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase
from transformers.cache_utils import Cache

from shapley_svc.engine.backbone import temporary_hooks
from shapley_svc.engine.batched import LayerInputs, layer_input_capture, lexicographic_order, shared_layer_prefix
from shapley_svc.engine.generation import (
    BatchStepper,
    Generation,
    StopRule,
    checked_prompts,
    prompt_batches,
)
from shapley_svc.errors import ConfigError
from shapley_svc.model.masked import MaskedModel
from shapley_svc.types import Coalitions


@torch.inference_mode()
def generate_greedy_coalitions(
    masked: MaskedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    rule: StopRule,
    coalitions: Coalitions,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: Callable[[], object] | None = None,
) -> list[Generation]:
    """Per coalition (row of bool[k, n], in the order given), the greedy continuations of ``prompts``.

    Equal to ``generate_greedy(masked.model, ...)`` inside ``masked.active(coalition)`` for each coalition
    (KV cache on). A cost's ``forwards`` and ``new_tokens`` are the coalition's own; ``seconds`` is the
    whole run shared equally (the prefill is shared). ``progress`` is called once per coalition done.
    """
    coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
    plans = np.stack([masked.layer_plan(mask) for mask in coalitions])  # [k, L, 2]
    prompts = checked_prompts(prompts, rule, batch_size, max_length)
    steppers = [BatchStepper(masked.model, tokenizer, rule, use_cache=True) for _ in plans]
    tokens: list[list[list[int]]] = [[[] for _ in prompts] for _ in plans]
    order = lexicographic_order(plans.reshape(len(plans), -1))
    started = time.perf_counter()
    for chunk in prompt_batches(prompts, batch_size):
        prefill = SharedPrefill(masked, steppers[0].left_padded([prompts[i] for i in chunk]))
        for mask_index in order:
            stepper = steppers[mask_index]
            sequence, attention = prefill.inputs
            with masked.active(coalitions[mask_index]):
                logits, cache = prefill.run(plans[mask_index])
                new_tokens = stepper.decode(sequence, attention, logits, cache)
            for index, own in zip(chunk, new_tokens, strict=True):
                tokens[mask_index][index] = own
    seconds = time.perf_counter() - started
    generations = []
    for stepper, own_tokens in zip(steppers, tokens, strict=True):
        stepper.cost.prompts = len(prompts)
        stepper.cost.prompt_tokens = sum(len(prompt) for prompt in prompts)
        stepper.cost.seconds = seconds / len(plans)
        generations.append(Generation(own_tokens, stepper.cost))
        if progress is not None:
            progress()
    return generations


class SharedPrefill:
    """The prefill of one left-padded prompt batch under successive plans, reusing the deepest shared state."""

    def __init__(self, masked: MaskedModel, inputs: tuple[torch.Tensor, torch.Tensor]):
        self.masked = masked
        self.inputs = inputs
        self.embedded, self.layer_kwargs, self.cache_key, self.empty_cache = self._capture()
        self.states: list[torch.Tensor] = [self.embedded] * (masked.num_layers + 1)
        self.caches: list[list[Any]] = [list(self.empty_cache.layers)] * (masked.num_layers + 1)
        self.previous: np.ndarray | None = None

    def _capture(self) -> tuple[torch.Tensor, list[dict[str, Any]], str, Cache]:
        """The embedded batch, each layer's kwargs and the (still empty) cache the backbone makes for a prefill.

        The backbone runs once with every block skipped and the cache on, as the model's own prefill would
        call it (same positions, attention mask and cache kind), so nothing of transformers is re-implemented.
        """
        masked = self.masked
        sequence, attention = self.inputs
        captured: LayerInputs = [None] * masked.num_layers
        capture = layer_input_capture(captured)

        positions = attention.cumsum(dim=-1) - 1
        positions.masked_fill_(attention == 0, 1)
        with temporary_hooks() as handles, masked.active(np.zeros(masked.n_players, dtype=bool)):
            for index, layer in enumerate(masked.layers):
                handles.append(layer.register_forward_pre_hook(capture(index), with_kwargs=True))
            masked.backbone(input_ids=sequence, attention_mask=attention, position_ids=positions, use_cache=True)
        if any(entry is None for entry in captured):
            raise ConfigError("the backbone did not call every decoder layer; its layout does not match the model")
        kwargs = [entry[1] for entry in captured]  # type: ignore[index]
        keys = [key for key, value in kwargs[0].items() if isinstance(value, Cache)]
        if len(keys) != 1:
            raise ConfigError("the backbone passed its decoder layers no KV cache; generate per coalition instead")
        return captured[0][0], kwargs, keys[0], kwargs[0][keys[0]]  # type: ignore[index]

    def run(self, plan: np.ndarray) -> tuple[torch.Tensor, Cache]:
        """Last-position logits [b, V] and the filled cache under ``plan`` (bool[L, 2]; its mask active)."""
        masked = self.masked
        start = 0 if self.previous is None else shared_layer_prefix(self.previous, plan)
        cache = copy.copy(self.empty_cache)
        cache.layers = [copy.copy(layer) for layer in self.caches[start]]
        hidden = self.states[start]
        for layer in range(start, masked.num_layers):
            attention, mlp = plan[layer]
            if attention or mlp:
                kwargs = self.layer_kwargs[layer] | {self.cache_key: cache}
                hidden = masked.run_layer(layer, hidden, bool(attention), bool(mlp), kwargs)
            self.states[layer + 1] = hidden
            self.caches[layer + 1] = [copy.copy(entry) for entry in cache.layers] if attention else self.caches[layer]
        self.previous = plan
        return masked.head(masked.final_norm(hidden)[:, -1:])[:, -1], cache
