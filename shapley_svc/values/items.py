"""Per-item contributions of a value and the standard error of a task value over its items.

Most values are (weighted) means over items: corpus windows weighted by their token counts (``lm_loss``),
questions (MMLU, multiple choice, GSM8K, LAMBADA), documents (lm-eval tasks whose metric aggregates by mean).
Such a value function has the optional methods ``item_values(statistics) -> ItemValues`` and ``item_count()``
(the :class:`ItemValued` protocol, checked with ``isinstance``; the registry does not require it), computed
from the same statistics as ``finalize``, with ``finalize(statistics) == item_values(statistics).mean()``.
A value function whose columns come from different item sets (:class:`~shapley_svc.values.multi.MultiTask`)
has ``item_value_groups(statistics)`` instead: one :class:`ItemValues` per consecutive block of columns.

:func:`coalition_stderr` gives a coalition's value and its bootstrap standard error per task column from one
evaluation of a :class:`~shapley_svc.values.base.ModelGame` (its ``statistics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.stats import bootstrap_stderr
from shapley_svc.values.base import ModelGame, ValueFunction


@dataclass(frozen=True)
class ItemValues:
    """Per-item values float[items, t] of ``t`` task columns and the items' weights float[items]."""

    values: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.weights.shape != (len(self.values),):
            raise ConfigError(
                f"item values must be float[items, t] with weights float[items], got {self.values.shape}, "
                f"{self.weights.shape}"
            )

    @classmethod
    def unweighted(cls, columns: list[np.ndarray]) -> ItemValues:
        """Equal-weight items from one float[items] array per column."""
        values = np.stack([np.asarray(column, dtype=np.float64) for column in columns], axis=1)
        return cls(values, np.ones(len(values)))

    @property
    def items(self) -> int:
        return len(self.values)

    def mean(self) -> np.ndarray:
        """float[t]: the weighted mean per column (what ``finalize`` returns)."""
        return self.weights @ self.values / self.weights.sum()

    def stderr(self, *, resamples: int = 2000, seed: int = 0) -> np.ndarray:
        """float[t]: the bootstrap standard error of :meth:`mean` over items (see ``bootstrap_stderr``)."""
        return bootstrap_stderr(self.values, self.weights, resamples=resamples, seed=seed)


@runtime_checkable
class ItemValued(Protocol):
    """A value function whose value is a weighted mean over items (an optional part of the protocol)."""

    def item_values(self, statistics: list[np.ndarray]) -> ItemValues:
        """The per-item values whose weighted mean per column is ``finalize(statistics)``."""
        ...

    def item_count(self) -> int:
        """How many items ``item_values`` gives (after ``prepare``)."""
        ...


def item_value_groups(value_fn: ValueFunction, statistics: list[np.ndarray]) -> tuple[ItemValues, ...]:
    """One :class:`ItemValues` per block of ``value_fn``'s columns sharing items, in column order.

    A value function that is not a mean over items is a ConfigError saying so.
    """
    grouped = getattr(value_fn, "item_value_groups", None)
    if callable(grouped):
        return tuple(grouped(statistics))
    if isinstance(value_fn, ItemValued):
        return (value_fn.item_values(statistics),)
    raise ConfigError(f"{type(value_fn).__name__} is not a mean over items: it has no per-item values")


@dataclass(frozen=True)
class TaskStderr:
    """Per task column: the value, its bootstrap standard error over items and the number of items."""

    task_names: tuple[str, ...]
    values: np.ndarray
    stderr: np.ndarray
    items: np.ndarray


def coalition_stderr(
    game: ModelGame, coalition: np.ndarray | None = None, *, resamples: int = 2000, seed: int = 0
) -> TaskStderr:
    """The value of ``coalition`` (default: every player) and its standard error per task, from one evaluation."""
    mask = np.ones(game.n_players, dtype=bool) if coalition is None else np.asarray(coalition, dtype=bool)
    statistics = game.statistics(mask[None])[0]
    groups = item_value_groups(game.value_fn, statistics)
    return TaskStderr(
        task_names=tuple(game.task_names),
        values=np.concatenate([group.mean() for group in groups]),
        stderr=np.concatenate([group.stderr(resamples=resamples, seed=seed) for group in groups]),
        items=np.concatenate([np.full(group.values.shape[1], group.items) for group in groups]),
    )
