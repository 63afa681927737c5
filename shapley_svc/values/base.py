"""The value-function interface and the game that scores coalitions of a masked model with one.

A value function turns the final hidden states of a masked model into a few numbers per token batch
("statistics", e.g. summed loss and token count) and reduces the statistics of all its batches to one value
per task. The split lets the engine evaluate every coalition on one batch before moving to the next,
sharing hidden-state prefixes across coalitions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import transformers
from torch import nn
from transformers import PreTrainedTokenizerBase

from shapley_svc.engine import BatchedEngine, PreparedBatch, TokenBatch
from shapley_svc.errors import ConfigError, EvaluationError
from shapley_svc.model.masked import MaskedModel
from shapley_svc.types import Coalitions, Values


class ValueFunction(Protocol):
    """Scores a masked model on a task; deterministic, so cached values stay valid across runs and workers."""

    @property
    def task_names(self) -> tuple[str, ...]: ...

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Build the token batches once per worker."""
        ...

    def fingerprint(self) -> str:
        """Stable digest of data slice, prompt format, tokenizer output, metric and version (after prepare)."""
        ...

    def score(self, batch_index: int, final_hidden: torch.Tensor, head: nn.Module) -> np.ndarray:
        """Statistics of one batch from the final-norm output [b, s, d] of a masked model."""
        ...

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        """float[t]: one value per task from the statistics of every batch, in batch order."""
        ...


def digest(settings: dict[str, Any], *arrays: torch.Tensor) -> str:
    """sha256 over canonical JSON of ``settings`` and the bytes of ``arrays`` (e.g. the token ids)."""
    hasher = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for array in arrays:
        hasher.update(array.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def runtime_setup(model: nn.Module) -> str:
    """What a value depends on beyond weights and data: device type, dtype, torch and transformers versions.

    Canonical JSON; part of the value-cache key, so values computed under one set-up are not served to another.
    """
    parameter = next(model.parameters())
    return json.dumps(
        {
            "device": parameter.device.type,
            "dtype": str(parameter.dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        sort_keys=True,
    )


def require_prepared(ready: bool) -> None:
    """A ConfigError unless the value function has been prepared (its fingerprint covers the token ids)."""
    if not ready:
        raise ConfigError("call prepare(tokenizer) before fingerprint(): the digest covers the token ids")


class ModelGame:
    """A :class:`~shapley_svc.types.Game` whose players are a masked model's players and whose value
    function scores each coalition through the batched engine."""

    def __init__(
        self,
        masked: MaskedModel,
        value_fn: ValueFunction,
        tokenizer: PreTrainedTokenizerBase,
        model_fingerprint: str,
    ):
        self.masked = masked
        self.value_fn = value_fn
        self.engine = BatchedEngine(masked)
        device = next(masked.model.parameters()).device
        self._batches: list[PreparedBatch] = [
            self.engine.prepare(batch.to(device)) for batch in value_fn.prepare(tokenizer)
        ]
        self.model_fingerprint = model_fingerprint

    @property
    def n_players(self) -> int:
        return self.masked.n_players

    @property
    def player_names(self) -> tuple[str, ...]:
        return self.masked.player_names

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.value_fn.task_names

    def fingerprint(self) -> str:
        """Identity of what a coalition's value depends on: model, value function and granularity."""
        return digest(
            {
                "model": self.model_fingerprint,
                "value_fn": self.value_fn.fingerprint(),
                "granularity": self.masked.granularity.value,
            }
        )

    def setup(self) -> str:
        """The run-time set-up of the resident model (see :func:`runtime_setup`)."""
        return runtime_setup(self.masked.model)

    def __call__(self, coalitions: Coalitions, progress: Callable[[], object] | None = None) -> Values:
        """float[k, t]: the value of each coalition (row of bool[k, n]) for each task.

        ``progress`` is called once per coalition and token batch done.
        """
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        per_batch = [
            self.engine.evaluate(
                coalitions,
                prepared,
                readout=lambda hidden, index=index: self.value_fn.score(index, hidden, self.masked.head),
                progress=progress,
            )
            for index, prepared in enumerate(self._batches)
        ]
        values = np.stack(
            [self.value_fn.finalize([stats[k] for stats in per_batch]) for k in range(len(coalitions))]
        ).astype(np.float64)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise EvaluationError(
                f"coalition {coalitions[first].astype(int).tolist()} has a non-finite value {values[first].tolist()}"
            )
        return values
