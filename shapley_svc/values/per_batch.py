"""A value function's value on each of its token batches apart: one column per batch and task.

Held-out checks compare two coalitions window by window (paired): a language-modelling value with one window
per batch gives each window's value, and their mean is the value itself. Only for value functions whose
batches are self-contained (each batch's statistics finalise on their own, as ``lm_loss``'s do); a value
function that generates has no such batches and is refused.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from shapley_svc.engine import TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.values.base import ValueFunction, digest, generated_statistics


class PerBatch:
    """``value_fn`` finalised on each batch's statistics alone; columns ``task@batch``, batch-major."""

    def __init__(self, value_fn: ValueFunction) -> None:
        self.value_fn = value_fn
        self.batches: int | None = None

    @property
    def task_names(self) -> tuple[str, ...]:
        if self.batches is None:
            raise ConfigError("call prepare(tokenizer) first: the columns are one per token batch")
        return tuple(f"{task}@{batch}" for batch in range(self.batches) for task in self.value_fn.task_names)

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        batches = self.value_fn.prepare(tokenizer)
        if generated_statistics(self.value_fn):
            raise ConfigError(
                f"{type(self.value_fn).__name__} generates text under each coalition and has no self-contained "
                "token batches to value one by one; use an lm_loss task for held-out windows"
            )
        self.batches = len(batches)
        return batches

    def fingerprint(self) -> str:
        return digest({"kind": "per_batch", "version": 1, "value_fn": self.value_fn.fingerprint()})

    def score(self, batch_index: int, final_hidden: torch.Tensor, head: nn.Module) -> np.ndarray:
        return self.value_fn.score(batch_index, final_hidden, head)

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([self.value_fn.finalize([batch]) for batch in statistics])
