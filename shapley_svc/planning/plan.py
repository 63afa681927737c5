"""``RemovalPlan``: the players a search chose to remove, what it cost, how it was found, and how it holds
up on held-out data. A record that leaves the process (CLI, store, API), so a pydantic model, written and read
as versioned JSON (:mod:`shapley_svc.versioned`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from shapley_svc.planning.problem import RemovalGame
from shapley_svc.versioned import read_document

PLAN_FORMAT = "shapley_svc.RemovalPlan"
PLAN_VERSION = 1


class HeldOut(BaseModel):
    """One task on held-out data: the full model's value, the plan's, and their paired difference (plan - full)
    with its 95% interval over ``items`` items (or windows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    full: float
    plan: float
    difference: float
    low: float
    high: float
    items: int


class RemovalPlan(BaseModel):
    """The best removal set of k a search read, with its calibration value, costs and path (reading order);
    ``selection``: the finalists read on the selection data with their values there, where the plan is their best.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["shapley_svc.RemovalPlan"] = PLAN_FORMAT
    version: Literal[1] = PLAN_VERSION
    method: str
    seed: int
    params: dict[str, Any]
    k: int
    budget: int
    removed: tuple[str, ...]
    objective: dict[str, float]
    limits: dict[str, float] = {}
    value: float
    task_values: dict[str, float]
    evaluations_used: int
    evaluations_computed: int
    path: tuple[tuple[tuple[str, ...], float], ...]
    selection: tuple[tuple[tuple[str, ...], float], ...] = ()
    held_out: tuple[HeldOut, ...] = ()
    provenance: dict[str, Any] = {}

    @classmethod
    def from_search(cls, game: RemovalGame, *, method: str, seed: int, params: dict[str, Any]) -> RemovalPlan:
        """The plan a finished search leaves in ``game``: its best set of k players."""
        problem, best = game.problem, game.best()
        tasks = game.evaluator.game.task_names
        return cls(
            method=method,
            seed=seed,
            params=params,
            k=problem.k,
            budget=game.budget,
            removed=problem.names(best.removed),
            objective=dict(problem.objective.weights),
            limits=dict(problem.objective.limits),
            value=best.value,
            task_values=dict(zip(tasks, game.task_values[best.removed].tolist(), strict=True)),
            evaluations_used=game.used,
            evaluations_computed=game.computed,
            path=tuple((problem.names(step.removed), step.value) for step in game.path),
            selection=tuple((problem.names(removal), game.selected(removal)) for removal in game.selection_values),
        )

    def with_held_out(self, held_out: tuple[HeldOut, ...]) -> RemovalPlan:
        """This plan with its held-out check."""
        return self.model_copy(update={"held_out": held_out})

    def with_provenance(self, provenance: dict[str, Any]) -> RemovalPlan:
        """This plan with where it was searched (job, game, set-up), as stored with a job's results."""
        return self.model_copy(update={"provenance": provenance})

    def to_json(self) -> str:
        """Versioned JSON text."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> RemovalPlan:
        """Read a plan written by ``to_json``; refuses other formats and newer versions."""
        return read_document(
            cls, text, "RemovalPlan", version=PLAN_VERSION, version_key="version", format_name=PLAN_FORMAT
        )
