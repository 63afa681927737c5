"""A value function's value on each of its items apart: one column per item and task, for paired checks.

A held-out check compares the full model with a plan item by item (corpus windows, questions, passages), so
the plan's cost gets a paired interval over items. Any value function with per-item values
(:class:`~shapley_svc.values.items.ItemValued`: every mean over items, generation included) can be valued
so: its statistics are the wrapped function's own, only finalised per item instead of averaged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from shapley_svc.engine import TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.model.masked import MaskedModel
from shapley_svc.types import Coalitions
from shapley_svc.values.base import ValueFunction, digest, generate_for, generated_statistics
from shapley_svc.values.items import ItemValued


class PerItem:
    """``value_fn`` finalised item by item; columns ``task@item``, item-major (their unweighted mean over
    items is the value wherever the items weigh the same)."""

    def __init__(self, value_fn: ValueFunction) -> None:
        if not isinstance(value_fn, ItemValued):
            raise ConfigError(
                f"{type(value_fn).__name__} has no per-item values, so it cannot be judged item by item; "
                "judge on a task whose value is a mean over items (lm_loss, mmlu, multiple choice, lambada, gsm8k)"
            )
        self.value_fn = value_fn
        self.items: int | None = None

    @property
    def task_names(self) -> tuple[str, ...]:
        if self.items is None:
            raise ConfigError("call prepare(tokenizer) first: the columns are one per item")
        return tuple(f"{task}@{item}" for item in range(self.items) for task in self.value_fn.task_names)

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        batches = self.value_fn.prepare(tokenizer)
        self.items = self.value_fn.item_count()  # type: ignore[attr-defined]
        return batches

    def fingerprint(self) -> str:
        return digest({"kind": "per_item", "version": 1, "value_fn": self.value_fn.fingerprint()})

    def score(self, batch_index: int, final_hidden: torch.Tensor, head: nn.Module) -> np.ndarray:
        return self.value_fn.score(batch_index, final_hidden, head)

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        per_item = self.value_fn.item_values(statistics)  # type: ignore[attr-defined]
        if per_item.items != self.items:
            raise ConfigError(f"{per_item.items} items scored, {self.items} prepared: pass every batch's statistics")
        return per_item.values.reshape(-1)


class GenerativePerItem(PerItem):
    """:class:`PerItem` of a value function that generates under each coalition (LAMBADA, GSM8K...)."""

    @property
    def generated_statistics(self) -> int:
        return generated_statistics(self.value_fn)

    def generate(self, masked: MaskedModel) -> list[np.ndarray]:
        return list(self.value_fn.generate(masked))  # type: ignore[attr-defined]

    def generate_coalitions(
        self, masked: MaskedModel, coalitions: Coalitions, progress: Callable[[], object] | None = None
    ) -> list[list[np.ndarray]]:
        """What the wrapped function generates per coalition, its prompts' prefill shared where it shares it."""
        return generate_for(self.value_fn, masked, coalitions, progress)


def per_item(value_fn: ValueFunction) -> PerItem:
    """``value_fn`` valued item by item (generating under each coalition where it generates)."""
    return GenerativePerItem(value_fn) if generated_statistics(value_fn) else PerItem(value_fn)
