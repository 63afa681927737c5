"""Several value functions in one game: one column per task from a single pass over the coalitions.

:class:`MultiTask` concatenates the token batches of its value functions; ``score`` dispatches a batch index
to the value function that owns it, and ``finalize`` concatenates each one's columns. The engine therefore
evaluates every coalition on every task's batches in one call, with its usual prefix sharing across masks,
and the columns equal those of the single-task games. Value functions that generate (GSM8K, LAMBADA) run
under each coalition one after the other; their statistics follow those of all the token batches.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from shapley_svc.engine import TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.model.masked import MaskedModel
from shapley_svc.types import Coalitions
from shapley_svc.values.base import ValueFunction, digest, generate_for, generated_statistics
from shapley_svc.values.items import ItemValues, item_value_groups


class MultiTask:
    """Value functions side by side; ``task_names`` and values are theirs, concatenated in the order given.

    Example: ``MultiTask([MMLU(metrics=("p_correct", "accuracy")), LanguageModelingLoss()])``.
    """

    def __init__(self, value_fns: Sequence[ValueFunction]):
        if not value_fns:
            raise ConfigError("MultiTask needs at least one value function")
        self.value_fns = tuple(value_fns)
        self._starts: list[int] = []  # first global batch index of each value function
        self._batches = 0
        self._prepared = False

    @property
    def task_names(self) -> tuple[str, ...]:
        names = tuple(name for value_fn in self.value_fns for name in value_fn.task_names)
        if len(set(names)) != len(names):
            raise ConfigError(f"MultiTask columns must have distinct names, got {names}")
        return names

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Every value function's batches, one after the other."""
        batches: list[TokenBatch] = []
        self._starts = []
        for value_fn in self.value_fns:
            self._starts.append(len(batches))
            batches.extend(value_fn.prepare(tokenizer))
        self._batches = len(batches)
        self._prepared = True
        return batches

    @property
    def generated_statistics(self) -> int:
        """The generating value functions' statistics, together."""
        return sum(generated_statistics(value_fn) for value_fn in self.value_fns)

    def generate(self, masked: MaskedModel) -> list[np.ndarray]:
        """Each generating value function's statistics under the active mask, in the order given."""
        return [
            statistics
            for value_fn in self.value_fns
            if generated_statistics(value_fn)
            for statistics in value_fn.generate(masked)  # type: ignore[attr-defined]
        ]

    def generate_coalitions(
        self, masked: MaskedModel, coalitions: Coalitions, progress: Callable[[], object] | None = None
    ) -> list[list[np.ndarray]]:
        """Per coalition, each generating value function's statistics, each of them over all the coalitions."""
        per_fn = [
            generate_for(value_fn, masked, coalitions) for value_fn in self.value_fns if generated_statistics(value_fn)
        ]
        if progress is not None:
            for _ in coalitions:
                progress()
        return [[statistics for generated in per_fn for statistics in generated[row]] for row in range(len(coalitions))]

    def fingerprint(self) -> str:
        return digest({"kind": "multi", "parts": [value_fn.fingerprint() for value_fn in self.value_fns]})

    def _owner(self, batch_index: int) -> int:
        if not self._prepared:
            raise ConfigError("call prepare(tokenizer) before scoring")
        return bisect.bisect_right(self._starts, batch_index) - 1

    def score(self, batch_index: int, final_hidden: torch.Tensor, head: nn.Module) -> np.ndarray:
        """The owning value function's statistics for its own batch number."""
        owner = self._owner(batch_index)
        return self.value_fns[owner].score(batch_index - self._starts[owner], final_hidden, head)

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        columns = [np.asarray(value_fn.finalize(own), dtype=np.float64) for value_fn, own in self._parts(statistics)]
        return np.concatenate(columns)

    def item_value_groups(self, statistics: list[np.ndarray]) -> tuple[ItemValues, ...]:
        """Each value function's per-item values, in column order: each column keeps its own items."""
        return tuple(group for value_fn, own in self._parts(statistics) for group in item_value_groups(value_fn, own))

    def _parts(self, statistics: list[np.ndarray]) -> list[tuple[ValueFunction, list[np.ndarray]]]:
        """Each value function with its own statistics: its token batches', then those it generated."""
        if not self._prepared:
            raise ConfigError("call prepare(tokenizer) before finalize")
        ends = [*self._starts[1:], self._batches]
        generated = self._batches
        parts = []
        for value_fn, start, end in zip(self.value_fns, self._starts, ends, strict=True):
            count = generated_statistics(value_fn)
            parts.append((value_fn, statistics[start:end] + statistics[generated : generated + count]))
            generated += count
        return parts
