"""The value-function interface and the game that scores coalitions of a masked model with one.

A value function turns the final hidden states of a masked model into a few numbers per token batch
("statistics", e.g. summed loss and token count) and reduces the statistics of all its batches to one value
per task. The split lets the engine evaluate every coalition on one batch before moving to the next,
sharing hidden-state prefixes across coalitions.

A value that needs the model itself, not the final hidden states of a fixed token batch (generated text),
comes from a :class:`GenerativeValueFunction`: :class:`ModelGame` switches each coalition on with
:meth:`~shapley_svc.model.masked.MaskedModel.active` and calls its ``generate(masked)``, whose statistics
follow those of the token batches in ``finalize``. One game serves both kinds, so the one evaluator of
coalitions (cache, order, executors) is the same for every task.
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


class GenerativeValueFunction(ValueFunction, Protocol):
    """A value function that also runs the masked model per coalition (e.g. greedy generation).

    ``finalize`` receives the statistics of its token batches (often none), then the ``generated_statistics``
    arrays that ``generate`` returned for the same coalition.
    """

    @property
    def generated_statistics(self) -> int:
        """How many arrays :meth:`generate` returns (0: it runs nothing, its token batches are all)."""
        ...

    def generate(self, masked: MaskedModel) -> list[np.ndarray]:
        """Statistics from running ``masked`` under the mask now active (the game enters it)."""
        ...


def generate_for(
    value_fn: ValueFunction, masked: MaskedModel, coalitions: Coalitions, progress: Callable[[], object] | None = None
) -> list[list[np.ndarray]]:
    """Per coalition, what ``value_fn`` generates under it: all at once where it shares the prompts' prefill
    between coalitions (``generate_coalitions``), else one coalition after another."""
    shared = getattr(value_fn, "generate_coalitions", None)
    if callable(shared):
        return [list(statistics) for statistics in shared(masked, coalitions, progress)]
    generated = []
    for coalition in coalitions:
        with masked.active(coalition):
            generated.append(list(value_fn.generate(masked)))  # type: ignore[attr-defined]
        if progress is not None:
            progress()
    return generated


def generated_statistics(value_fn: ValueFunction) -> int:
    """How many statistics ``value_fn`` generates per coalition beyond its token batches' (0 for most)."""
    if not callable(getattr(type(value_fn), "generate", None)):
        return 0
    return int(value_fn.generated_statistics)  # type: ignore[attr-defined]


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
        self.tokenizer = tokenizer  # kept so that another value function can be played on the same model
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
        values = np.stack(
            [self.value_fn.finalize(statistics) for statistics in self.statistics(coalitions, progress)]
        ).astype(np.float64)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise EvaluationError(
                f"coalition {coalitions[first].astype(int).tolist()} has a non-finite value {values[first].tolist()}"
            )
        return values

    def statistics(
        self, coalitions: Coalitions, progress: Callable[[], object] | None = None
    ) -> list[list[np.ndarray]]:
        """Per coalition, what ``finalize`` reduces: each token batch's statistics, then the generated ones.

        For per-item checks (e.g. ``value_fn.lm_eval_responses(game.statistics(mask[None])[0])`` on an lm-eval task).
        """
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        generated = self._generate(coalitions, progress)
        per_batch = [
            self.engine.evaluate(
                coalitions,
                prepared,
                readout=lambda hidden, index=index: self.value_fn.score(index, hidden, self.masked.head),
                progress=progress,
            )
            for index, prepared in enumerate(self._batches)
        ]
        return [[stats[k] for stats in per_batch] + generated[k] for k in range(len(coalitions))]

    def _generate(self, coalitions: Coalitions, progress: Callable[[], object] | None) -> list[list[np.ndarray]]:
        """Per coalition, what the value function generates under it (empty lists when it generates nothing)."""
        expected = generated_statistics(self.value_fn)
        if expected == 0:
            return [[] for _ in coalitions]
        generated = generate_for(self.value_fn, self.masked, coalitions, progress)
        for statistics in generated:
            if len(statistics) != expected:
                raise EvaluationError(
                    f"{type(self.value_fn).__name__}.generate returned {len(statistics)} statistics, not the "
                    f"{expected} it declares in generated_statistics"
                )
        return generated
