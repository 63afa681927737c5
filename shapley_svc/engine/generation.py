"""Greedy generation for many prompts on one model, batched, with the KV cache, under whatever mask is active.

The prompts are sorted longest first (as lm-eval's HF backend orders them) and run ``batch_size`` at a time,
left-padded, with position ids counted over the real tokens (as transformers' ``generate`` does). Each step
appends the argmax of the last position's logits to every row still running. A row ends at the first of:

- an end-of-sequence token (the tokenizer's, or any the model's generation config names);
- a stop sequence appearing in the text of its last few new tokens (the stop's own length in tokens plus
  two, as lm-eval's ``MultiTokenEOSCriteria`` looks);
- ``max_new_tokens`` new tokens.

A row that ends leaves the batch and its rows of the cache are dropped, so the batch only shrinks. With
``use_cache=False`` every step reads the whole sequence again: the same tokens, for checking the cache.

Decoding follows lm-eval: the new tokens are decoded without special tokens and the text is cut before the
first occurrence of any stop sequence (:func:`generated_text`). Skipped players are not this module's
business: run it inside :meth:`~shapley_svc.model.masked.MaskedModel.active`, whose attention slots keep the
cache dense for the layers that run.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from shapley_svc.errors import ConfigError, at_least


@dataclass(frozen=True)
class StopRule:
    """When a generation ends: a stop sequence in its text, or ``max_new_tokens`` tokens (EOS always ends it)."""

    stop: tuple[str, ...] = ()
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        at_least(self.max_new_tokens, 1, "max_new_tokens")
        if any(not isinstance(sequence, str) for sequence in self.stop):
            raise ConfigError(f"stop sequences must be strings, got {list(self.stop)}")


@dataclass
class GenerationCost:
    """Work done generating: prompts, prompt and new tokens, model forwards (one per step and batch), seconds."""

    prompts: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    forwards: int = 0
    seconds: float = 0.0

    def __add__(self, other: GenerationCost) -> GenerationCost:
        return GenerationCost(
            self.prompts + other.prompts,
            self.prompt_tokens + other.prompt_tokens,
            self.new_tokens + other.new_tokens,
            self.forwards + other.forwards,
            self.seconds + other.seconds,
        )

    def as_dict(self) -> dict[str, float]:
        """The counts by name (for logs and reports)."""
        return asdict(self)


@dataclass(frozen=True)
class Generation:
    """The new tokens of each prompt (in the order given; a stopping EOS included) and what they cost."""

    tokens: list[list[int]]
    cost: GenerationCost = field(default_factory=GenerationCost)


def generated_text(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[int], stop: Sequence[str]) -> str:
    """The text of ``tokens`` without special tokens, cut before the first stop sequence (lm-eval's post-processing)."""
    text = tokenizer.decode(list(tokens), skip_special_tokens=True)
    for sequence in stop:
        if sequence:
            text = text.split(sequence)[0]
    return text


def stop_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The end-of-sequence ids: the tokenizer's and those of the model's generation config."""
    ids = {tokenizer.eos_token_id}
    config_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_ids if isinstance(config_ids, list | tuple) else [config_ids])
    return frozenset(int(token) for token in ids if token is not None)


def left_truncated(prompt: Sequence[int], max_length: int | None, max_new_tokens: int) -> list[int]:
    """``prompt`` keeping its last ``max_length - max_new_tokens`` tokens (room to generate, as lm-eval leaves)."""
    if max_length is None:
        return list(prompt)
    room = max_length - max_new_tokens
    if room < 1:
        raise ConfigError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in max_length {max_length}: "
            "lower max_new_tokens or raise max_length"
        )
    return list(prompt)[-room:]


def checked_prompts(
    prompts: Sequence[Sequence[int]], rule: StopRule, batch_size: int, max_length: int | None
) -> list[list[int]]:
    """``prompts`` left-truncated to leave room for ``rule``'s new tokens; empty prompts are a ConfigError."""
    at_least(batch_size, 1, "batch_size")
    if any(len(prompt) == 0 for prompt in prompts):
        raise ConfigError("every prompt needs at least one token (give a BOS token for an empty prompt)")
    return [left_truncated(prompt, max_length, rule.max_new_tokens) for prompt in prompts]


def prompt_batches(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """The prompt indices of each batch: longest prompts first (as lm-eval orders them), ``batch_size`` a batch."""
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    return [order[begin : begin + batch_size] for begin in range(0, len(order), batch_size)]


@torch.inference_mode()
def generate_greedy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    rule: StopRule,
    *,
    batch_size: int = 16,
    use_cache: bool = True,
    max_length: int | None = None,
) -> Generation:
    """Greedy continuations of ``prompts`` (token ids) under ``rule``; see the module docstring.

    Example: ``generate_greedy(model, tokenizer, [ids], StopRule(("\\n",), 32)).tokens[0]``.
    """
    prompts = checked_prompts(prompts, rule, batch_size, max_length)
    stepper = BatchStepper(model, tokenizer, rule, use_cache)
    tokens: list[list[int]] = [[] for _ in prompts]
    started = time.perf_counter()
    for chunk in prompt_batches(prompts, batch_size):
        for index, new_tokens in zip(chunk, stepper.run([prompts[i] for i in chunk]), strict=True):
            tokens[index] = new_tokens
    stepper.cost.prompts = len(prompts)
    stepper.cost.prompt_tokens = sum(len(prompt) for prompt in prompts)
    stepper.cost.seconds = time.perf_counter() - started
    return Generation(tokens, stepper.cost)


class BatchStepper:
    """Runs one left-padded batch to the end, step by step, counting forwards and new tokens."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, rule: StopRule, use_cache: bool):
        self.model = model
        self.tokenizer = tokenizer
        self.rule = rule
        self.use_cache = use_cache
        self.eos_ids = stop_token_ids(model, tokenizer)
        self.pad_id = next((int(t) for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        lengths = [len(tokenizer.encode(sequence, add_special_tokens=False)) for sequence in rule.stop]
        self.lookback = max(lengths, default=0) + 2
        parameters = inspect.signature(model.forward).parameters
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        self.cache_name = "cache" if "cache" in parameters else "past_key_values"  # transformers 5.2x, 4.x
        self.cost = GenerationCost()

    def run(self, prompts: list[list[int]]) -> list[list[int]]:
        """The new tokens of each prompt of one batch."""
        sequence, attention = self.left_padded(prompts)
        logits, cache = self._forward(sequence, sequence, attention, None)
        return self.decode(sequence, attention, logits, cache)

    def left_padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [rows, width] of one batch, left-padded to its longest prompt."""
        device = next(self.model.parameters()).device
        width = max(len(prompt) for prompt in prompts)
        sequence = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=device)
        attention = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            sequence[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt) :] = 1
        return sequence, attention

    def decode(
        self, sequence: torch.Tensor, attention: torch.Tensor, logits: torch.Tensor, cache: object
    ) -> list[list[int]]:
        """The new tokens of each row, from the prompts' last-position ``logits`` [rows, V] and their cache on."""
        new_tokens: list[list[int]] = [[] for _ in range(len(sequence))]
        running = list(range(len(sequence)))  # the prompt index of each row still in the batch
        while True:
            chosen = logits.float().argmax(dim=-1)  # [rows]
            self.cost.forwards += 1
            self.cost.new_tokens += len(running)
            for row, token in enumerate(chosen.tolist()):
                new_tokens[running[row]].append(token)
            keep = [row for row, index in enumerate(running) if not self._finished(new_tokens[index])]
            if not keep:
                return new_tokens
            sequence = torch.cat([sequence, chosen[:, None]], dim=1)
            attention = torch.cat([attention, torch.ones_like(chosen)[:, None]], dim=1)
            step_ids = chosen[:, None]
            if len(keep) < len(running):
                rows = torch.tensor(keep, dtype=torch.long, device=sequence.device)
                sequence, attention, step_ids = sequence[rows], attention[rows], step_ids[rows]
                cache = _select_rows(cache, rows)
                running = [running[row] for row in keep]
            logits, cache = self._forward(step_ids, sequence, attention, cache)

    def _forward(
        self, step_ids: torch.Tensor, sequence: torch.Tensor, attention: torch.Tensor, cache: object
    ) -> tuple[torch.Tensor, object]:
        """Last-position logits [rows, V] of one step, and the cache to pass to the next."""
        positions = attention.cumsum(dim=-1) - 1
        positions.masked_fill_(attention == 0, 1)
        if not self.use_cache:
            output = self.model(
                input_ids=sequence, attention_mask=attention, position_ids=positions, use_cache=False, **self.extra
            )
            return output.logits[:, -1], None
        output = self.model(
            input_ids=step_ids,
            attention_mask=attention,
            position_ids=positions[:, -step_ids.shape[1] :],
            use_cache=True,
            **{self.cache_name: cache},
            **self.extra,
        )
        return output.logits[:, -1], getattr(output, self.cache_name, None)

    def _finished(self, tokens: list[int]) -> bool:
        if tokens[-1] in self.eos_ids or len(tokens) >= self.rule.max_new_tokens:
            return True
        if not self.rule.stop:
            return False
        tail = self.tokenizer.decode(tokens[-self.lookback :], skip_special_tokens=False)
        return any(sequence and sequence in tail for sequence in self.rule.stop)


def _select_rows(cache: object, rows: torch.Tensor) -> object:
    """The cache keeping only ``rows`` (None stays None: no cache, or no attention ran yet)."""
    if cache is None:
        return None
    select = getattr(cache, "batch_select_indices", None)
    if select is None:
        raise ConfigError(
            f"the model's cache {type(cache).__name__} cannot drop finished rows; generate with batch_size=1"
        )
    select(rows)
    return cache
