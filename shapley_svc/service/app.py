"""The HTTP API (FastAPI), versioned under ``/v1``; OpenAPI schema at ``/openapi.json``.

Writes (submit, cancel) need ``Authorization: Bearer <token>``: the token is checked by a dependency that
runs before the request body is read, so a write without the token is refused with 401 (a wrong token:
403) whatever its body. Reads need no token. Any unknown job id is a 404. Error bodies are
``{"detail": "<what went wrong and what to do>"}``; a 422 lists each bad field, as FastAPI does.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from shapley_svc import __version__
from shapley_svc.errors import ShapleySvcError
from shapley_svc.service import views
from shapley_svc.service.jobs import JobManager
from shapley_svc.service.schemas import (
    ComparisonView,
    ErrorBody,
    Health,
    JobDetail,
    JobInfo,
    JobList,
    JobResults,
    Level,
    Order,
    RankingView,
)
from shapley_svc.service.settings import ServiceSettings
from shapley_svc.spec import JobSpec
from shapley_svc.store.base import JobNotFoundError, JobStateError, JobStatus
from shapley_svc.store.sqlite import SQLiteStore

logger = logging.getLogger(__name__)

_ERRORS: dict[type[ShapleySvcError], int] = {
    JobNotFoundError: status.HTTP_404_NOT_FOUND,
    views.ResultNotFoundError: status.HTTP_404_NOT_FOUND,
    JobStateError: status.HTTP_409_CONFLICT,
    views.ResultNotReadyError: status.HTTP_409_CONFLICT,
    views.AmbiguousResultError: status.HTTP_400_BAD_REQUEST,
}
_READ_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no job with this id"}}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no bearer token"},
    403: {"model": ErrorBody, "description": "wrong bearer token"},
}
_JOB_ID = Annotated[str, Path(description="the job's id, as returned by POST /v1/jobs")]


def create_app(settings: ServiceSettings) -> FastAPI:
    """The API serving the store ``settings.store``; refuses settings without a token unless ``dev``."""
    settings.check_can_serve()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = SQLiteStore(settings.store)
        manager = JobManager(
            store, str(store.path), max_concurrent=settings.max_concurrent_jobs, ray_address=settings.ray_address
        )
        recovered = manager.start()
        logger.info("event=serving store=%s resumed_jobs=%d", store.path, len(recovered))
        app.state.store, app.state.manager = store, manager
        yield
        still_running = manager.stop()
        if still_running:
            logger.warning("event=stopping running_jobs=%s note=resumed_on_next_start", still_running)
        else:
            store.close()

    app = FastAPI(
        title="shapley-svc",
        version=__version__,
        description="Shapley-value importance of an LLM's decoder blocks and sublayers: submit jobs, read rankings.",
        lifespan=lifespan,
        separate_input_output_schemas=False,
    )
    app.state.api_token = None if settings.token is None else settings.token.get_secret_value().encode()
    _add_error_handlers(app)
    _add_routes(app)
    app.openapi = _openapi_with_job_spec(app)  # type: ignore[method-assign]  # FastAPI's documented override
    return app


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


def _add_error_handlers(app: FastAPI) -> None:
    async def known_error(request: Request, error: Exception) -> JSONResponse:
        code = next(
            (code for kind, code in _ERRORS.items() if isinstance(error, kind)), status.HTTP_500_INTERNAL_SERVER_ERROR
        )
        if code >= 500:
            logger.error("event=request_failed path=%s error=%s", request.url.path, error)
        detail = str(error)
        if isinstance(error, JobNotFoundError):  # the store's message names its file: not for clients
            detail = f"no job with id {request.path_params.get('job_id')!r}; GET /v1/jobs lists the jobs"
        return JSONResponse({"detail": detail}, status_code=code)

    app.add_exception_handler(ShapleySvcError, known_error)


def _add_routes(app: FastAPI) -> None:
    def manager(request: Request) -> JobManager:
        return request.app.state.manager

    def store(request: Request) -> SQLiteStore:
        return request.app.state.store

    @app.get("/v1/health", tags=["service"])
    def health(request: Request) -> Health:
        """Whether the server is up, with its version and how many jobs run or wait."""
        running, queued = manager(request).counts()
        return Health(
            version=__version__,
            schema_version=store(request).schema_version(),
            jobs_running=running,
            jobs_queued=queued,
            auth="none (development)" if app.state.api_token is None else "token",
        )

    @app.post(
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
        request: Request, response: Response, spec: Annotated[JobSpec, Depends(_job_spec_body)]
    ) -> JobDetail:
        """Queue a job. The server runs it on its own store (the spec's ``store`` is replaced) and, for
        ``executor.kind: ray``, on its own Ray (the spec's ``address`` is replaced)."""
        job = manager(request).submit(spec)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return views.job_detail(job)

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(
        request: Request,
        status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    ) -> JobList:
        """Jobs, newest first, with status and progress; ``status`` keeps only jobs with that status."""
        jobs = store(request).list_jobs(status=status_filter, limit=limit, offset=offset)
        return JobList(jobs=[views.job_info(job) for job in jobs], limit=limit, offset=offset)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], responses=_READ_ERRORS)
    def get_job(request: Request, job_id: _JOB_ID) -> JobDetail:
        """One job with its spec, status, progress and error."""
        return views.job_detail(store(request).get_job(job_id))

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        tags=["jobs"],
        dependencies=[Depends(require_token)],
        responses={**_WRITE_ERRORS, **_READ_ERRORS, 409: {"model": ErrorBody, "description": "already finished"}},
    )
    def cancel_job(request: Request, job_id: _JOB_ID) -> JobInfo:
        """Cancel a queued or running job; a running one stops at its next progress report (about 1 s)."""
        return views.job_info(manager(request).cancel(job_id))

    @app.get("/v1/jobs/{job_id}/results", tags=["results"], responses=_READ_ERRORS)
    def get_results(request: Request, job_id: _JOB_ID) -> JobResults:
        """Every stored result of the job: per task, granularity and estimator, values with stderr."""
        job = store(request).get_job(job_id)
        entries = [views.result_entry(record) for record in store(request).get_results(job_id)]
        return JobResults(job_id=job.id, status=job.status, results=entries)

    @app.get(
        "/v1/jobs/{job_id}/ranking",
        tags=["results"],
        responses={
            **_READ_ERRORS,
            400: {"model": ErrorBody, "description": "several tasks or estimators match; name one"},
            409: {"model": ErrorBody, "description": "the job has not produced this result yet"},
        },
    )
    def get_ranking(
        request: Request,
        job_id: _JOB_ID,
        level: Level = "block",
        task: Annotated[str | None, Query(description="needed when the job has several tasks")] = None,
        estimator: Annotated[str | None, Query(description="needed when the job has several estimators")] = None,
        order: Annotated[Order, Query(description="desc: most important first")] = "desc",
        top_k: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    ) -> RankingView:
        """Players of one result by importance (rank 1 = most important), with values and stderr."""
        job = store(request).get_job(job_id)
        entries = [views.result_entry(record) for record in store(request).get_results(job_id)]
        return views.ranking_view(job, entries, level=level, task=task, estimator=estimator, order=order, top_k=top_k)

    @app.get(
        "/v1/jobs/{job_id}/compare",
        tags=["results"],
        responses={
            **_READ_ERRORS,
            400: {"model": ErrorBody, "description": "several estimators match; name one"},
            409: {"model": ErrorBody, "description": "the job has not produced results at this level yet"},
        },
    )
    def compare_tasks(
        request: Request,
        job_id: _JOB_ID,
        level: Level = "block",
        estimator: Annotated[str | None, Query(description="needed when the job has several estimators")] = None,
        top_movers: Annotated[int, Query(ge=0, le=1000)] = 5,
    ) -> ComparisonView:
        """Rank agreement between the tasks' rankings (Spearman, Kendall tau-b) and the players moving most."""
        job = store(request).get_job(job_id)
        entries = [views.result_entry(record) for record in store(request).get_results(job_id)]
        return views.comparison_view(job, entries, level=level, estimator=estimator, top_movers=top_movers)


def _openapi_with_job_spec(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI builder, adding JobSpec (read by a dependency, so FastAPI does not see it) to the components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                separate_input_output_schemas=False,
            )
            spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(spec_schema.pop("$defs", {}))
            components["JobSpec"] = spec_schema
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
