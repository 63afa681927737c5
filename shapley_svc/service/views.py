"""Stored jobs and results turned into API responses: progress, result entries, rankings, rank comparisons.

Pure functions of store records (no HTTP), so the server and tests share them. Importance order breaks
ties by depth: of two equal players the earlier one ranks as more important, as pruning removes the
deeper one first (the convention of :meth:`shapley_svc.ranking.Ranking.order`). A :class:`Disclosure`
says what a response may show of a job: its spec as submitted, and its error without the server's paths.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shapley_svc.errors import ConfigError, ShapleySvcError
from shapley_svc.service.schemas import (
    ComparisonView,
    JobDetail,
    JobInfo,
    JobProgress,
    Level,
    Order,
    PlanEntry,
    RankedPlayer,
    RankingView,
    RankMove,
    ResultEntry,
    RunProgress,
    TaskPairComparison,
)
from shapley_svc.spec import JobSpec
from shapley_svc.stats import kendall_tau_b, spearman
from shapley_svc.store.base import JobRecord, JobStatus, PlanRecord, ResultRecord

if TYPE_CHECKING:
    from shapley_svc.service.admission import Admission

SERVER_PATH = "<server path>"
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])[/~][^\s'\"(),;]*")


class ResultNotFoundError(ShapleySvcError):
    """The job has no result for the asked level / task / estimator (the message lists those it has)."""


class ResultNotReadyError(ShapleySvcError):
    """The asked result does not exist yet because the job has not finished."""


class AmbiguousResultError(ShapleySvcError):
    """Several results match and the request did not say which (the message lists the choices)."""


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite (JSON has no NaN)."""
    number = float(value)
    return number if math.isfinite(number) else None


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def redact(text: str, *, sent: Iterable[str], private: Iterable[str]) -> str:
    """``text`` with each ``private`` string and every absolute path not under one the caller ``sent`` hidden."""
    for secret in sorted(filter(None, private), key=len, reverse=True):
        text = text.replace(secret, SERVER_PATH)
    prefixes = {
        form.rstrip("/")
        for value in sent
        if value.startswith(("/", "~"))
        for form in (value, os.path.expanduser(value))
    }

    def shown(match: re.Match[str]) -> str:
        path = match.group()
        return path if any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes) else SERVER_PATH

    return _ABSOLUTE_PATH.sub(shown, text)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@dataclass(frozen=True)
class Disclosure:
    """What responses show of a stored job: its spec as submitted (``admission`` takes off what the server
    bound) and its error with ``private`` strings (store, Ray address) and server paths hidden."""

    admission: Admission | None = None
    private: tuple[str, ...] = ()

    def spec(self, job: JobRecord) -> dict[str, Any]:
        """The job's spec as it was submitted."""
        return job.spec if self.admission is None else self.admission.submitted(job.spec)

    def error(self, job: JobRecord) -> str | None:
        """The job's error, showing only paths under those its spec sent."""
        if job.error is None:
            return None
        return redact(job.error, sent=_strings(self.spec(job)), private=self.private)


def _current_run(current: dict[str, Any] | None) -> str | None:
    """``granularity/estimator`` of the run in progress, or ``plan/name`` while a plan is searched."""
    if current is None:
        return None
    if "plan" in current:
        return f"plan/{current['plan']}"
    return f"{current.get('granularity')}/{current.get('estimator')}"


def job_progress(job: JobRecord) -> JobProgress:
    """Progress of ``job`` from its spec (runs x budget) and the driver's progress report."""
    try:
        spec = JobSpec.model_validate(job.spec)
    except ValueError:  # a job stored by another version of the spec: report what the progress says
        spec = None
    runs = job.progress.get("runs", []) if isinstance(job.progress.get("runs"), list) else []
    current = job.progress.get("current") if isinstance(job.progress.get("current"), dict) else None
    cache_hits = sum(int(run.get("cache_hits", 0)) for run in runs if isinstance(run, dict))
    if current is not None:
        cache_hits += int(current.get("cache_hits", 0))
    finished = [RunProgress.model_validate(run) for run in runs if isinstance(run, dict)]
    if spec is None:
        return JobProgress(runs_done=len(runs), cache_hits=cache_hits, runs=finished)
    runs_total = len(spec.players.granularities) * len(spec.estimators)
    budget = spec.budget.evaluations
    total = runs_total * budget
    done = min(total, len(runs) * budget + (min(int(current.get("told", 0)), budget) if current else 0))
    if job.status is JobStatus.SUCCEEDED:
        done = total
    return JobProgress(
        runs_done=min(len(runs), runs_total),
        runs_total=runs_total,
        current_run=_current_run(current),
        evaluations_done=done,
        evaluations_total=total,
        cache_hits=cache_hits,
        fraction=done / total,
        runs=finished,
    )


def job_info(job: JobRecord, disclosure: Disclosure | None = None) -> JobInfo:
    """The API view of ``job`` without its spec."""
    shown = disclosure or Disclosure()
    name = job.spec.get("name")
    return JobInfo(
        id=job.id,
        name=name if isinstance(name, str) else None,
        status=job.status,
        progress=job_progress(job),
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=shown.error(job),
    )


def job_detail(job: JobRecord, disclosure: Disclosure | None = None) -> JobDetail:
    """The API view of ``job`` with its spec as submitted."""
    shown = disclosure or Disclosure()
    return JobDetail(**job_info(job, shown).model_dump(), spec=_json_safe(shown.spec(job)))


def result_entry(record: ResultRecord) -> ResultEntry:
    """One stored single-task ShapleyResult as an API entry (non-finite numbers become None)."""
    data = json.loads(record.result_json)
    return ResultEntry(
        task=record.task,
        granularity=record.granularity,
        estimator=record.estimator,
        method=str(data["estimator"]),
        players=list(data["player_names"]),
        values=[finite_or_none(value) for value in data["values"][0]],
        stderr=[finite_or_none(value) for value in data["stderr"][0]],
        counts=[int(count) for count in data["counts"]],
        evaluations_used=int(data["evaluations_used"]),
        v_full=finite_or_none(data["v_full"][0]),
        v_empty=finite_or_none(data["v_empty"][0]),
        seed=int(data["seed"]),
        params=_json_safe(data.get("params", {})),
        created_at=record.created_at,
    )


def plan_entry(record: PlanRecord) -> PlanEntry:
    """One stored RemovalPlan as an API entry."""
    data = _json_safe(json.loads(record.plan_json))
    return PlanEntry(
        name=record.name,
        granularity=record.granularity,
        method=str(data["method"]),
        k=int(data["k"]),
        removed=list(data["removed"]),
        value=float(data["value"]),
        evaluations_used=int(data["evaluations_used"]),
        plan=data,
        created_at=record.created_at,
    )


def select_results(
    job: JobRecord, entries: list[ResultEntry], level: Level, task: str | None, estimator: str | None
) -> list[ResultEntry]:
    """The entries of ``level`` matching ``task`` / ``estimator`` (None: any); none found is an error.

    ResultNotReadyError while the job may still produce them, ResultNotFoundError once it has finished.
    """
    chosen = [
        entry
        for entry in entries
        if entry.granularity == level
        and (task is None or entry.task == task)
        and (estimator is None or entry.estimator == estimator)
    ]
    if chosen:
        return chosen
    asked = f"level {level!r}" + (f", task {task!r}" if task else "")
    asked += f", estimator {estimator!r}" if estimator else ""
    if not job.status.finished:
        raise ResultNotReadyError(f"job {job.id} is {job.status.value} and has no result for {asked} yet; wait for it")
    available = ", ".join(sorted({f"{e.granularity}/{e.estimator}/{e.task}" for e in entries})) or "none"
    raise ResultNotFoundError(
        f"job {job.id} ({job.status.value}) has no result for {asked}; it has (level/estimator/task): {available}"
    )


def _only(values: set[str], what: str, parameter: str) -> str:
    if len(values) > 1:
        raise AmbiguousResultError(
            f"several {what}s match ({', '.join(sorted(values))}); choose one with the {parameter} parameter "
            f"(--{parameter} on the command line)"
        )
    return next(iter(values))


def importance_ranks(values: list[float | None]) -> list[int]:
    """Rank of each player, 1 = most important (highest value); undefined values rank last; ties by depth."""
    order = sorted(
        range(len(values)),
        key=lambda index: (values[index] is None, -(values[index] or 0.0), index),
    )
    ranks = [0] * len(values)
    for rank, index in enumerate(order, start=1):
        ranks[index] = rank
    return ranks


def ranking_view(
    job: JobRecord,
    entries: list[ResultEntry],
    *,
    level: Level,
    task: str | None,
    estimator: str | None,
    order: Order,
    top_k: int | None,
) -> RankingView:
    """The players of the one matching result by importance; ``top_k`` keeps the first k in ``order``."""
    chosen = select_results(job, entries, level, task, estimator)
    estimator_key = _only({entry.estimator for entry in chosen}, "estimator", "estimator")
    task_name = _only({entry.task for entry in chosen}, "task", "task")
    (entry,) = [e for e in chosen if e.estimator == estimator_key and e.task == task_name]
    ranks = importance_ranks(entry.values)
    players = sorted(
        (
            RankedPlayer(rank=rank, player=player, value=value, stderr=stderr)
            for rank, player, value, stderr in zip(ranks, entry.players, entry.values, entry.stderr, strict=True)
        ),
        key=lambda ranked: ranked.rank,
        reverse=order == "asc",
    )
    return RankingView(
        job_id=job.id,
        level=level,
        task=entry.task,
        estimator=entry.estimator,
        order=order,
        n_players=len(entry.players),
        evaluations_used=entry.evaluations_used,
        players=players[:top_k] if top_k is not None else players,
    )


def defined_or_none(statistic: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray) -> float | None:
    """``statistic(a, b)`` as a finite float, or None where it is undefined (fewer than two players, constant)."""
    if len(a) < 2:
        return None
    try:
        return finite_or_none(float(statistic(a, b)))
    except ConfigError:
        return None


def comparison_view(
    job: JobRecord, entries: list[ResultEntry], *, level: Level, estimator: str | None, top_movers: int
) -> ComparisonView:
    """Rank correlations between every pair of tasks' rankings at ``level``, and their biggest rank moves."""
    chosen = select_results(job, entries, level, None, estimator)
    estimator_key = _only({entry.estimator for entry in chosen}, "estimator", "estimator")
    by_task = {entry.task: entry for entry in chosen if entry.estimator == estimator_key}
    pairs = []
    for task_a, task_b in itertools.combinations(sorted(by_task), 2):
        entry_a, entry_b = by_task[task_a], by_task[task_b]
        if entry_a.players != entry_b.players:
            raise ResultNotFoundError(f"tasks {task_a!r} and {task_b!r} of job {job.id} rank different players")
        values_a = np.array([np.nan if v is None else v for v in entry_a.values])
        values_b = np.array([np.nan if v is None else v for v in entry_b.values])
        defined = np.isfinite(values_a) & np.isfinite(values_b)
        ranks_a, ranks_b = importance_ranks(entry_a.values), importance_ranks(entry_b.values)
        moves = [
            RankMove(player=player, rank_a=rank_a, rank_b=rank_b, shift=rank_b - rank_a)
            for player, rank_a, rank_b in zip(entry_a.players, ranks_a, ranks_b, strict=True)
            if rank_a != rank_b
        ]
        moves.sort(key=lambda move: (-abs(move.shift), move.rank_a))
        pairs.append(
            TaskPairComparison(
                task_a=task_a,
                task_b=task_b,
                spearman=defined_or_none(spearman, values_a[defined], values_b[defined]) if defined.sum() > 1 else None,
                kendall=defined_or_none(kendall_tau_b, values_a[defined], values_b[defined])
                if defined.sum() > 1
                else None,
                movers=moves[:top_movers],
            )
        )
    return ComparisonView(job_id=job.id, level=level, estimator=estimator_key, tasks=sorted(by_task), pairs=pairs)
