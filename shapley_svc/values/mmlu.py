"""MMLU k-shot as a value function, scored from the four answer letters at the last prompt position.

Prompts are lm-eval's bundled MMLU template: the description "The following are multiple choice questions
(with answers) about {subject}.\\n\\n", then the subject's first k dev rows as shots, each
"{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: {letter}\\n\\n", then the question without its letter.
Tokens are those lm-eval scores (context encoded without special tokens, BOS only when ``add_bos``; the
letter token is what encoding context + " X" adds after the context).

Scoring uses only the four rows of the LM head for the letters, at each question's last position:

    p_correct = softmax(letter logits)[gold]      in [0, 1]; the default value
    accuracy  = [argmax letter logits == gold]    0/1, lm-eval's ``acc`` (its argmax is over the same four)

``p_correct`` is the default because a 135M model is near chance on MMLU: 100 questions of 0/1 accuracy carry
about +-5 points of noise, while the probability of the right letter moves smoothly with every coalition and
is bounded, so no coalition dominates the Shapley values. Report accuracy with :meth:`MMLUResults.accuracy`
(mean and standard error). Full-vocabulary letter log-likelihoods (lm-eval's numbers) are computed, still
only at the last positions, with ``full_vocab_logprobs=True`` or :func:`evaluate_questions`.

Speed: a subject's few-shot prefix (most of each prompt) is packed once per row with several questions'
suffixes (see :func:`~shapley_svc.engine.packing.pack_sequences`). The prefix/suffix split is made
after the last shot's answer letter, before "\\n\\n", where byte-level BPE does not merge; every question's
split is checked against the tokens of its whole prompt and a question whose tokens do not split cleanly
gets a row of its own. A prompt longer than ``max_length`` drops shots (from the last) until it fits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from shapley_svc.data.mmlu import LETTERS, MMLUSubject, load_mmlu
from shapley_svc.data.multiple_choice import MultipleChoiceItem
from shapley_svc.engine import BatchedEngine, TokenBatch
from shapley_svc.engine.packing import PackedSequences, pack_sequences
from shapley_svc.errors import ConfigError, DataError
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.base import digest, require_prepared
from shapley_svc.values.items import ItemValues
from shapley_svc.values.multiple_choice import (
    continuation_logprobs,
    encode_texts,
    mean_and_stderr,
    pad_token_id,
    resolve_max_length,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METRICS = ("p_correct", "accuracy")
SHOT_SEPARATOR = "\n\n"


def description(subject: str) -> str:
    """lm-eval's per-subject MMLU description (underscores become spaces)."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def question_text(item: MultipleChoiceItem) -> str:
    """lm-eval's MMLU ``doc_to_text``: the question, the four lettered choices, then "Answer:"."""
    lines = [item.question.strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices, strict=True)]
    return "\n".join(lines) + "\nAnswer:"


def few_shot_prefix(subject: str, shots: Sequence[MultipleChoiceItem]) -> str:
    """Description plus each shot with its letter and the shot separator (what precedes the question)."""
    return description(subject) + "".join(
        f"{question_text(shot)} {LETTERS[shot.answer]}{SHOT_SEPARATOR}" for shot in shots
    )


@dataclass(frozen=True)
class MMLUQuestion:
    """One question as prompted: its context text, context token ids, letter token ids and shots used."""

    id: str
    subject: str
    answer: int
    shots: int
    context: str
    context_ids: tuple[int, ...]
    letter_ids: tuple[int, ...]
    bridge_ids: tuple[int, ...] = ()  # tokens every answer continuation starts with before its letter

    @property
    def input_ids(self) -> tuple[int, ...]:
        """What the model reads: the context, then the shared bridge tokens (none for most tokenizers)."""
        return self.context_ids + self.bridge_ids


@dataclass(frozen=True)
class MMLUResults:
    """Per-question results in question order: letter scores [q, 4] (full-vocabulary log-probabilities when
    ``full_vocab``, else raw logits), predictions, the gold letters and the probability of the gold letter."""

    question_ids: tuple[str, ...]
    subjects: tuple[str, ...]
    gold: np.ndarray
    letter_scores: np.ndarray
    full_vocab: bool

    @property
    def predictions(self) -> np.ndarray:
        """int[q]: index of the best-scoring letter (first on ties, as numpy's argmax)."""
        return self.letter_scores.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        """float[q]: 1 where the prediction is the gold letter."""
        return (self.predictions == self.gold).astype(np.float64)

    @property
    def p_correct(self) -> np.ndarray:
        """float[q]: softmax over the four letter scores, at the gold letter."""
        shifted = self.letter_scores - self.letter_scores.max(axis=1, keepdims=True)
        probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        return probabilities[np.arange(len(self.gold)), self.gold]

    def accuracy(self) -> tuple[float, float]:
        """(accuracy, its standard error) over the questions."""
        return mean_and_stderr(self.correct)

    def smooth(self) -> tuple[float, float]:
        """(mean probability of the gold letter, its standard error) over the questions."""
        return mean_and_stderr(self.p_correct)


@dataclass
class MMLU:
    """MMLU k-shot over some subjects; one value column per metric in ``metrics`` (default ``p_correct``).

    Questions: ``per_subject`` of each subject's ``split`` from its ``first_item`` (all when None), then a
    seeded sample of ``sample`` of those (file order kept). Shots: each subject's first ``shots`` dev rows.
    ``split`` defaults to validation, so a ranking is estimated on other questions than the test questions
    that judge it (:mod:`shapley_svc.data.splits`); pass ``split="test"`` for the seed paper's choice.
    Example: ``MMLU(subjects=("marketing",), per_subject=20, metrics=("p_correct", "accuracy"))``.
    """

    subjects: tuple[str, ...] | None = None
    split: str = "validation"
    shots: int = 5
    per_subject: int | None = None
    first_item: int = 0
    sample: int | None = None
    seed: int = 0
    source: str = "local"
    data_dir: Path | None = None
    metrics: tuple[str, ...] = ("p_correct",)
    add_bos: bool = False
    reuse_prefix: bool = True
    max_length: int | None = None
    max_row_tokens: int = 2048
    # one packed row per batch measured fastest on CPU (long rows of one subject beat several padded rows)
    max_batch_tokens: int = 2048
    full_vocab_logprobs: bool = False

    def __post_init__(self) -> None:
        unknown = [metric for metric in self.metrics if metric not in METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"unknown MMLU metric(s) {unknown or '(none given)'}: use some of {', '.join(METRICS)}")
        if self.per_subject is not None and self.per_subject < 1:
            raise ConfigError(f"per_subject must be >= 1 or None, got {self.per_subject}")
        if self.first_item < 0:
            raise ConfigError(f"first_item must be >= 0, got {self.first_item}")
        self.questions: list[MMLUQuestion] = []
        self._batches: list[TokenBatch] = []
        self._readouts: list[LetterReadout] = []

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(f"mmlu.{metric}" for metric in self.metrics)

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Read the questions, build and tokenise the prompts, pack each subject's prefix with its questions."""
        subjects = load_mmlu(
            subjects=self.subjects, split=self.split, shots=self.shots, source=self.source, data_dir=self.data_dir
        )
        chosen = self._choose(subjects)
        max_length = resolve_max_length(tokenizer, self.max_length)
        self.questions = []
        groups: list[tuple[list[int], list[list[int]]]] = []
        members: list[int] = []  # the question index of each packed member, in packing order
        standalone: list[int] = []
        for subject in subjects:
            if not chosen[subject.name]:
                continue
            prompted = prompt_questions(
                tokenizer, subject, chosen[subject.name], max_length=max_length, add_bos=self.add_bos
            )
            first = len(self.questions)
            self.questions.extend(prompted)
            shared, unsplit = _prefix_groups(tokenizer, subject, prompted, self.add_bos)
            for prefix, indices in shared:
                groups.append((prefix, [list(prompted[i].input_ids[len(prefix) :]) for i in indices]))
                members.extend(first + i for i in indices)
            standalone.extend(first + i for i in unsplit)
        if standalone:
            logger.info(
                "%d MMLU prompts do not split cleanly after their shots; each gets its own row", len(standalone)
            )
        for index in standalone:
            groups.append((list(self.questions[index].input_ids), [[]]))
            members.append(index)
        packed = pack_sequences(
            groups,
            reuse_prefix=self.reuse_prefix,
            max_row_tokens=self.max_row_tokens,
            max_batch_tokens=self.max_batch_tokens,
            pad_id=pad_token_id(tokenizer),
        )
        self._readouts = self._letter_readouts(packed, members)
        self._batches = packed.batches
        return packed.batches

    def _letter_readouts(self, packed: PackedSequences, members: Sequence[int]) -> list[LetterReadout]:
        """Per batch, where its questions' letters (and bridge tokens) are read; ``members`` as packed."""
        per_batch: list[list[tuple[int, np.ndarray, int]]] = [[] for _ in packed.batches]
        for member, question_index in enumerate(members):
            question = self.questions[question_index]
            # the letter is read at the last input position; bridge tokens are predicted from the ones before
            positions = np.arange(len(question.context_ids) - 1, len(question.input_ids))
            columns = packed.columns(member, positions)
            per_batch[packed.batch[member]].append((int(packed.row[member]), columns, question_index))
        return [LetterReadout.build(entries, self.questions) for entries in per_batch]

    def _choose(self, subjects: list[MMLUSubject]) -> dict[str, list[MultipleChoiceItem]]:
        """The questions asked per subject: ``per_subject`` each from ``first_item``, then a seeded sample."""
        stop = None if self.per_subject is None else self.first_item + self.per_subject
        flat = [(subject.name, item) for subject in subjects for item in subject.questions[self.first_item : stop]]
        if self.sample is not None:
            if self.sample < 1:
                raise ConfigError(f"sample must be >= 1 or None, got {self.sample}")
            if self.sample < len(flat):
                picked = np.sort(np.random.default_rng(self.seed).choice(len(flat), size=self.sample, replace=False))
                flat = [flat[i] for i in picked]
        chosen: dict[str, list[MultipleChoiceItem]] = {subject.name: [] for subject in subjects}
        for name, item in flat:
            chosen[name].append(item)
        return chosen

    def fingerprint(self) -> str:
        require_prepared(bool(self.questions))
        settings = {
            "kind": "mmlu",
            "version": FORMAT_VERSION,
            "metrics": self.metrics,
            "bos": self.add_bos,
            "ids": [question.id for question in self.questions],
            "answers": [question.answer for question in self.questions],
            "letters": [question.letter_ids for question in self.questions],
            "bridges": [question.bridge_ids for question in self.questions],
        }
        tokens = torch.tensor([token for question in self.questions for token in question.context_ids])
        return digest(settings, tokens)

    def score(self, batch_index: int, final_hidden: torch.Tensor, head: nn.Module) -> np.ndarray:
        """float[q, 5]: (question index, four letter scores) for the questions read from this batch."""
        return letter_scores(self._readouts[batch_index], final_hidden, head, full_vocab=self.full_vocab_logprobs)

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        results = self.results(statistics)
        per_metric = {"p_correct": results.p_correct, "accuracy": results.correct}
        return np.array([per_metric[metric].mean() for metric in self.metrics])

    def item_count(self) -> int:
        """The questions prepared."""
        return len(self.questions)

    def item_values(self, statistics: list[np.ndarray]) -> ItemValues:
        """Each question's metrics (one column per metric), equally weighted."""
        results = self.results(statistics)
        per_metric = {"p_correct": results.p_correct, "accuracy": results.correct}
        return ItemValues.unweighted([per_metric[metric] for metric in self.metrics])

    def results(self, statistics: list[np.ndarray], full_vocab: bool | None = None) -> MMLUResults:
        """Per-question results from the statistics of every batch (in any batch order)."""
        if not self.questions:
            raise ConfigError("call prepare(tokenizer) before scoring")
        stacked = np.concatenate(statistics) if statistics else np.zeros((0, 5))
        scores = np.full((len(self.questions), len(LETTERS)), np.nan)
        scores[stacked[:, 0].astype(np.int64)] = stacked[:, 1:]
        if np.isnan(scores).any():
            raise ConfigError("statistics are missing some questions: pass the statistics of every batch")
        return MMLUResults(
            question_ids=tuple(question.id for question in self.questions),
            subjects=tuple(question.subject for question in self.questions),
            gold=np.array([question.answer for question in self.questions]),
            letter_scores=scores,
            full_vocab=self.full_vocab_logprobs if full_vocab is None else full_vocab,
        )


def prompt_questions(
    tokenizer: PreTrainedTokenizerBase,
    subject: MMLUSubject,
    items: Sequence[MultipleChoiceItem],
    *,
    max_length: int,
    add_bos: bool,
) -> list[MMLUQuestion]:
    """Prompt and tokenise ``items``; a context longer than ``max_length`` tokens drops shots until it fits."""
    shots_used, contexts, context_ids = _fit_contexts(tokenizer, subject, items, max_length, add_bos)
    dropped = sum(used < len(subject.shots) for used in shots_used)
    if dropped:
        logger.info("subject %s: %d prompts dropped shots to fit max_length %d", subject.name, dropped, max_length)
    wholes = encode_texts(tokenizer, [f"{context} {letter}" for context in contexts for letter in LETTERS], add_bos)
    questions = []
    for index, item in enumerate(items):
        answers = wholes[index * len(LETTERS) : (index + 1) * len(LETTERS)]
        letter_ids, bridge = _letter_tokens(item, [whole[len(context_ids[index]) :] for whole in answers])
        questions.append(
            MMLUQuestion(
                id=item.id,
                subject=subject.name,
                answer=item.answer,
                shots=shots_used[index],
                context=contexts[index],
                context_ids=tuple(context_ids[index]),
                letter_ids=letter_ids,
                bridge_ids=bridge,
            )
        )
    return questions


def _fit_contexts(
    tokenizer: PreTrainedTokenizerBase,
    subject: MMLUSubject,
    items: Sequence[MultipleChoiceItem],
    max_length: int,
    add_bos: bool,
) -> tuple[list[int], list[str], list[list[int]]]:
    """Per item: shots used, context text and its token ids, dropping shots (from the last) until it fits."""
    shots_used = [len(subject.shots)] * len(items)
    contexts: list[str] = [""] * len(items)
    context_ids: list[list[int]] = [[] for _ in items]
    pending = list(range(len(items)))
    while pending:
        texts = [
            few_shot_prefix(subject.name, subject.shots[: shots_used[i]]) + question_text(items[i]) for i in pending
        ]
        encoded = encode_texts(tokenizer, texts, add_bos)
        still_long = []
        for index, text, ids in zip(pending, texts, encoded, strict=True):
            contexts[index], context_ids[index] = text, ids
            if len(ids) > max_length:
                if shots_used[index] == 0:
                    raise DataError(
                        f"MMLU question {items[index].id}: {len(ids)} tokens with no shots, longer than max_length "
                        f"{max_length}; raise max_length (up to the model's context) or leave the subject out"
                    )
                shots_used[index] -= 1
                still_long.append(index)
        pending = still_long
    return shots_used, contexts, context_ids


def _letter_tokens(
    item: MultipleChoiceItem, continuations: Sequence[list[int]]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(letter ids, shared bridge ids) from what " A" .. " D" add after the context; they may differ only last."""
    bridge = continuations[0][:-1]
    if any(len(continuation) == 0 or continuation[:-1] != bridge for continuation in continuations):
        raise ConfigError(
            f"MMLU question {item.id}: the answers ' A'..' D' encode to {list(continuations)} after the prompt; "
            "letter-only scoring needs them to differ only in their last token (use the lm-eval bridge instead)"
        )
    return tuple(continuation[-1] for continuation in continuations), tuple(bridge)


def _prefix_groups(
    tokenizer: PreTrainedTokenizerBase, subject: MMLUSubject, questions: Sequence[MMLUQuestion], add_bos: bool
) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """Questions sharing a few-shot prefix: (prefix ids, question indices) per shot count, most shots first.

    Also returns the indices of questions whose tokens do not start with their prefix's tokens.
    """
    groups: list[tuple[list[int], list[int]]] = []
    unsplit: list[int] = []
    for shots in sorted({question.shots for question in questions}, reverse=True):
        prefix_text = few_shot_prefix(subject.name, subject.shots[:shots]).removesuffix(SHOT_SEPARATOR)
        prefix = encode_texts(tokenizer, [prefix_text], add_bos)[0]
        members = []
        for index, question in enumerate(questions):
            if question.shots != shots:
                continue
            if list(question.context_ids[: len(prefix)]) == prefix:
                members.append(index)
            else:
                unsplit.append(index)
        if members:
            groups.append((prefix, members))
    return groups, unsplit


@dataclass(frozen=True)
class LetterReadout:
    """Where one batch's questions are read: the row and column of each question's last input position, its
    letter ids [q, 4], its question index; and the positions and targets of any bridge tokens (owner = local
    question number), needed only for full-vocabulary log-likelihoods."""

    rows: torch.Tensor
    columns: torch.Tensor
    letters: torch.Tensor
    questions: torch.Tensor
    bridge_rows: torch.Tensor
    bridge_columns: torch.Tensor
    bridge_targets: torch.Tensor
    bridge_owners: torch.Tensor

    @classmethod
    def build(cls, entries: Sequence[tuple[int, np.ndarray, int]], questions: Sequence[MMLUQuestion]) -> LetterReadout:
        """From (row, columns of positions len(context)-1 .. last, question index) per question of a batch."""
        bridge = [
            (row, column, target, local)
            for local, (row, columns, index) in enumerate(entries)
            for column, target in zip(columns[:-1], questions[index].bridge_ids, strict=True)
        ]

        def longs(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.long)

        return cls(
            rows=longs(entry[0] for entry in entries),
            columns=longs(int(entry[1][-1]) for entry in entries),
            letters=torch.tensor([questions[entry[2]].letter_ids for entry in entries], dtype=torch.long).reshape(
                -1, 4
            ),
            questions=longs(entry[2] for entry in entries),
            bridge_rows=longs(item[0] for item in bridge),
            bridge_columns=longs(int(item[1]) for item in bridge),
            bridge_targets=longs(item[2] for item in bridge),
            bridge_owners=longs(item[3] for item in bridge),
        )


def letter_scores(
    readout: LetterReadout, final_hidden: torch.Tensor, head: nn.Module, *, full_vocab: bool
) -> np.ndarray:
    """float[q, 5]: question index and its four letter logits (log-likelihoods when ``full_vocab``).

    Only the letters' rows of the head weight are used, at the last position of each question; the
    full-vocabulary normaliser, when asked for, is also computed at those positions only.
    """
    device = final_hidden.device
    rows, columns, letters = readout.rows.to(device), readout.columns.to(device), readout.letters.to(device)
    last_hidden = final_hidden[rows, columns]  # [q, d]
    weight = getattr(head, "weight", None)
    if isinstance(head, nn.Linear) and weight is not None:
        scores = torch.einsum("qd,qld->ql", last_hidden.float(), weight[letters].float())  # [q, 4]
        if head.bias is not None:
            scores = scores + head.bias[letters].float()
    else:
        scores = head(last_hidden).float().gather(1, letters)
    if full_vocab:
        scores = scores - torch.logsumexp(head(last_hidden).float(), dim=-1, keepdim=True)
        if len(readout.bridge_targets):
            bridge_logprobs, _ = continuation_logprobs(
                final_hidden,
                head,
                readout.bridge_rows.to(device),
                readout.bridge_columns.to(device),
                readout.bridge_targets.to(device),
            )
            shared = torch.zeros(len(rows), device=device).index_add_(
                0, readout.bridge_owners.to(device), bridge_logprobs
            )
            scores = scores + shared[:, None]
    return torch.cat([readout.questions.to(device)[:, None].double(), scores.double()], dim=1).cpu().numpy()


@torch.inference_mode()
def evaluate_questions(
    masked: MaskedModel,
    value_fn: MMLU,
    tokenizer: PreTrainedTokenizerBase,
    mask: np.ndarray | None = None,
) -> MMLUResults:
    """Per-question full-vocabulary letter log-likelihoods and predictions under one ``mask`` (default: all)."""
    if not value_fn.questions:
        value_fn.prepare(tokenizer)
    coalition = masked.full_mask() if mask is None else masked.validate_mask(mask)
    engine = BatchedEngine(masked)
    device = next(masked.model.parameters()).device
    statistics = []
    for batch, readout in zip(value_fn._batches, value_fn._readouts, strict=True):
        (stats,) = engine.evaluate(
            coalition[None],
            batch.to(device),
            readout=lambda hidden, readout=readout: letter_scores(readout, hidden, masked.head, full_vocab=True),
        )
        statistics.append(stats)
    return value_fn.results(statistics, full_vocab=True)
