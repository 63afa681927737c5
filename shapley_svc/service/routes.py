"""The routes of the HTTP API on an ``APIRouter``, with the dependencies they share (store, jobs, tokens).

Each route is a module-level function; what it needs from the running server comes from a dependency:
:func:`get_store` and :func:`get_manager` (set up by the app's lifespan), :func:`require_token` on writes,
:func:`require_read` on reads (the write token or the read-only one). The app factory
(:func:`shapley_svc.service.app.create_app`) includes :data:`router`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from shapley_svc import __version__
from shapley_svc.service import schemas, views
from shapley_svc.service.jobs import JobManager
from shapley_svc.spec import JobSpec
from shapley_svc.store.base import JobRecord, JobStatus
from shapley_svc.store.sqlite import SQLiteStore

router = APIRouter()
"""Every route of the API; the result routes come from a sub-router sharing their path prefix and 404."""


def _error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, each with an :class:`~.schemas.ErrorBody` and its description."""
    return {code: {"model": schemas.ErrorBody, "description": text} for code, text in descriptions.items()}


_READ_ERRORS = _error_responses({401: "no bearer token", 403: "wrong bearer token", 404: "no job with this id"})
_WRITE_ERRORS = _error_responses({401: "no bearer token", 403: "wrong bearer token, or the read-only one"})
_CANCEL_ERRORS = {**_READ_ERRORS, **_WRITE_ERRORS, **_error_responses({409: "already finished"})}
_SUBMIT_ERRORS = {
    **_WRITE_ERRORS,
    **_error_responses({413: "the spec is larger than the policy's max_request_bytes"}),
    **_error_responses({429: "the token has as many queued and running jobs as the policy allows"}),
    422: {"description": "the spec is invalid, or the server's policy refuses it; 'detail' lists each field"},
}
# the result views, beside the 404 of every result route: an ambiguous choice (400), not produced yet (409)
_RANKING_ERRORS = _error_responses(
    {400: "several tasks or estimators match; name one", 409: "the job has not produced this result yet"}
)
_COMPARISON_ERRORS = _error_responses(
    {400: "several estimators match; name one", 409: "the job has not produced results at this level yet"}
)


_JOB_ID = Annotated[str, Path(description="the job's id, as returned by POST /v1/jobs")]
_ESTIMATOR = Annotated[str | None, Query(description="needed when the job has several estimators")]


def get_store(request: Request) -> SQLiteStore:
    """The server's results store."""
    return request.app.state.store


def get_manager(request: Request) -> JobManager:
    """The server's job manager (queue and running jobs)."""
    return request.app.state.manager


StoreDep = Annotated[SQLiteStore, Depends(get_store)]
ManagerDep = Annotated[JobManager, Depends(get_manager)]

_BEARER = HTTPBearer(auto_error=False, description="the server's API token (SHAPLEY_SVC_TOKEN)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


@dataclass(frozen=True)
class Access:
    """Who may do what: the write token (None: a development server needing none), the read-only token, and
    whether reads need a token at all."""

    write: bytes | None
    read: bytes | None = None
    open_reads: bool = False

    def role(self, credentials: HTTPAuthorizationCredentials | None) -> str:
        """``write`` or ``read`` for the token presented; 401 without one, 403 for a wrong one."""
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "this endpoint needs the header 'Authorization: Bearer <token>' with the server's API token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        presented = credentials.credentials.encode()
        if self.write is not None and hmac.compare_digest(presented, self.write):
            return "write"
        if self.read is not None and hmac.compare_digest(presented, self.read):
            return "read"
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the bearer token is not this server's API token")


def require_token(request: Request, credentials: Credentials) -> None:
    """The dependency guarding writes: 401 without a bearer token, 403 with a wrong or read-only one."""
    access: Access = request.app.state.access
    if access.write is None:  # a development server started without a token
        return
    if access.role(credentials) != "write":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "this token may only read; submitting and cancelling need the write token"
        )


def require_read(request: Request, credentials: Credentials) -> None:
    """The dependency guarding reads: the write or the read-only token, unless the server opens reads."""
    access: Access = request.app.state.access
    if access.write is None or access.open_reads:
        return
    access.role(credentials)


_result_routes = APIRouter(
    prefix="/v1/jobs/{job_id}", tags=["results"], responses=_READ_ERRORS, dependencies=[Depends(require_read)]
)


async def _job_spec_body(request: Request) -> JobSpec:
    """The request body as a JobSpec, validated strictly against its JSON schema (no coercion of ``true`` to 1
    or ``"5"`` to 5); read only after the token check, so it never preempts a 401/403, and never past the
    policy's ``max_request_bytes`` (413)."""
    limit: int = request.app.state.admission.policy.max_request_bytes
    too_large = HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, f"the job spec is larger than this server takes ({limit} bytes)"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return JobSpec.model_validate_json(bytes(body), strict=True)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**issue, "loc": ("body", *issue["loc"])}
                for issue in error.errors(include_url=False, include_input=False)
            ]
        ) from error


def stored_results(store: StoreDep, job_id: _JOB_ID) -> tuple[JobRecord, list[schemas.ResultEntry]]:
    """The dependency of the result routes: the job ``job_id`` and every result it has stored, as API entries."""
    job = store.get_job(job_id)
    return job, [views.result_entry(record) for record in store.get_results(job_id)]


StoredResults = Annotated[tuple[JobRecord, list[schemas.ResultEntry]], Depends(stored_results)]


def get_disclosure(request: Request) -> views.Disclosure:
    """What responses may show of a stored job (its spec as submitted, errors without server paths)."""
    return request.app.state.disclosure


DisclosureDep = Annotated[views.Disclosure, Depends(get_disclosure)]


@router.get("/v1/health", tags=["service"])
def health(request: Request, store: StoreDep, manager: ManagerDep) -> schemas.Health:
    """Whether the server is up, with its version and how many jobs run or wait."""
    running, queued = manager.counts()
    return schemas.Health(
        version=__version__,
        schema_version=store.schema_version(),
        jobs_running=running,
        jobs_queued=queued,
        auth="none (development)" if request.app.state.access.write is None else "token",
    )


@router.post(
    "/v1/jobs",
    status_code=status.HTTP_201_CREATED,
    tags=["jobs"],
    dependencies=[Depends(require_token)],
    responses=_SUBMIT_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}},
        }
    },
)
def submit_job(
    response: Response,
    manager: ManagerDep,
    disclosure: DisclosureDep,
    spec: Annotated[JobSpec, Depends(_job_spec_body)],
) -> schemas.JobDetail:
    """Queue a job, once the server's policy admits it (paths under its roots, names it knows, limits). The
    server runs it on its own store (the spec's ``store`` is not used) and, for ``executor.kind: ray``, on its
    own Ray (the spec's ``address`` is not used); a ``local`` job uses the server's torch threads."""
    job = manager.submit(spec)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return views.job_detail(job, disclosure)


@router.get("/v1/jobs", tags=["jobs"], dependencies=[Depends(require_read)], responses=_READ_ERRORS)
def list_jobs(
    store: StoreDep,
    disclosure: DisclosureDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> schemas.JobList:
    """Jobs, newest first, with status and progress; ``status`` keeps only jobs with that status."""
    jobs = store.list_jobs(status=status_filter, limit=limit, offset=offset)
    return schemas.JobList(jobs=[views.job_info(job, disclosure) for job in jobs], limit=limit, offset=offset)


@router.get("/v1/jobs/{job_id}", tags=["jobs"], dependencies=[Depends(require_read)], responses=_READ_ERRORS)
def get_job(store: StoreDep, disclosure: DisclosureDep, job_id: _JOB_ID) -> schemas.JobDetail:
    """One job with its spec as submitted, status, progress and error."""
    return views.job_detail(store.get_job(job_id), disclosure)


@router.post(
    "/v1/jobs/{job_id}/cancel",
    tags=["jobs"],
    dependencies=[Depends(require_token)],
    responses=_CANCEL_ERRORS,
)
def cancel_job(manager: ManagerDep, disclosure: DisclosureDep, job_id: _JOB_ID) -> schemas.JobInfo:
    """Cancel a queued or running job; a running one stops at its next progress report."""
    return views.job_info(manager.cancel(job_id), disclosure)


@_result_routes.get("/results")
def get_results(stored: StoredResults) -> schemas.JobResults:
    """Every stored result of the job: per task, granularity and estimator, values with stderr."""
    job, entries = stored
    return schemas.JobResults(job_id=job.id, status=job.status, results=entries)


@_result_routes.get("/plans")
def get_plans(store: StoreDep, job_id: _JOB_ID) -> schemas.JobPlans:
    """Every stored plan of the job: the players each removes, its value, reads and held-out check."""
    job = store.get_job(job_id)
    entries = [views.plan_entry(record) for record in store.get_plans(job_id)]
    return schemas.JobPlans(job_id=job.id, status=job.status, plans=entries)


@_result_routes.get("/ranking", responses=_RANKING_ERRORS)
def get_ranking(
    stored: StoredResults,
    level: schemas.Level = "block",
    task: Annotated[str | None, Query(description="needed when the job has several tasks")] = None,
    estimator: _ESTIMATOR = None,
    order: Annotated[schemas.Order, Query(description="desc: most important first")] = "desc",
    top_k: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> schemas.RankingView:
    """Players of one result by importance (rank 1 = most important), with values and stderr."""
    job, entries = stored
    return views.ranking_view(job, entries, level=level, task=task, estimator=estimator, order=order, top_k=top_k)


@_result_routes.get("/compare", responses=_COMPARISON_ERRORS)
def compare_tasks(
    stored: StoredResults,
    level: schemas.Level = "block",
    estimator: _ESTIMATOR = None,
    top_movers: Annotated[int, Query(ge=0, le=1000)] = 5,
) -> schemas.ComparisonView:
    """Rank agreement between the tasks' rankings (Spearman, Kendall tau-b) and the players moving most."""
    job, entries = stored
    return views.comparison_view(job, entries, level=level, estimator=estimator, top_movers=top_movers)


router.include_router(_result_routes)
