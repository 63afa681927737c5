"""Value functions that generate: greedy text under each coalition, batched, with the KV cache.

A generative value cannot be read from the final hidden states of a fixed token batch: each coalition
needs its own generation. Such a value function has no token batches; :class:`~shapley_svc.values.base.ModelGame`
switches each coalition on and calls ``generate(masked)``, which runs
:func:`~shapley_svc.engine.generation.generate_greedy` over every prompt and returns one statistic: the new
token ids, int64[prompts, max_new_tokens] with -1 past each generation's end. ``finalize`` decodes them as
lm-eval does (no special tokens, cut before the first stop sequence) and scores the texts.

A caller holding many coalitions at once (an estimator's request) can call ``generate_coalitions(masked,
coalitions)`` instead: the same statistics per coalition, with the prompts' prefill shared between coalitions
that agree on leading layers (:func:`~shapley_svc.engine.shared_generation.generate_greedy_coalitions`).

Each generation's cost (prompts, prompt and new tokens, forwards, seconds) is logged at INFO as
``event=generation`` and summed in ``cost``; ``last_cost`` is that of the latest coalition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from shapley_svc.engine import TokenBatch
from shapley_svc.engine.generation import GenerationCost, StopRule, generate_greedy, generated_text
from shapley_svc.engine.shared_generation import generate_greedy_coalitions
from shapley_svc.errors import ConfigError, at_least
from shapley_svc.model.masked import MaskedModel
from shapley_svc.types import Coalitions
from shapley_svc.values.base import digest, require_prepared
from shapley_svc.values.multiple_choice import encode_texts, resolve_max_length

logger = logging.getLogger(__name__)


class PromptGeneration:
    """Tokenised prompts and the stop rule of each; runs them under the active mask and decodes the results."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[Sequence[int]],
        rules: Sequence[StopRule],
        *,
        batch_size: int,
        use_cache: bool,
        max_length: int,
        label: str,
    ):
        if len(prompts) != len(rules):
            raise ConfigError(f"{len(prompts)} prompts but {len(rules)} stop rules: give one rule per prompt")
        if not prompts:
            raise ConfigError(f"{label}: no prompts to generate from")
        self.tokenizer = tokenizer
        self.prompts = [list(prompt) for prompt in prompts]
        self.rules = list(rules)
        self.batch_size = at_least(batch_size, 1, "batch_size")
        self.use_cache = use_cache
        self.max_length = max_length
        self.label = label
        self.width = max(rule.max_new_tokens for rule in self.rules)
        self.cost = GenerationCost()
        self.last_cost = GenerationCost()

    def run(self, masked: MaskedModel) -> np.ndarray:
        """int64[prompts, width]: the new tokens of each prompt under the active mask, -1 past the end."""
        tokens = np.full((len(self.prompts), self.width), -1, dtype=np.int64)
        cost = GenerationCost()
        for rule in dict.fromkeys(self.rules):  # one generation per distinct rule, in first-seen order
            members = [index for index, own in enumerate(self.rules) if own == rule]
            generation = generate_greedy(
                masked.model,
                self.tokenizer,
                [self.prompts[index] for index in members],
                rule,
                batch_size=self.batch_size,
                use_cache=self.use_cache,
                max_length=self.max_length,
            )
            for index, new_tokens in zip(members, generation.tokens, strict=True):
                tokens[index, : len(new_tokens)] = new_tokens
            cost = cost + generation.cost
        self._record(cost)
        return tokens

    def run_coalitions(
        self, masked: MaskedModel, coalitions: Coalitions, progress: Callable[[], object] | None = None
    ) -> list[np.ndarray]:
        """Per coalition (row of bool[k, n]), what :meth:`run` returns under it; the prompts' prefill is shared
        between coalitions that agree on leading layers (:mod:`shapley_svc.engine.shared_generation`).

        Without the KV cache there is nothing to share: each coalition runs alone.
        """
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        if not self.use_cache:
            return [self._run_alone(masked, coalition, progress) for coalition in coalitions]
        tokens = np.full((len(coalitions), len(self.prompts), self.width), -1, dtype=np.int64)
        costs = [GenerationCost() for _ in coalitions]
        rules = list(dict.fromkeys(self.rules))  # one generation per distinct rule, in first-seen order
        for number, rule in enumerate(rules):
            members = [index for index, own in enumerate(self.rules) if own == rule]
            generations = generate_greedy_coalitions(
                masked,
                self.tokenizer,
                [self.prompts[index] for index in members],
                rule,
                coalitions,
                batch_size=self.batch_size,
                max_length=self.max_length,
                progress=progress if number == len(rules) - 1 else None,
            )
            for coalition, generation in enumerate(generations):
                for index, new_tokens in zip(members, generation.tokens, strict=True):
                    tokens[coalition, index, : len(new_tokens)] = new_tokens
                costs[coalition] = costs[coalition] + generation.cost
        for cost in costs:
            self._record(cost)
        return list(tokens)

    def _run_alone(
        self, masked: MaskedModel, coalition: np.ndarray, progress: Callable[[], object] | None
    ) -> np.ndarray:
        with masked.active(coalition):
            tokens = self.run(masked)
        if progress is not None:
            progress()
        return tokens

    def _record(self, cost: GenerationCost) -> None:
        self.cost, self.last_cost = self.cost + cost, cost
        logger.info(
            "event=generation task=%s %s", self.label, " ".join(f"{k}={v:.3g}" for k, v in cost.as_dict().items())
        )

    def texts(self, tokens: np.ndarray) -> list[str]:
        """The text of each prompt's generation (lm-eval's decoding and stop-sequence cut)."""
        if tokens.shape != (len(self.prompts), self.width):
            raise ConfigError(
                f"generated tokens have shape {tokens.shape}, expected {(len(self.prompts), self.width)}: "
                "pass the statistics generate() returned"
            )
        return [
            generated_text(self.tokenizer, [int(t) for t in row if t >= 0], rule.stop)
            for row, rule in zip(tokens, self.rules, strict=True)
        ]


@dataclass(kw_only=True)
class GenerativeScoring:
    """Base of the value functions that score greedy generations; holds the generation settings.

    ``max_new_tokens`` (None: the task's default) caps each generation; prompts are left-truncated to leave it
    room within ``max_length`` (None: the tokenizer's limit, else 2048). ``batch_size`` prompts run together.
    """

    max_new_tokens: int | None = None
    batch_size: int = 16
    add_bos: bool = False
    max_length: int | None = None
    use_cache: bool = True

    DEFAULT_MAX_NEW_TOKENS = 256

    def __post_init__(self) -> None:
        self._generation: PromptGeneration | None = None
        self._prompt_ids: torch.Tensor | None = None

    @property
    def generated_statistics(self) -> int:
        return 1

    @property
    def new_token_cap(self) -> int:
        """The token cap in force: ``max_new_tokens``, else the task's default."""
        return self.DEFAULT_MAX_NEW_TOKENS if self.max_new_tokens is None else self.max_new_tokens

    def set_prompts(
        self, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], stop: Sequence[str], label: str
    ) -> list[TokenBatch]:
        """Tokenise ``prompts`` (BOS when ``add_bos``) with one stop rule for all; no token batches to return."""
        ids = encode_texts(tokenizer, prompts, self.add_bos)
        rule = StopRule(tuple(stop), self.new_token_cap)
        self._generation = PromptGeneration(
            tokenizer,
            ids,
            [rule] * len(ids),
            batch_size=self.batch_size,
            use_cache=self.use_cache,
            max_length=resolve_max_length(tokenizer, self.max_length),
            label=label,
        )
        self._prompt_ids = torch.tensor([token for prompt in ids for token in prompt], dtype=torch.long)
        return []

    @property
    def cost(self) -> GenerationCost:
        """Everything generated so far by this value function (all coalitions)."""
        return self._generation.cost if self._generation is not None else GenerationCost()

    @property
    def last_cost(self) -> GenerationCost:
        """The cost of the latest coalition's generation."""
        return self._generation.last_cost if self._generation is not None else GenerationCost()

    def score(self, batch_index: int, final_hidden: torch.Tensor, head: nn.Module) -> np.ndarray:
        raise ConfigError(f"{type(self).__name__} has no token batches: its values come from generate(masked)")

    def generate(self, masked: MaskedModel) -> list[np.ndarray]:
        """The new tokens of every prompt under the active mask (one statistic)."""
        return [self.prompt_generation.run(masked)]

    def generate_coalitions(
        self, masked: MaskedModel, coalitions: Coalitions, progress: Callable[[], object] | None = None
    ) -> list[list[np.ndarray]]:
        """Per coalition, what :meth:`generate` returns under it, the prompts' prefill shared between coalitions
        (the same tokens; for a caller that has all the coalitions at once, as an estimator's chunk)."""
        return [[tokens] for tokens in self.prompt_generation.run_coalitions(masked, coalitions, progress)]

    @property
    def prompt_generation(self) -> PromptGeneration:
        if self._generation is None:
            raise ConfigError("call prepare(tokenizer) before generating")
        return self._generation

    def generated_texts(self, statistics: list[np.ndarray]) -> list[str]:
        """The generated text of every prompt, from the statistics of one coalition."""
        if len(statistics) != 1:
            raise ConfigError(f"expected the one statistic generate() returns, got {len(statistics)}")
        return self.prompt_generation.texts(statistics[0])

    def generation_fingerprint(self, kind: str, version: int, **specific: object) -> str:
        """The digest of a generative task: its kind and version, split, metrics, ``specific`` (e.g. the
        references), the generation settings and the prompts' token ids."""
        settings = {"kind": kind, "version": version, "split": self.split, "metrics": self.metrics, **specific}
        return digest(settings | self.generation_settings(), self._prompt_ids)  # type: ignore[arg-type]

    def generation_settings(self) -> dict[str, object]:
        """What the generated text depends on beyond the prompts (for fingerprints)."""
        require_prepared(self._generation is not None)
        rule = self.prompt_generation.rules[0]
        return {
            "stop": list(rule.stop),
            "max_new_tokens": rule.max_new_tokens,
            "max_length": self.prompt_generation.max_length,
            "bos": self.add_bos,
        }


def with_eos_text(tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> list[str]:
    """``stop`` and the tokenizer's EOS text (special tokens kept), as lm-eval's HF backend extends ``until``."""
    eos = tokenizer.decode([tokenizer.eos_token_id]) if tokenizer.eos_token_id is not None else None
    return [*stop, *([eos] if eos and eos not in stop else [])]
