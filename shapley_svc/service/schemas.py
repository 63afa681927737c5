"""Request and response models of the HTTP API, shared by the server and the Python client.

Floats that can be undefined (a stderr from one sample, a correlation of a constant ranking) are ``None``
in JSON, never NaN. Ranks count from 1, the most important player; ``value`` is the player's Shapley value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from shapley_svc.players import Granularity
from shapley_svc.store.base import JobStatus

if TYPE_CHECKING:
    import pandas as pd

    from shapley_svc.planning.plan import RemovalPlan

Level = Granularity
Order = Literal["asc", "desc"]


class _Response(BaseModel):
    """Base of every response: immutable; unknown fields ignored, so an older client reads a newer server."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def _frame(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> pd.DataFrame:
    """A pandas DataFrame of ``rows`` (tuples in ``columns`` order); pandas is imported only when one is asked for."""
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(columns))


class RunProgress(_Response):
    """One finished run (granularity x estimator): coalitions told, evaluated by workers, served by the cache."""

    granularity: str
    estimator: str
    told: int = 0
    evaluated: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    stopped_by: str = ""


class JobProgress(_Response):
    """How far a job is: runs (granularity x estimator) done of all, evaluations told of the budget."""

    runs_done: int = Field(ge=0)
    runs_total: int | None = Field(None, description="granularities x estimators; None if the spec is unreadable")
    current_run: str | None = Field(None, description="'granularity/estimator' of the run in progress")
    evaluations_done: int = Field(0, ge=0, description="coalition values told so far; a finished run counts whole")
    evaluations_total: int | None = Field(None, description="runs_total x the budget per run")
    cache_hits: int = Field(0, ge=0, description="values served by the coalition-value cache so far")
    fraction: float | None = Field(None, ge=0, le=1, description="evaluations_done / evaluations_total")
    runs: list[RunProgress] = Field(default_factory=list, description="the runs finished so far")


class JobInfo(_Response):
    """A job's status, progress, timestamps (UTC) and error."""

    id: str
    name: str | None = None
    status: JobStatus
    progress: JobProgress
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class JobDetail(JobInfo):
    """A job with its spec as submitted (the server's store, Ray address and folders are never shown)."""

    spec: dict[str, JsonValue]


class JobList(_Response):
    """One page of jobs, newest first."""

    jobs: list[JobInfo]
    limit: int
    offset: int


class ResultEntry(_Response):
    """One run's Shapley values for one task: per-player values and stderr, with counts and provenance."""

    task: str
    granularity: Level
    estimator: str = Field(description="the estimator's key in the spec (its label, else its name)")
    method: str = Field(description="the estimator algorithm that produced the values")
    players: list[str]
    values: list[float | None]
    stderr: list[float | None]
    counts: list[int]
    evaluations_used: int
    v_full: float | None
    v_empty: float | None
    seed: int
    params: dict[str, JsonValue]
    created_at: datetime


class JobResults(_Response):
    """Every result a job has stored so far (a running job shows the runs it finished)."""

    job_id: str
    status: JobStatus
    results: list[ResultEntry]

    def as_dataframe(self) -> pd.DataFrame:
        """One row per (granularity, estimator, task, player): value, stderr, count."""
        return _frame(
            ("granularity", "estimator", "task", "player", "value", "stderr", "count"),
            (
                (entry.granularity, entry.estimator, entry.task, player, value, stderr, count)
                for entry in self.results
                for player, value, stderr, count in zip(
                    entry.players, entry.values, entry.stderr, entry.counts, strict=True
                )
            ),
        )


class PlanEntry(_Response):
    """One stored plan of a job: its name, the players it removes, what they cost, and the whole plan."""

    name: str = Field(description="the plan's name in the spec (granularity-target-size unless named)")
    granularity: Level
    method: str
    k: int
    removed: list[str]
    value: float = Field(description="the objective with the plan's players removed, on the calibration data")
    evaluations_used: int
    plan: dict[str, JsonValue] = Field(description="the RemovalPlan JSON (shapley-svc prune --plan takes it)")
    created_at: datetime

    def removal_plan(self) -> RemovalPlan:
        """The plan as a :class:`~shapley_svc.planning.plan.RemovalPlan` (e.g. to prune with it)."""
        from shapley_svc.planning.plan import RemovalPlan

        return RemovalPlan.model_validate(self.plan)


class JobPlans(_Response):
    """Every plan a job has stored so far (its plans run after its estimators)."""

    job_id: str
    status: JobStatus
    plans: list[PlanEntry]

    def as_dataframe(self) -> pd.DataFrame:
        """One row per (plan, held-out task): players removed, calibration value, held-out difference and
        its 95% interval (None where the plan has no held-out check)."""
        rows = []
        for entry in self.plans:
            head = (entry.name, entry.granularity.value, entry.method, entry.k, ", ".join(entry.removed), entry.value)
            checks = entry.removal_plan().held_out or (None,)
            for check in checks:
                held = (None,) * 4 if check is None else (check.task, check.difference, check.low, check.high)
                rows.append((*head, entry.evaluations_used, *held))
        columns = ("plan", "granularity", "method", "k", "removed", "value", "evaluations_used")
        return _frame((*columns, "held_out_task", "held_out_difference", "low", "high"), rows)


class RankedPlayer(_Response):
    """One player in a ranking: its rank (1 = most important), Shapley value and stderr."""

    rank: int = Field(ge=1)
    player: str
    value: float | None
    stderr: float | None


class RankingView(_Response):
    """The players of one (level, task, estimator) result ordered by importance, with values and stderr."""

    job_id: str
    level: Level
    task: str
    estimator: str
    order: Order = Field(description="desc: most important first; asc: least important (first to prune) first")
    n_players: int
    evaluations_used: int
    players: list[RankedPlayer] = Field(description="top_k of them when top_k was given")

    def as_dataframe(self) -> pd.DataFrame:
        """One row per listed player: rank, player, value, stderr (in the listed order)."""
        return _frame(
            ("rank", "player", "value", "stderr"),
            ((entry.rank, entry.player, entry.value, entry.stderr) for entry in self.players),
        )


class RankMove(_Response):
    """A player whose rank differs between two tasks: ``shift = rank_b - rank_a`` (positive: less important in b)."""

    player: str
    rank_a: int
    rank_b: int
    shift: int


class TaskPairComparison(_Response):
    """Rank agreement of two tasks' rankings: Spearman's rho, Kendall's tau-b, and the biggest movers."""

    task_a: str
    task_b: str
    spearman: float | None = Field(description="None when a ranking is constant")
    kendall: float | None = Field(description="tau-b; None when a ranking is constant")
    movers: list[RankMove]


class ComparisonView(_Response):
    """Every pair of tasks of one (level, estimator): rank correlations and the players that move most."""

    job_id: str
    level: Level
    estimator: str
    tasks: list[str]
    pairs: list[TaskPairComparison]

    def as_dataframe(self) -> pd.DataFrame:
        """One row per task pair: task_a, task_b, spearman, kendall, and the top mover's name and shift."""
        return _frame(
            ("task_a", "task_b", "spearman", "kendall", "top_mover", "top_shift"),
            (
                (
                    pair.task_a,
                    pair.task_b,
                    pair.spearman,
                    pair.kendall,
                    pair.movers[0].player if pair.movers else None,
                    pair.movers[0].shift if pair.movers else None,
                )
                for pair in self.pairs
            ),
        )


class Health(_Response):
    """The server is up: its version, store schema version and how many jobs run or wait."""

    status: Literal["ok"] = "ok"
    version: str
    schema_version: int
    jobs_running: int
    jobs_queued: int
    auth: Literal["token", "none (development)"]


class ErrorBody(_Response):
    """The body of every error response but 422: a message saying what went wrong and what to do."""

    detail: str
