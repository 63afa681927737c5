"""Fuzzing the live server from its own OpenAPI schema (schemathesis): no request gets a 5xx.

Reads and cancel get schema-conforming requests with the token, half of them for a job that has
results and half for unknown ids; submit gets only schema-violating bodies (negative mode), so that
fuzzing queues no real job. Each operation gets its own bounded Hypothesis run, the example database is
off and generation is deterministic.

The cases come from schemathesis' Hypothesis strategies (``APIOperation.as_strategy``) driven by plain
``@given`` tests, not from its pytest plugin, whose test-item wrapping breaks with each pytest release
(``'Function' object has no attribute '_nodeid'`` under pytest 9.2).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from live_server import TOKEN, ThreadServer

from shapley_svc.service import JobHandle

pytestmark = pytest.mark.integration

EXAMPLES = 15
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUBMIT = ("POST", "/v1/jobs")


def load_schema(server: ThreadServer) -> schemathesis.BaseSchema:
    """The server's published schema; the token is sent with every request, so security is not fuzzed."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # fuzzing the token would only turn the negative cases into auth failures
    schema.config.generation.update(deterministic=True, with_security_parameters=False)
    return schema


def operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    """Every operation of ``schema``; a part of the schema schemathesis cannot read fails the test."""
    found = []
    for result in schema.get_all_operations():
        if not hasattr(result, "ok"):
            raise AssertionError(f"schemathesis could not read an operation of the schema: {result.err()}")
        found.append(result.ok())
    return found


def fuzz_each(
    chosen: list[schemathesis.APIOperation],
    mode: schemathesis.GenerationMode,
    check: Callable[[schemathesis.Case], None],
) -> None:
    """Run ``check`` on ``EXAMPLES`` generated cases of every operation; fail listing each failing operation."""
    assert chosen, "no operation to fuzz: the schema or the selection is wrong"
    failures = []
    for operation in chosen:

        @FUZZ_SETTINGS
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: schemathesis.Case) -> None:
            check(case)

        try:
            fuzz()
        except AssertionError as error:
            failures.append(f"{operation.method.upper()} {operation.path}: {error}")
    assert not failures, "\n".join(failures)


def test_conforming_requests_never_get_a_server_error(server: ThreadServer, finished_job: JobHandle) -> None:
    chosen = [op for op in operations(load_schema(server)) if (op.method.upper(), op.path) != SUBMIT]
    assert {op.path for op in chosen} >= {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/ranking", "/v1/health"}

    def check(case: schemathesis.Case) -> None:
        if case.path_parameters and len(case.path_parameters["job_id"]) % 2 == 0:
            case.path_parameters["job_id"] = finished_job.id  # half the cases reach a job with results
        response = case.call(headers=AUTH)
        assert response.status_code < 500, f"{case.path_parameters} {case.query}: {response.text}"

    fuzz_each(chosen, schemathesis.GenerationMode.POSITIVE, check)


def test_invalid_job_specs_are_refused_without_a_server_error(server: ThreadServer) -> None:
    chosen = [op for op in operations(load_schema(server)) if (op.method.upper(), op.path) == SUBMIT]

    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=AUTH)
        assert response.status_code < 500, response.text
        assert response.status_code != 201, f"an invalid spec was accepted: {case.body!r}"

    fuzz_each(chosen, schemathesis.GenerationMode.NEGATIVE, check)
