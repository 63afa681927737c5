"""Multiple choice by continuation log-likelihood (lm-eval's ``acc`` / ``acc_norm``), with packed prefixes.

For each item and choice ``i`` lm-eval scores ``log p(continuation_i | context_i)``, tokenising the pair as
``TemplateLM._encode_pair`` does (trailing spaces of the context move to the continuation; context and
continuation are encoded together, then split at the length of the encoded context). Then

    acc      = [argmax_i ll_i == gold]
    acc_norm = [argmax_i ll_i / len(choice_text_i) == gold]   (characters, as lm-eval 0.4.13 computes it)
    p_correct = softmax_i(ll_i)[gold]                          (a smooth, bounded alternative)

Prompt templates follow lm-eval's task yamls: ARC ("Question: {q}\\nAnswer:" + " {choice}"), HellaSwag
(its ``process_docs`` preprocessing), PIQA, BoolQ ("{passage}\\nQuestion: {q}?\\nAnswer:" + " no"/" yes"),
Winogrande (partial evaluation: the option fills the blank, the text after the blank is scored).

Packing. The choices of an item share a token prefix (the context, or for Winogrande the text before the
blank): :class:`LoglikelihoodScoring` packs each item's requests over it with
:func:`~shapley_svc.engine.packing.pack_scored` and scores only the continuation tokens.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from shapley_svc.data.multiple_choice import MultipleChoiceItem, load_multiple_choice
from shapley_svc.engine import TokenBatch
from shapley_svc.engine.packing import Readout, ScoredSequence, pack_scored
from shapley_svc.errors import ConfigError, DataError
from shapley_svc.values.base import digest, require_prepared
from shapley_svc.values.items import ItemValues

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_MAX_LENGTH = 2048
_UNBOUNDED_TOKENIZER_LENGTH = 1_000_000
ItemT = TypeVar("ItemT")


# ----------------------------------------------------------------------------------------------- tokenising


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], add_bos: bool) -> list[list[int]]:
    """Token ids of each text without special tokens, BOS prepended when ``add_bos`` (batched, fast)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if not add_bos:
        return [list(ids) for ids in encoded]
    if tokenizer.bos_token_id is None:
        raise ConfigError("add_bos=True but the tokenizer has no BOS token: use add_bos=False")
    return [[tokenizer.bos_token_id, *ids] for ids in encoded]


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], add_bos: bool
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per (context, continuation), split exactly as lm-eval's TemplateLM does."""
    moved: list[tuple[str, str]] = []
    for context, continuation in pairs:
        if not context:
            raise ConfigError("an empty context is not supported here; give every request some context text")
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        moved.append((context, continuation))
    wholes = encode_texts(tokenizer, [context + continuation for context, continuation in moved], add_bos)
    contexts = encode_texts(tokenizer, [context for context, _ in moved], add_bos)
    return [(context, whole[len(context) :]) for context, whole in zip(contexts, wholes, strict=True)]


def resolve_max_length(tokenizer: PreTrainedTokenizerBase, max_length: int | None) -> int:
    """``max_length``, else the tokenizer's ``model_max_length`` when it is a real limit, else 2048."""
    if max_length is not None:
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {max_length}")
        return max_length
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < _UNBOUNDED_TOKENIZER_LENGTH else DEFAULT_MAX_LENGTH


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding (never attended to): pad, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


# ----------------------------------------------------------------------------------------------- scoring


def continuation_logprobs(
    final_hidden: torch.Tensor,
    head: nn.Module,
    rows: torch.Tensor,
    columns: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and whether it is the argmax, at the given (row, column) positions of ``final_hidden``.

    The head runs only at those positions (``chunk_tokens`` at a time), in float32 for the log-softmax.
    """
    hidden = final_hidden[rows, columns]  # [T, d]
    logprobs, greedy = [], []
    for begin in range(0, len(hidden), chunk_tokens):
        logits = head(hidden[begin : begin + chunk_tokens]).float()  # [c, V]
        chunk_targets = targets[begin : begin + chunk_tokens]
        log_softmax = F.log_softmax(logits, dim=-1)
        logprobs.append(log_softmax.gather(1, chunk_targets[:, None])[:, 0])
        greedy.append(logits.argmax(dim=-1) == chunk_targets)
    if not logprobs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(logprobs), torch.cat(greedy)


def mean_and_stderr(per_item: np.ndarray) -> tuple[float, float]:
    """Mean over items and its standard error (sample standard deviation / sqrt(n), as lm-eval reports)."""
    values = np.asarray(per_item, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


# ----------------------------------------------------------------------------------------------- requests


def request_sequences(
    tokenizer: PreTrainedTokenizerBase,
    pair_sets: Sequence[Sequence[tuple[str, str]]],
    ids: Sequence[str],
    *,
    add_bos: bool,
    max_length: int,
) -> tuple[list[list[ScoredSequence]], torch.Tensor]:
    """Per item, its (context, continuation) requests as sequences scored at the continuation tokens.

    Also returns all unpacked input tokens concatenated (for fingerprints); ``ids`` name the items in errors.
    """
    encoded = encode_pairs(tokenizer, [pair for pairs in pair_sets for pair in pairs], add_bos)
    groups: list[list[ScoredSequence]] = []
    unpacked: list[int] = []
    offset = 0
    for item_id, pairs in zip(ids, pair_sets, strict=True):
        group = []
        for context, continuation in encoded[offset : offset + len(pairs)]:
            group.append(_scored_request(item_id, context, continuation, max_length))
            unpacked.extend(context + continuation)
        groups.append(group)
        offset += len(pairs)
    return groups, torch.tensor(unpacked, dtype=torch.long)


def _scored_request(item_id: str, context: list[int], continuation: list[int], max_length: int) -> ScoredSequence:
    """The model reads context + continuation but its last token; the continuation's tokens are scored."""
    if not continuation:
        raise DataError(f"item {item_id}: a choice's continuation encodes to no tokens; nothing to score")
    whole = context + continuation
    if len(whole) - 1 > max_length:
        raise DataError(
            f"item {item_id}: its prompt is {len(whole) - 1} tokens, longer than max_length {max_length}; "
            "raise max_length (up to the model's context) or leave the item out"
        )
    return ScoredSequence(whole[:-1], np.arange(len(context) - 1, len(whole) - 1), continuation)


@dataclass(kw_only=True)
class LoglikelihoodScoring:
    """Base of the value functions scoring lm-eval loglikelihood requests (context, continuation) per item.

    Holds the tokenising and packing settings; :meth:`pack_requests` tokenises each item's requests as
    lm-eval's ``TemplateLM`` does and packs them over their common prefix; :meth:`score` reads one batch.
    """

    add_bos: bool = False
    reuse_prefix: bool = True
    max_length: int | None = None
    max_row_tokens: int = 2048
    max_batch_tokens: int = 8192

    def __post_init__(self) -> None:
        self._tokens: torch.Tensor | None = None
        self._readouts: list[Readout] = []
        self._request_count = 0

    def pack_requests(
        self, tokenizer: PreTrainedTokenizerBase, pair_sets: Sequence[Sequence[tuple[str, str]]], ids: Sequence[str]
    ) -> list[TokenBatch]:
        """Token batches of every item's requests (numbered in order); ``ids`` name the items in errors."""
        groups, self._tokens = request_sequences(
            tokenizer, pair_sets, ids, add_bos=self.add_bos, max_length=resolve_max_length(tokenizer, self.max_length)
        )
        batches, self._readouts = pack_scored(
            groups,
            reuse_prefix=self.reuse_prefix,
            max_row_tokens=self.max_row_tokens,
            max_batch_tokens=self.max_batch_tokens,
            pad_id=pad_token_id(tokenizer),
        )
        self._request_count = sum(len(group) for group in groups)
        return batches

    def score(self, batch_index: int, final_hidden: torch.Tensor, head: nn.Module) -> np.ndarray:
        """float[r, 3]: (request index, log-likelihood, all tokens greedy) of the requests in this batch."""
        return score_choices(self._readouts[batch_index], final_hidden, head)

    def responses(self, statistics: list[np.ndarray]) -> np.ndarray:
        """float[requests, 2]: (log-likelihood, all tokens greedy) per request, from every batch's statistics."""
        return gather_choice_statistics(statistics, self._request_count)


# ----------------------------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class ChoiceRequests:
    """What lm-eval asks of the model for one item: a (context, continuation) per choice, and the gold index."""

    pairs: tuple[tuple[str, str], ...]
    norm_texts: tuple[str, ...]  # the choice strings whose character length normalises acc_norm
    gold: int


def _question_answer(item: MultipleChoiceItem) -> ChoiceRequests:
    context = f"Question: {item.question}\nAnswer:"
    return ChoiceRequests(tuple((context, f" {choice}") for choice in item.choices), item.choices, item.answer)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text clean-up: strip, ``[title]`` to a full stop, drop other bracketed markers."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(item: MultipleChoiceItem) -> ChoiceRequests:
    try:
        label, ctx_a, ctx_b = item.subject, item.extra["ctx_a"], item.extra["ctx_b"]
    except KeyError as error:
        raise DataError(f"HellaSwag item {item.id} lacks the field {error.args[0]!r} (needs ctx_a, ctx_b)") from error
    if label is None:
        raise DataError(f"HellaSwag item {item.id} lacks 'subject' (the activity label)")
    query = hellaswag_preprocess(f"{label}: {ctx_a} {ctx_b.capitalize()}")
    choices = tuple(hellaswag_preprocess(ending) for ending in item.choices)
    return ChoiceRequests(tuple((query, f" {choice}") for choice in choices), choices, item.answer)


def _boolq(item: MultipleChoiceItem) -> ChoiceRequests:
    if "passage" not in item.extra:
        raise DataError(f"BoolQ item {item.id} lacks the field 'passage'")
    context = f"{item.extra['passage']}\nQuestion: {item.question}?\nAnswer:"
    return ChoiceRequests(tuple((context, f" {choice}") for choice in item.choices), item.choices, item.answer)


def _winogrande(item: MultipleChoiceItem) -> ChoiceRequests:
    blank = item.question.find("_")
    if blank < 0:
        raise DataError(f"Winogrande item {item.id} has no '_' blank in its sentence {item.question!r}")
    contexts = tuple(item.question[:blank] + option for option in item.choices)
    continuation = " " + item.question[blank + 1 :].strip()
    return ChoiceRequests(tuple((context, continuation) for context in contexts), contexts, item.answer)


@dataclass(frozen=True)
class TaskTemplate:
    """An lm-eval multiple-choice task: its data set, default split, prompt builder and reported metrics."""

    dataset: str
    split: str
    build: Callable[[MultipleChoiceItem], ChoiceRequests]
    metrics: tuple[str, ...]


TASKS: dict[str, TaskTemplate] = {
    # ARC estimates on validation by default: test is what judges (shapley_svc.data.splits)
    "arc_easy": TaskTemplate("arc_easy", "validation", _question_answer, ("acc", "acc_norm")),
    "arc_challenge": TaskTemplate("arc_challenge", "validation", _question_answer, ("acc", "acc_norm")),
    "hellaswag": TaskTemplate("hellaswag", "validation", _hellaswag, ("acc", "acc_norm")),
    "piqa": TaskTemplate("piqa", "validation", _question_answer, ("acc", "acc_norm")),
    "boolq": TaskTemplate("boolq", "validation", _boolq, ("acc",)),
    "winogrande": TaskTemplate("winogrande", "validation", _winogrande, ("acc",)),
}
METRICS = ("acc", "acc_norm", "p_correct")


def task_template(task: str) -> TaskTemplate:
    """The template of ``task``; an unknown name is a ConfigError listing the known ones."""
    try:
        return TASKS[task]
    except KeyError:
        raise ConfigError(f"unknown multiple-choice task {task!r}: use one of {', '.join(TASKS)}") from None


def select_items(
    items: Sequence[ItemT], limit: int | None, sample: int | None, seed: int, first_item: int = 0
) -> list[ItemT]:
    """``items[first_item : first_item + limit]`` (to the end without a limit), then (when ``sample`` is set) a
    seeded sample of them, kept in file order."""
    if first_item < 0 or (limit is not None and limit < 1):
        raise ConfigError(f"first_item must be >= 0 and limit >= 1 or None, got {first_item} and {limit}")
    chosen = list(items[first_item : first_item + limit] if limit is not None else items[first_item:])
    if sample is not None:
        if sample < 1:
            raise ConfigError(f"sample must be >= 1, got {sample}")
        if sample < len(chosen):
            picked = np.sort(np.random.default_rng(seed).choice(len(chosen), size=sample, replace=False))
            chosen = [chosen[i] for i in picked]
    return chosen


# ----------------------------------------------------------------------------------------------- value function


@dataclass
class MultipleChoice(LoglikelihoodScoring):
    """A multiple-choice task scored by continuation log-likelihood; one value column per metric.

    ``metrics`` default to the task's lm-eval metrics (``acc`` and, except BoolQ and Winogrande, ``acc_norm``);
    ``p_correct`` (the softmax of the choices' log-likelihoods at the gold choice) is a smooth bounded option.
    Items: ``split`` (default: the task's estimation split) from ``first_item``, ``limit`` of them (or to the end).
    """

    task: str
    split: str | None = None
    limit: int | None = None
    first_item: int = 0
    sample: int | None = None
    seed: int = 0
    source: str = "local"
    data_dir: Path | None = None
    metrics: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._template = task_template(self.task)
        self._metrics = tuple(self.metrics) if self.metrics is not None else self._template.metrics
        unknown = [metric for metric in self._metrics if metric not in METRICS]
        if unknown or not self._metrics:
            raise ConfigError(f"unknown metric(s) {unknown or '(none given)'}: use some of {', '.join(METRICS)}")
        self._requests: list[ChoiceRequests] | None = None

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(f"{self.task}.{metric}" for metric in self._metrics)

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Read the items, build lm-eval's requests, tokenise them and pack each item's choices together."""
        template = self._template
        items = load_multiple_choice(
            template.dataset, self.split or template.split, source=self.source, data_dir=self.data_dir
        )
        selected = select_items(items, self.limit, self.sample, self.seed, self.first_item)
        self._requests = [template.build(item) for item in selected]
        return self.pack_requests(
            tokenizer, [request.pairs for request in self._requests], [item.id for item in selected]
        )

    def fingerprint(self) -> str:
        require_prepared(self._tokens is not None and self._requests is not None)
        settings = {
            "kind": "multiple_choice",
            "version": FORMAT_VERSION,
            "task": self.task,
            "split": self.split or self._template.split,
            "metrics": self._metrics,
            "bos": self.add_bos,
            "gold": [request.gold for request in self._requests],
            "norm": [[len(text) for text in request.norm_texts] for request in self._requests],
        }
        if self.first_item:  # only when set, so values cached before the offset existed stay valid
            settings["first_item"] = self.first_item
        return digest(settings, self._tokens)

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        loglikelihoods = self.choice_loglikelihoods(statistics)
        per_item = self.per_item_metrics(loglikelihoods)
        return np.array([per_item[metric].mean() for metric in self._metrics])

    def item_count(self) -> int:
        """The items prepared."""
        if self._requests is None:
            raise ConfigError("call prepare(tokenizer) before counting its items")
        return len(self._requests)

    def item_values(self, statistics: list[np.ndarray]) -> ItemValues:
        """Each item's metrics (one column per metric), equally weighted."""
        per_item = self.per_item_metrics(self.choice_loglikelihoods(statistics))
        return ItemValues.unweighted([per_item[metric] for metric in self._metrics])

    def choice_loglikelihoods(self, statistics: list[np.ndarray]) -> list[np.ndarray]:
        """Per item, the log-likelihood of each choice's continuation (lm-eval's ``resps``)."""
        if self._requests is None:
            raise ConfigError("call prepare(tokenizer) before scoring")
        flat = self.responses(statistics)[:, 0]
        result, offset = [], 0
        for request in self._requests:
            result.append(flat[offset : offset + len(request.pairs)])
            offset += len(request.pairs)
        return result

    def per_item_metrics(self, loglikelihoods: list[np.ndarray]) -> dict[str, np.ndarray]:
        """acc, acc_norm and p_correct of every item (use :func:`mean_and_stderr` on one for its error bar)."""
        if self._requests is None:
            raise ConfigError("call prepare(tokenizer) before scoring")
        acc, acc_norm, p_correct = [], [], []
        for request, lls in zip(self._requests, loglikelihoods, strict=True):
            lengths = np.array([float(len(text)) for text in request.norm_texts])
            acc.append(float(np.argmax(lls) == request.gold))
            acc_norm.append(float(np.argmax(lls / lengths) == request.gold))
            p_correct.append(float(np.exp(lls[request.gold] - np.logaddexp.reduce(lls))))
        return {"acc": np.array(acc), "acc_norm": np.array(acc_norm), "p_correct": np.array(p_correct)}


def score_choices(readout: Readout, final_hidden: torch.Tensor, head: nn.Module) -> np.ndarray:
    """float[r, 3]: (request index, summed log-likelihood, all greedy) for the requests scored in one batch."""
    readout = readout.to(final_hidden.device)
    logprobs, greedy = continuation_logprobs(final_hidden, head, readout.rows, readout.columns, readout.targets)
    requests, inverse = torch.unique(readout.owners, return_inverse=True)
    sums = torch.zeros(len(requests), dtype=torch.float64, device=logprobs.device)
    sums.index_add_(0, inverse, logprobs.double())
    misses = torch.zeros(len(requests), dtype=torch.long, device=logprobs.device)
    misses.index_add_(0, inverse, (~greedy).long())
    return torch.stack([requests.double(), sums, (misses == 0).double()], dim=1).cpu().numpy()


def gather_choice_statistics(statistics: list[np.ndarray], count: int) -> np.ndarray:
    """float[count, 2]: (log-likelihood, greedy) per request index from the per-batch statistics."""
    stacked = np.concatenate(statistics) if statistics else np.zeros((0, 3))
    result = np.full((count, 2), np.nan)
    result[stacked[:, 0].astype(np.int64)] = stacked[:, 1:]
    if np.isnan(result).any():
        raise ConfigError("statistics are missing some requests: pass the statistics of every batch, in order")
    return result
