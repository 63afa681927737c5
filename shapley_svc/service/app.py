"""The HTTP API (FastAPI), versioned under ``/v1``; OpenAPI schema at ``/openapi.json``.

Every job route needs ``Authorization: Bearer <token>``: writes (submit, cancel) the write token, reads the
write token or the read-only one (unless the settings open reads; ``/v1/health`` and the schema are open).
The token is checked by a dependency that runs before the request body is read, so a request without it is
refused with 401 (a wrong token: 403) whatever its body. A submitted spec must pass the server's policy
(:mod:`shapley_svc.service.admission`) before it is queued. Any unknown job id is a 404. Error bodies are
``{"detail": "<what went wrong and what to do>"}``; a 422 lists each bad field, as FastAPI does, a policy
refusal with ``type`` ``policy.<rule>``; a 5xx says only that the server failed (the log has the rest).

This module assembles the app (lifespan, error handlers, OpenAPI); the routes are in
:mod:`shapley_svc.service.routes`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from shapley_svc import __version__
from shapley_svc.errors import ShapleySvcError
from shapley_svc.service import routes, views
from shapley_svc.service.admission import Admission, JobQuotaError, PolicyError
from shapley_svc.service.jobs import JobManager
from shapley_svc.service.settings import ServiceSettings
from shapley_svc.spec import JobSpec
from shapley_svc.store.base import JobNotFoundError, JobStateError
from shapley_svc.store.sqlite import SQLiteStore

logger = logging.getLogger(__name__)

_ERRORS: dict[type[ShapleySvcError], int] = {
    JobNotFoundError: status.HTTP_404_NOT_FOUND,
    views.ResultNotFoundError: status.HTTP_404_NOT_FOUND,
    JobStateError: status.HTTP_409_CONFLICT,
    views.ResultNotReadyError: status.HTTP_409_CONFLICT,
    views.AmbiguousResultError: status.HTTP_400_BAD_REQUEST,
    JobQuotaError: status.HTTP_429_TOO_MANY_REQUESTS,
}


def create_app(settings: ServiceSettings) -> FastAPI:
    """The API serving the store ``settings.store`` under ``settings.policy``; refuses settings without a token
    unless ``dev``."""
    settings.check_can_serve()
    admission = Admission(settings.policy, dev=settings.dev)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = SQLiteStore(settings.store)
        manager = JobManager(
            store,
            str(store.path),
            max_concurrent=settings.max_concurrent_jobs,
            ray_address=settings.ray_address,
            admission=admission,
        )
        recovered = manager.start()
        logger.info("event=serving store=%s resumed_jobs=%d", store.path, len(recovered))
        private = (str(store.path), settings.store, settings.ray_address or "")
        app.state.store, app.state.manager = store, manager
        app.state.disclosure = views.Disclosure(admission, private)
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
    app.state.access = routes.Access(
        write=None if settings.token is None else settings.token.get_secret_value().encode(),
        read=None if settings.read_token is None else settings.read_token.get_secret_value().encode(),
        open_reads=settings.open_reads,
    )
    app.state.admission = admission
    _add_error_handlers(app)
    app.include_router(routes.router)
    app.openapi = _openapi_with_job_spec(app)  # type: ignore[method-assign]  # FastAPI's documented override
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def known_error(request: Request, error: Exception) -> JSONResponse:
        code = next(
            (code for kind, code in _ERRORS.items() if isinstance(error, kind)), status.HTTP_500_INTERNAL_SERVER_ERROR
        )
        detail = str(error)
        if code >= 500:  # its message may name the server's files: the log keeps it, the client gets none of it
            logger.error("event=request_failed path=%s error=%s", request.url.path, error)
            detail = "the server failed on this request; its log says why"
        if isinstance(error, JobNotFoundError):  # the store's message names its file: not for clients
            detail = f"no job with id {request.path_params.get('job_id')!r}; GET /v1/jobs lists the jobs"
        headers = {"Retry-After": "10"} if code == status.HTTP_429_TOO_MANY_REQUESTS else None
        return JSONResponse({"detail": detail}, status_code=code, headers=headers)

    async def policy_refusal(request: Request, error: Exception) -> JSONResponse:
        """A 422 in FastAPI's shape: one item per violation, naming the field and the rule."""
        violations = error.violations if isinstance(error, PolicyError) else ()
        detail = [
            {"loc": ["body", *item.field], "msg": item.message, "type": f"policy.{item.rule}"} for item in violations
        ]
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    app.add_exception_handler(ShapleySvcError, known_error)
    app.add_exception_handler(PolicyError, policy_refusal)


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
