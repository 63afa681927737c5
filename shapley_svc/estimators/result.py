"""``ShapleyResult``: per-task, per-player estimates with uncertainty and provenance; exact merge; JSON.

``merge`` pools two results of the same Monte Carlo estimator on the same game as if their samples had been
drawn in one run: means weighted by counts and sums of squared deviations pooled exactly (Chan et al. 1979):
``M2 = M2_a + M2_b + delta^2 * c_a * c_b / (c_a + c_b)`` with ``M2 = stderr^2 * c * (c - 1)``. That is valid
only where a value is the mean of ``counts`` independent samples (``Estimator.mergeable``); it is refused
for regression, quadrature, stratified and exact estimators, whose results are not such means.
Results are stored as versioned JSON, never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from shapley_svc.errors import ConfigError
from shapley_svc.versioned import read_document

RESULT_FORMAT = "shapley_svc.ShapleyResult"
RESULT_VERSION = 1


@dataclass
class ShapleyResult:
    """Estimates for t tasks and n players: ``values[t, n]``, ``stderr[t, n]``, ``counts[n]`` and provenance."""

    values: np.ndarray  # float[t, n]
    stderr: np.ndarray  # float[t, n]
    counts: np.ndarray  # int[n]: samples that informed each player's estimate
    evaluations_used: int
    v_full: np.ndarray  # float[t]
    v_empty: np.ndarray  # float[t]
    player_names: tuple[str, ...]
    task_names: tuple[str, ...]
    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def n_players(self) -> int:
        """Number of players."""
        return int(self.values.shape[1])

    def ranking(self, task: int = 0) -> list[str]:
        """Player names from least to most important for one task column."""
        return [self.player_names[i] for i in np.argsort(self.values[task], kind="stable")]

    def merge(self, other: ShapleyResult) -> ShapleyResult:
        """Pool two independent runs of the same Monte Carlo estimator on the same game (exact moment pooling)."""
        if (self.player_names, self.task_names, self.estimator) != (
            other.player_names,
            other.task_names,
            other.estimator,
        ):
            raise ConfigError(
                "merge needs results of the same estimator, players and tasks; got "
                f"{self.estimator}/{len(self.player_names)} players and "
                f"{other.estimator}/{len(other.player_names)} players"
            )
        from shapley_svc.estimators import REGISTRY  # the estimator classes know whether their results pool

        if not REGISTRY.load(self.estimator).mergeable:
            raise ConfigError(
                f"{self.estimator} results cannot be merged: its values are not means of independent samples, so "
                "pooling their moments would be wrong; run it once with the two budgets added instead"
            )
        count_a = self.counts.astype(np.float64)
        count_b = other.counts.astype(np.float64)
        total = count_a + count_b
        safe_total = np.where(total > 0, total, 1.0)
        mean = (self.values * count_a + other.values * count_b) / safe_total
        m2_a = self.stderr**2 * count_a * np.maximum(count_a - 1, 0)
        m2_b = other.stderr**2 * count_b * np.maximum(count_b - 1, 0)
        delta = other.values - self.values
        m2 = m2_a + m2_b + delta**2 * count_a * count_b / safe_total
        stderr = np.sqrt(m2 / np.maximum(total * (total - 1), 1.0))
        seeds = {
            "merged_seeds": [
                *self.params.get("merged_seeds", [self.seed]),
                *other.params.get("merged_seeds", [other.seed]),
            ]
        }
        return ShapleyResult(
            values=mean,
            stderr=stderr,
            counts=(self.counts + other.counts).astype(np.int64),
            evaluations_used=self.evaluations_used + other.evaluations_used,
            v_full=self.v_full,
            v_empty=self.v_empty,
            player_names=self.player_names,
            task_names=self.task_names,
            estimator=self.estimator,
            params={**self.params, **seeds},
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the format name and version."""
        return {
            "format": RESULT_FORMAT,
            "version": RESULT_VERSION,
            "estimator": self.estimator,
            "params": self.params,
            "seed": self.seed,
            "player_names": list(self.player_names),
            "task_names": list(self.task_names),
            "values": self.values.tolist(),
            "stderr": self.stderr.tolist(),
            "counts": self.counts.tolist(),
            "evaluations_used": self.evaluations_used,
            "v_full": self.v_full.tolist(),
            "v_empty": self.v_empty.tolist(),
        }

    def to_json(self) -> str:
        """Versioned JSON text."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ShapleyResult:
        """Read a result written by ``to_json``; refuses other formats and newer versions."""
        data = read_document(
            _ResultDocument,
            text,
            "ShapleyResult",
            version=RESULT_VERSION,
            version_key="version",
            format_name=RESULT_FORMAT,
        )
        return cls(
            values=np.asarray(data.values, dtype=np.float64),
            stderr=np.asarray(data.stderr, dtype=np.float64),
            counts=np.asarray(data.counts, dtype=np.int64),
            evaluations_used=data.evaluations_used,
            v_full=np.asarray(data.v_full, dtype=np.float64),
            v_empty=np.asarray(data.v_empty, dtype=np.float64),
            player_names=data.player_names,
            task_names=data.task_names,
            estimator=data.estimator,
            params=data.params,
            seed=data.seed,
        )


class _ResultDocument(BaseModel):
    """The JSON form of a :class:`ShapleyResult` (what ``to_dict`` writes), validated on read."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["shapley_svc.ShapleyResult"]
    version: Literal[1]
    estimator: str
    params: dict[str, Any]
    seed: int
    player_names: tuple[str, ...]
    task_names: tuple[str, ...]
    values: list[list[float]]
    stderr: list[list[float]]
    counts: list[int]
    evaluations_used: int
    v_full: list[float]
    v_empty: list[float]
