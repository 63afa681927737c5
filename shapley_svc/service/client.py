"""Python client of the HTTP API: submit jobs, follow them, read results and rankings as typed objects.

Example::

    from shapley_svc.service import Client

    with Client("http://127.0.0.1:8000", token="...") as client:
        job = client.submit("job.yaml")          # a JobSpec, a mapping, or a .yaml / .json path
        job.wait(progress=True)                  # a tqdm bar fed by the job's progress
        ranking = job.ranking(level="block", task="wikitext2.neg_loss", top_k=5)
        ranking.as_dataframe()                   # rank, player, value, stderr

Every error the server reports becomes a :class:`ServiceError` subclass carrying the server's message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from shapley_svc.errors import ShapleySvcError
from shapley_svc.service.schemas import (
    ComparisonView,
    Health,
    JobDetail,
    JobInfo,
    JobList,
    JobPlans,
    JobResults,
    Level,
    Order,
    RankingView,
)
from shapley_svc.spec import JobSpec, load_spec
from shapley_svc.store.base import JobStatus

ResponseT = TypeVar("ResponseT", bound=BaseModel)


class ServiceError(ShapleySvcError):
    """The server refused a request or could not be reached; ``status_code`` is the HTTP status, if any."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class AuthenticationError(ServiceError):
    """401 (no token) or 403 (wrong token, or the read-only token on a write): set SHAPLEY_SVC_TOKEN."""


class InvalidRequestError(ServiceError):
    """400, 413 or 422: the spec or a parameter is invalid, or the server's policy refuses it; the message
    lists each bad field (and the policy rule it breaks)."""


class NotFoundError(ServiceError):
    """404: no such job, or the job has no result for the asked level / task / estimator."""


class ConflictError(ServiceError):
    """409: the job's status does not allow this (cancelling a finished job, a result not produced yet)."""


class TooManyJobsError(ServiceError):
    """429: the token has as many queued and running jobs as the server allows; wait for one, or cancel one."""


class ServerUnavailableError(ServiceError):
    """The server cannot be reached or failed (5xx)."""


class JobFailedError(ServiceError):
    """The job ended ``failed``; the message is the job's error."""


class WaitTimeoutError(ServiceError):
    """The job did not finish within the time given to :meth:`JobHandle.wait`."""


_ERROR_CLASSES: dict[int, type[ServiceError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: TooManyJobsError,
}


def _problem(item: dict[str, Any]) -> str:
    """One item of a 422: ``field: problem``, and ``(rule R)`` for a refusal by the server's policy."""
    where = ".".join(str(part) for part in item.get("loc", []) if part != "body") or "(body)"
    kind = str(item.get("type", ""))
    rule = f" (rule {kind.removeprefix('policy.')})" if kind.startswith("policy.") else ""
    return f"{where}: {item.get('msg')}{rule}"


def _error_message(response: httpx.Response) -> str:
    """The server's message: ``detail`` as text, a 422's field list as ``field: problem`` items."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500] or response.reason_phrase
    if isinstance(detail, list):
        problems = [_problem(item) for item in detail if isinstance(item, dict)]
        return "invalid request; fix these fields: " + "; ".join(problems)
    return str(detail) if detail is not None else response.text[:500]


class Client:
    """A connection to a shapley-svc server at ``url``; ``token`` is the write token, or the read-only one
    for a client that only reads."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, model: type[ResponseT], **options: Any) -> ResponseT:
        try:
            response = self._http.request(method, path, **options)
        except httpx.HTTPError as error:
            raise ServerUnavailableError(
                f"cannot reach the shapley-svc server at {self.url} ({error}); is `shapley-svc serve` running there?"
            ) from error
        if response.is_error:
            fallback = ServerUnavailableError if response.status_code >= 500 else ServiceError
            kind = _ERROR_CLASSES.get(response.status_code, fallback)
            raise kind(f"HTTP {response.status_code}: {_error_message(response)}", response.status_code)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as error:
            raise ServiceError(
                f"the server at {self.url} answered {method} {path} with an unexpected body; is it a shapley-svc "
                f"server of a compatible version? ({error.error_count()} problem(s))",
                response.status_code,
            ) from error

    def health(self) -> Health:
        """The server's version and job counts; ServerUnavailableError when it is down."""
        return self._request("GET", "/v1/health", Health)

    def submit(self, spec: JobSpec | Mapping[str, Any] | str | Path) -> JobHandle:
        """Submit a job: a JobSpec, a mapping the server validates, or a spec file (.yaml, .yml, .json)."""
        if isinstance(spec, JobSpec):
            body: Any = spec.model_dump(mode="json")
        elif isinstance(spec, Mapping):
            body = dict(spec)
        else:
            body = load_spec(spec).model_dump(mode="json")
        detail = self._request("POST", "/v1/jobs", JobDetail, json=body)
        return JobHandle(self, detail.id)

    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job (nothing is requested until it is used)."""
        return JobHandle(self, job_id)

    def jobs(self, *, status: JobStatus | str | None = None, limit: int = 100, offset: int = 0) -> list[JobInfo]:
        """Jobs on the server, newest first, optionally only those with ``status``."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = JobStatus(status).value
        return self._request("GET", "/v1/jobs", JobList, params=params).jobs

    def get_job(self, job_id: str) -> JobDetail:
        """The job ``job_id`` with its spec, status and progress."""
        return self._request("GET", f"/v1/jobs/{job_id}", JobDetail)

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a queued or running job (ConflictError if it has finished)."""
        return self._request("POST", f"/v1/jobs/{job_id}/cancel", JobInfo)

    def results(self, job_id: str) -> JobResults:
        """Every result the job has stored so far."""
        return self._request("GET", f"/v1/jobs/{job_id}/results", JobResults)

    def plans(self, job_id: str) -> JobPlans:
        """Every plan the job has stored so far (``.as_dataframe()``; ``.plans[i].removal_plan()`` to prune)."""
        return self._request("GET", f"/v1/jobs/{job_id}/plans", JobPlans)

    def ranking(
        self,
        job_id: str,
        *,
        level: Level = "block",
        task: str | None = None,
        estimator: str | None = None,
        order: Order = "desc",
        top_k: int | None = None,
    ) -> RankingView:
        """Players of one result by importance; ``task`` / ``estimator`` are needed when the job has several."""
        params = {"level": level, "task": task, "estimator": estimator, "order": order, "top_k": top_k}
        return self._request(
            "GET",
            f"/v1/jobs/{job_id}/ranking",
            RankingView,
            params={key: value for key, value in params.items() if value is not None},
        )

    def compare(
        self, job_id: str, *, level: Level = "block", estimator: str | None = None, top_movers: int = 5
    ) -> ComparisonView:
        """Rank correlations between the job's tasks at ``level`` and the players whose rank moves most."""
        params: dict[str, Any] = {"level": level, "top_movers": top_movers}
        if estimator is not None:
            params["estimator"] = estimator
        return self._request("GET", f"/v1/jobs/{job_id}/compare", ComparisonView, params=params)


class JobHandle:
    """One job on a server: follow it, cancel it, read its results and rankings."""

    def __init__(self, client: Client, job_id: str):
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, url={self.client.url!r})"

    def status(self) -> JobDetail:
        """The job's current status, progress and error."""
        return self.client.get_job(self.id)

    def wait(self, *, progress: bool = True, poll_interval: float = 1.0, timeout: float | None = None) -> JobDetail:
        """Poll until the job finishes; a tqdm bar shows its evaluations when ``progress``.

        Returns the final job (succeeded or cancelled); raises JobFailedError if it failed and
        WaitTimeoutError after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.status()
        with tqdm(total=None, desc=f"job {self.id[:8]}", unit="eval", disable=not progress, dynamic_ncols=True) as bar:
            while True:
                if job.progress.evaluations_total is not None:
                    bar.total = job.progress.evaluations_total
                    bar.n = job.progress.evaluations_done
                bar.set_postfix(status=job.status.value, run=job.progress.current_run or "-", refresh=True)
                if job.status.finished:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeoutError(f"job {self.id} is still {job.status.value} after {timeout} s")
                time.sleep(poll_interval)
                job = self.status()
        if job.status is JobStatus.FAILED:
            raise JobFailedError(f"job {self.id} failed: {job.error}")
        return job

    def result(self) -> JobResults:
        """Every result of the job (those finished so far while it runs)."""
        return self.client.results(self.id)

    def plans(self) -> JobPlans:
        """Every plan of the job (those searched so far while it runs)."""
        return self.client.plans(self.id)

    def ranking(
        self,
        *,
        level: Level = "block",
        task: str | None = None,
        estimator: str | None = None,
        order: Order = "desc",
        top_k: int | None = None,
    ) -> RankingView:
        """Players of one result by importance (rank 1 = most important), with values and stderr."""
        return self.client.ranking(self.id, level=level, task=task, estimator=estimator, order=order, top_k=top_k)

    def compare(self, *, level: Level = "block", estimator: str | None = None, top_movers: int = 5) -> ComparisonView:
        """Rank correlations between the job's tasks and the players whose rank moves most."""
        return self.client.compare(self.id, level=level, estimator=estimator, top_movers=top_movers)

    def cancel(self) -> JobInfo:
        """Cancel the job (ConflictError if it has finished)."""
        return self.client.cancel(self.id)
