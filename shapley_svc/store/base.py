"""The results-store protocol: jobs, their results, and the content-addressed coalition-value cache.

One protocol serves the runner (create a job, report progress, cache values, write results) and the service
(list, read, cancel jobs; read results). Results are stored as the estimators' versioned JSON, never pickle.
Cache keys are a game fingerprint (model + value function + granularity, see
:meth:`shapley_svc.values.base.ModelGame.fingerprint`), the set-up that computed the value (device type,
dtype, library versions) and the coalition's bits, so any run with any number of workers reuses every value
computed before under the same set-up, and none computed under another one unless asked to.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from shapley_svc.errors import ShapleySvcError
from shapley_svc.types import Coalitions, Values


class StoreError(ShapleySvcError):
    """The store file is unreadable, from a newer schema, or holds malformed data."""


class JobNotFoundError(ShapleySvcError):
    """No job has the given id."""


class JobStateError(ShapleySvcError):
    """A job status change is not allowed from the job's current status (e.g. cancelling a finished job)."""


class JobStatus(enum.StrEnum):
    """Life cycle of a job: queued -> running -> succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job will not change any more."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class JobRecord:
    """One job as stored: its spec (JSON-able mapping), status, progress, timestamps (UTC) and error."""

    id: str
    spec: dict[str, Any]
    status: JobStatus
    progress: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class ResultRecord:
    """One run's result: job, task, granularity, estimator key, and the ShapleyResult JSON text."""

    job_id: str
    task: str
    granularity: str
    estimator: str
    result_json: str
    created_at: datetime


@dataclass(frozen=True)
class PlanRecord:
    """One searched plan of a job: its name, granularity, and the RemovalPlan JSON text."""

    job_id: str
    name: str
    granularity: str
    plan_json: str
    created_at: datetime


@dataclass(frozen=True)
class CacheLookup:
    """Which coalitions the cache holds (``found``, bool[k]) and their values (float[k, t], NaN where missing)."""

    found: npt.NDArray[np.bool_]
    values: Values


def cacheable(coalitions: Coalitions, values: Values) -> tuple[Coalitions, Values]:
    """bool[k, n] and float[k, t] as a cache stores them; mismatched rows or a non-finite value are a StoreError."""
    coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if len(coalitions) != len(values):
        raise StoreError(f"{len(coalitions)} coalitions but {len(values)} value rows; give one row each")
    if not np.isfinite(values).all():
        raise StoreError("refusing to cache non-finite values: a NaN or infinite value is an evaluation error")
    return coalitions, values


class ValueCache(Protocol):
    """Coalition values by game fingerprint, set-up and coalition; safe to share between threads.

    The *set-up* (device type, dtype, torch and transformers versions, see
    :meth:`shapley_svc.values.base.ModelGame.setup`) is part of the key: a value computed under one set-up is
    not served to another unless a lookup asks for any set-up (``setup=None``) on purpose.
    """

    def lookup_values(
        self, game: str, coalitions: Coalitions, n_tasks: int, *, setup: str | None = None
    ) -> CacheLookup:
        """Cached values of ``coalitions`` (bool[k, n]) under ``game`` and ``setup`` (``None``: any set-up)."""
        ...

    def put_values(self, game: str, coalitions: Coalitions, values: Values, *, setup: str = "") -> None:
        """Cache finite ``values`` (float[k, t]) of ``coalitions``; non-finite values are a StoreError."""
        ...

    def count_values(self, game: str, *, setup: str | None = None) -> int:
        """How many values are cached under ``game`` (and ``setup``; ``None``: every set-up)."""
        ...

    def value_setups(self, game: str) -> dict[str, int]:
        """The set-ups holding values of ``game``, with how many each."""
        ...


class ResultStore(ValueCache, Protocol):
    """Jobs, results and the value cache behind one interface; safe to share between threads."""

    def create_job(self, spec: dict[str, Any], *, job_id: str | None = None) -> JobRecord:
        """Insert a queued job (a fresh id unless ``job_id`` is given; an existing id is a JobStateError)."""
        ...

    def get_job(self, job_id: str) -> JobRecord:
        """The job ``job_id``; JobNotFoundError if there is none."""
        ...

    def list_jobs(self, *, status: JobStatus | None = None, limit: int = 100, offset: int = 0) -> list[JobRecord]:
        """Jobs, newest first, optionally only those with ``status``."""
        ...

    def update_job(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        progress: dict[str, Any] | None = None,
        error: str | None = None,
        only_from: Iterable[JobStatus] | None = None,
    ) -> JobRecord:
        """Change status / progress / error atomically; with ``only_from``, a JobStateError unless the
        current status is one of them. Entering running or a finished status stamps the time."""
        ...

    def put_result(self, job_id: str, *, task: str, granularity: str, estimator: str, result_json: str) -> None:
        """Store (or replace) one run's result JSON."""
        ...

    def get_results(self, job_id: str) -> list[ResultRecord]:
        """Every result of ``job_id``, ordered by granularity, estimator, task."""
        ...

    def put_plan(self, job_id: str, *, name: str, granularity: str, plan_json: str) -> None:
        """Store (or replace) one plan's JSON."""
        ...

    def get_plans(self, job_id: str) -> list[PlanRecord]:
        """Every plan of ``job_id``, ordered by name."""
        ...

    def close(self) -> None:
        """Release every connection; the store is unusable afterwards."""
        ...
