"""GSM8K by greedy generation: exact match on the final answer, with lm-eval's answer extraction.

The prompt is lm-eval's ``gsm8k`` task (``gsm8k.yaml``, version 3): ``shots`` solved train problems, each
``"Question: {question}\\nAnswer: {answer}\\n\\n"``, then ``"Question: {question}\\nAnswer:"``. The shots are
drawn as lm-eval draws them: its default sampler (``random.Random(fewshot_seed)``, one ``sample`` of the
train rows per question, in question order) or ``first_n``. Generation stops at ``Question:``, ``</s>``,
``<|im_end|>``, the tokenizer's EOS text, or 256 new tokens.

Each metric is lm-eval's ``exact_match`` (case ignored; ``,``, ``$``, everything up to ``#### `` and a final
``.`` removed from both sides) after one of its two answer filters:

    strict-match      the number after "#### " (regex ``#### (\\-?[0-9\\.\\,]+)``, first match)
    flexible-extract  the last number-like run (regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, last match)

Both are accuracies in [0, 1], so the value is bounded.

Clean splits: by default a ranking is estimated on train problems and judged on test ones
(:mod:`shapley_svc.data.splits`). On the train split the shots are drawn (by the same sampler) only from the
first ``first_item`` train rows (default :data:`TRAIN_SHOT_POOL`) and the questions start after them, so a
question is never one of its own shots. On test (lm-eval's choice) the shots come from all of train.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from shapley_svc.data.generative import GSM8KItem, load_gsm8k
from shapley_svc.engine import TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.values.generative import GenerativeScoring, with_eos_text
from shapley_svc.values.items import ItemValues
from shapley_svc.values.multiple_choice import select_items

FORMAT_VERSION = 1
STOP = ("Question:", "</s>", "<|im_end|>")
FALLBACK = "[invalid]"
FILTERS: dict[str, tuple[re.Pattern[str], int]] = {
    "strict-match": (re.compile(r"#### (\-?[0-9\.\,]+)"), 0),
    "flexible-extract": (re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)"), -1),
}
_IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")
SAMPLERS = ("default", "first_n")
TRAIN_SHOT_POOL = 1000
"""Train rows the shots are drawn from when the questions are train rows too (they start after these)."""


def extract_answer(text: str, pattern: re.Pattern[str], group_select: int) -> str:
    """lm-eval's ``regex`` filter: the selected match (first non-empty group of it), stripped, or ``[invalid]``."""
    matches = pattern.findall(text)
    if not matches:
        return FALLBACK
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((group for group in match if group), FALLBACK)
    return match.strip()


def normalized(text: str) -> str:
    """A side of lm-eval's gsm8k ``exact_match``: the ignored patterns removed, lower case."""
    for pattern in _IGNORED:
        text = re.sub(pattern, "", text)
    return text.lower()


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the extracted ``prediction`` equals the reference solution's answer, as lm-eval's gsm8k scores it."""
    return normalized(prediction) == normalized(reference)


def fewshot_indices(questions: int, pool: int, shots: int, sampler: str, seed: int) -> list[list[int]]:
    """Per question, the indices of its shots among the ``pool`` train rows, drawn as lm-eval's sampler does."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown fewshot sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if shots > pool:
        raise ConfigError(f"{shots} shots but the fewshot split has only {pool} rows")
    if sampler == "first_n":
        return [list(range(shots))] * questions
    rng = random.Random(seed)
    return [rng.sample(range(pool), shots) if shots else [] for _ in range(questions)]


@dataclass
class GSM8K(GenerativeScoring):
    """GSM8K (``shots``-shot, greedy) as a value function; one column per answer filter, as accuracies.

    Example: ``GSM8K(limit=50, max_new_tokens=192)``; ``metrics`` are ``strict-match`` and/or
    ``flexible-extract``.
    """

    split: str = "train"
    limit: int | None = None
    first_item: int | None = None  # default: TRAIN_SHOT_POOL on the few-shot split, else 0
    sample: int | None = None
    seed: int = 0
    shots: int = 5
    fewshot_split: str = "train"
    fewshot_sampler: str = "default"
    fewshot_seed: int = 1234
    source: str = "local"
    data_dir: Path | None = None
    metrics: tuple[str, ...] = tuple(FILTERS)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [metric for metric in self.metrics if metric not in FILTERS]
        if unknown or not self.metrics:
            raise ConfigError(f"unknown metric(s) {unknown or '(none given)'}: use some of {', '.join(FILTERS)}")
        if self.fewshot_sampler not in SAMPLERS:
            raise ConfigError(f"unknown fewshot sampler {self.fewshot_sampler!r}: use one of {', '.join(SAMPLERS)}")
        if self.first_item is not None and self.first_item < 0:
            raise ConfigError(f"first_item must be >= 0 or None, got {self.first_item}")
        self._items: list[GSM8KItem] = []

    @property
    def start_item(self) -> int:
        """The first question's row: ``first_item``, else TRAIN_SHOT_POOL on the few-shot split, else 0."""
        if self.first_item is not None:
            return self.first_item
        return TRAIN_SHOT_POOL if self.split == self.fewshot_split else 0

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(f"gsm8k.{metric}" for metric in self.metrics)

    def prompts(self) -> list[str]:
        """Read the questions and their shots; the prompt of each selected question (lm-eval's text)."""
        items = load_gsm8k(self.split, source=self.source, data_dir=self.data_dir)
        self._items = select_items(items, self.limit, self.sample, self.seed, self.start_item)
        pool = load_gsm8k(self.fewshot_split, source=self.source, data_dir=self.data_dir) if self.shots else []
        if self.split == self.fewshot_split:
            pool = pool[: self.start_item]  # the shots come from the rows before the questions
        draws = fewshot_indices(len(self._items), len(pool), self.shots, self.fewshot_sampler, self.fewshot_seed)
        return [
            "".join(f"Question: {pool[i].question}\nAnswer: {pool[i].answer}\n\n" for i in shots)
            + f"Question: {item.question}\nAnswer:"
            for item, shots in zip(self._items, draws, strict=True)
        ]

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Build and tokenise the prompts; there are no token batches (the values come from generation)."""
        return self.set_prompts(tokenizer, self.prompts(), with_eos_text(tokenizer, STOP), "gsm8k")

    def fingerprint(self) -> str:
        offset = {"first_item": self.start_item} if self.start_item else {}  # older caches stay valid at 0
        references = [item.answer for item in self._items]
        return self.generation_fingerprint("gsm8k", FORMAT_VERSION, references=references, **offset)

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        per_item = self.per_item_metrics(self.generated_texts(statistics))
        return np.array([per_item[metric].mean() for metric in self.metrics])

    def item_count(self) -> int:
        """The items prepared."""
        return len(self._items)

    def item_values(self, statistics: list[np.ndarray]) -> ItemValues:
        """Each question's exact match under each filter (one column per metric), equally weighted."""
        per_item = self.per_item_metrics(self.generated_texts(statistics))
        return ItemValues.unweighted([per_item[metric] for metric in self.metrics])

    def per_item_metrics(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Exact match (0/1) of each question under each filter, from the generated texts."""
        return {
            name: np.array(
                [
                    float(exact_match(extract_answer(text, pattern, group), item.answer))
                    for text, item in zip(texts, self._items, strict=True)
                ]
            )
            for name, (pattern, group) in FILTERS.items()
        }
