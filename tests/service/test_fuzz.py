"""Fuzzing the live server from its own OpenAPI schema (schemathesis): no request gets a 5xx.

Reads and cancel get schema-conforming requests with the token, half of them for a job that has
results and half for unknown ids; submit gets schema-violating bodies (negative mode) on the shared server,
and schema-conforming ones on a server whose policy admits no model, so that fuzzing walks every policy
check and still queues no real job. With the read-only token every operation is fuzzed too: writes must be
403, reads anything but a 5xx. Each operation gets its own bounded Hypothesis run, the example database is
off and generation is deterministic.

The cases come from schemathesis' Hypothesis strategies (``APIOperation.as_strategy``) driven by plain
``@given`` tests, not from its pytest plugin, whose test-item wrapping breaks with each pytest release
(``'Function' object has no attribute '_nodeid'`` under pytest 9.2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from live_server import AUTH, READ_AUTH, ThreadServer, start_thread_server

from shapley_svc.service import JobHandle
from shapley_svc.service.policy import ServicePolicy

pytestmark = pytest.mark.integration

EXAMPLES = 15
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
SUBMIT = ("POST", "/v1/jobs")
WRITES = {SUBMIT, ("POST", "/v1/jobs/{job_id}/cancel")}


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
    assert {op.path for op in chosen} >= {
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/ranking",
        "/v1/jobs/{job_id}/plans",
        "/v1/health",
    }

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


@pytest.fixture(scope="module")
def closed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """A server whose policy admits no model and no lm-eval task: no conforming spec can be queued."""
    policy = ServicePolicy(models=(), lm_eval_tasks=(), executor_kinds=("local",), max_evaluations=64)
    running = start_thread_server(tmp_path_factory.mktemp("closed") / "store.sqlite", policy=policy)
    yield running
    running.stop()


def test_conforming_job_specs_meet_the_policy_and_never_a_server_error(closed_server: ThreadServer) -> None:
    chosen = [op for op in operations(load_schema(closed_server)) if (op.method.upper(), op.path) == SUBMIT]

    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=AUTH)
        assert response.status_code in (413, 422), f"{response.status_code}: {response.text[:300]}"

    fuzz_each(chosen, schemathesis.GenerationMode.POSITIVE, check)
    assert closed_server.client().jobs() == []


def test_the_read_only_token_reads_and_never_writes(server: ThreadServer, finished_job: JobHandle) -> None:
    chosen = operations(load_schema(server))

    def check(case: schemathesis.Case) -> None:
        if case.path_parameters and len(case.path_parameters["job_id"]) % 2 == 0:
            case.path_parameters["job_id"] = finished_job.id
        response = case.call(headers=READ_AUTH)
        if (case.method.upper(), case.path) in WRITES:
            assert response.status_code == 403, f"a write with the read-only token got {response.status_code}"
        else:
            assert response.status_code < 500, f"{case.path_parameters} {case.query}: {response.text}"

    fuzz_each(chosen, schemathesis.GenerationMode.POSITIVE, check)
