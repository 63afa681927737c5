"""The routes of the HTTP API on an ``APIRouter``, with the dependencies they share (store, jobs, token).

Each route is a module-level function; what it needs from the running server comes from a dependency:
:func:`get_store` and :func:`get_manager` (set up by the app's lifespan), :func:`require_token` on writes.
The app factory (:func:`shapley_svc.service.app.create_app`) includes :data:`router`.
"""

from __future__ import annotations

import hmac
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


_READ_ERRORS = _error_responses({404: "no job with this id"})
_WRITE_ERRORS = _error_responses({401: "no bearer token", 403: "wrong bearer token"})
_CANCEL_ERRORS = {**_WRITE_ERRORS, **_READ_ERRORS, **_error_responses({409: "already finished"})}
# the result views, beside the 404 of every result route: an ambiguous choice (400), not produced yet (409)
_RANKING_ERRORS = _error_responses(
    {400: "several tasks or estimators match; name one", 409: "the job has not produced this result yet"}
)
_COMPARISON_ERRORS = _error_responses(
    {400: "several estimators match; name one", 409: "the job has not produced results at this level yet"}
)
_result_routes = APIRouter(prefix="/v1/jobs/{job_id}", tags=["results"], responses=_READ_ERRORS)


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


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> None:
    """The dependency guarding writes: 401 without a bearer token, 403 with a wrong one."""
    expected: bytes | None = request.app.state.api_token
    if expected is None:  # a development server started without a token
        return
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this endpoint needs the header 'Authorization: Bearer <token>' with the server's API token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the bearer token is not this server's API token")


async def _job_spec_body(request: Request) -> JobSpec:
    """The request body as a JobSpec, validated strictly against its JSON schema (no coercion of ``true`` to 1
    or ``"5"`` to 5); read only after the token check, so it never preempts a 401/403."""
    try:
        return JobSpec.model_validate_json(await request.body(), strict=True)
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


@router.get("/v1/health", tags=["service"])
def health(request: Request, store: StoreDep, manager: ManagerDep) -> schemas.Health:
    """Whether the server is up, with its version and how many jobs run or wait."""
    running, queued = manager.counts()
    return schemas.Health(
        version=__version__,
        schema_version=store.schema_version(),
        jobs_running=running,
        jobs_queued=queued,
        auth="none (development)" if request.app.state.api_token is None else "token",
    )


@router.post(
    "/v1/jobs",
    status_code=status.HTTP_201_CREATED,
    tags=["jobs"],
    dependencies=[Depends(require_token)],
    responses={**_WRITE_ERRORS, 422: {"description": "the spec is invalid; 'detail' lists each bad field"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}},
        }
    },
)
def submit_job(
    response: Response, manager: ManagerDep, spec: Annotated[JobSpec, Depends(_job_spec_body)]
) -> schemas.JobDetail:
    """Queue a job. The server runs it on its own store (the spec's ``store`` is replaced) and, for
    ``executor.kind: ray``, on its own Ray (the spec's ``address`` is replaced)."""
    job = manager.submit(spec)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return views.job_detail(job)


@router.get("/v1/jobs", tags=["jobs"])
def list_jobs(
    store: StoreDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> schemas.JobList:
    """Jobs, newest first, with status and progress; ``status`` keeps only jobs with that status."""
    jobs = store.list_jobs(status=status_filter, limit=limit, offset=offset)
    return schemas.JobList(jobs=[views.job_info(job) for job in jobs], limit=limit, offset=offset)


@router.get("/v1/jobs/{job_id}", tags=["jobs"], responses=_READ_ERRORS)
def get_job(store: StoreDep, job_id: _JOB_ID) -> schemas.JobDetail:
    """One job with its spec, status, progress and error."""
    return views.job_detail(store.get_job(job_id))


@router.post(
    "/v1/jobs/{job_id}/cancel",
    tags=["jobs"],
    dependencies=[Depends(require_token)],
    responses=_CANCEL_ERRORS,
)
def cancel_job(manager: ManagerDep, job_id: _JOB_ID) -> schemas.JobInfo:
    """Cancel a queued or running job; a running one stops at its next progress report."""
    return views.job_info(manager.cancel(job_id))


@_result_routes.get("/results")
def get_results(stored: StoredResults) -> schemas.JobResults:
    """Every stored result of the job: per task, granularity and estimator, values with stderr."""
    job, entries = stored
    return schemas.JobResults(job_id=job.id, status=job.status, results=entries)


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
