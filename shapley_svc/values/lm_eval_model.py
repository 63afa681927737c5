"""An lm-eval ``LM`` over a masked model under a fixed mask: all three request types, for ``simple_evaluate``.

:class:`MaskedLM` is a ``TemplateLM`` (context and continuation encoded together and split, as lm-eval's HF
backend does) that answers

- ``loglikelihood``: through the project's packed path (each context once, its continuations after it;
  :func:`~shapley_svc.values.lm_eval_bridge.packed_loglikelihoods`), or one plain forward per request with
  ``packed=False``, which is lm-eval's own loop;
- ``loglikelihood_rolling``: lm-eval's disjoint rolling windows of ``max_length`` tokens after the prefix
  token (BOS, else EOS, as the HF backend picks it), scored like loglikelihood requests and summed;
- ``generate_until``: greedy generation with the KV cache (:func:`~shapley_svc.engine.generation.generate_greedy`)
  per distinct set of generation arguments, lm-eval's stop handling (its ``until`` plus the EOS text, its
  ``max_gen_toks`` default, left truncation to leave room for the new tokens) and post-processing.
  Sampling is refused: a value must be deterministic.

This module imports lm-eval at import time; :func:`~shapley_svc.values.lm_eval_bridge.masked_lm` imports it
only when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from transformers import PreTrainedTokenizerBase

from shapley_svc.engine.generation import StopRule
from shapley_svc.errors import ConfigError
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.generative import PromptGeneration
from shapley_svc.values.lm_eval_bridge import packed_loglikelihoods, plain_loglikelihoods, prefix_token_id
from shapley_svc.values.multiple_choice import encode_texts, resolve_max_length

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF backend default


def stop_rule(gen_kwargs: dict[str, Any], eos_text: str | None, max_gen_toks: int) -> StopRule:
    """The stop rule of one request's generation arguments, as lm-eval's HF backend reads them (greedy only)."""
    kwargs = normalize_gen_kwargs(dict(gen_kwargs), max_gen_toks)
    if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
        raise ConfigError(
            f"generation arguments {gen_kwargs} ask for sampling; only greedy generation (do_sample: false, "
            "temperature: 0) gives a deterministic value"
        )
    until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
    return StopRule(tuple(until), int(kwargs["max_gen_toks"]))


def rolling_windows(tokens: list[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows (context, continuation) of ``tokens`` after ``prefix``."""
    return [
        make_disjoint_window(window)
        for window in get_rolling_token_windows(
            token_list=tokens, prefix_token=prefix, max_seq_len=max_length, context_len=1
        )
    ]


class MaskedLM(TemplateLM):
    """lm-eval model over ``masked`` with only the players of ``mask`` present (see the module docstring)."""

    def __init__(
        self,
        masked: MaskedModel,
        tokenizer: PreTrainedTokenizerBase,
        mask: Sequence[bool] | None = None,
        *,
        add_bos: bool = False,
        max_length: int | None = None,
        batch_size: int = 16,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        packed: bool = True,
        use_cache: bool = True,
    ) -> None:
        super().__init__()
        self.masked = masked
        self.tokenizer = tokenizer
        self.mask = masked.full_mask() if mask is None else masked.validate_mask(mask)
        self.add_bos = add_bos
        self.max_length = resolve_max_length(tokenizer, max_length)
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self.packed = packed
        self.use_cache = use_cache

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        return prefix_token_id(self.tokenizer)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        add_bos_here = self.add_bos if add_special_tokens is None else add_special_tokens
        return encode_texts(self.tokenizer, [string], add_bos_here)[0]

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [(context_ids, continuation_ids) for _, context_ids, continuation_ids in requests]
        score = packed_loglikelihoods if self.packed else plain_loglikelihoods
        results = score(self.masked, self.mask, pairs, self.max_length)
        for (request_strings, _, _), result in zip(requests, results, strict=True):
            if request_strings is not None:
                self.cache_hook.add_partial("loglikelihood", request_strings, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows = [
            rolling_windows(self.tok_encode(string), self.prefix_token_id, self.max_length)
            for (string,) in (request.args for request in requests)
        ]
        flat = [(None, context, continuation) for per_request in windows for context, continuation in per_request]
        scores = iter(self._loglikelihood_tokens(flat))
        totals = [sum(next(scores)[0] for _ in per_request) for per_request in windows]
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        eos_text = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        rules = [stop_rule(request.args[1], eos_text, self.max_gen_toks) for request in requests]
        generation = PromptGeneration(
            self.tokenizer,
            [self.tok_encode(request.args[0]) for request in requests],
            rules,
            batch_size=self.batch_size,
            use_cache=self.use_cache,
            max_length=self.max_length,
            label="lm-eval",
        )
        with self.masked.active(self.mask):
            texts = generation.texts(generation.run(self.masked))
        for request, text in zip(requests, texts, strict=True):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return texts
