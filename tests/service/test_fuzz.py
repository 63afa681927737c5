"""Fuzzing the live server from its own OpenAPI schema (schemathesis): no request gets a 5xx.

Reads and cancel get schema-conforming requests with the token, half of them for a job that has
results and half for unknown ids; submit gets only schema-violating bodies (negative mode), so that
fuzzing queues no real job. Examples per operation are bounded, the
Hypothesis example database is off and generation is deterministic.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
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


def _schema(server: ThreadServer, mode: schemathesis.GenerationMode) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # the token is sent with every request; fuzzing it would only make the negative cases auth failures
    schema.config.generation.update(
        modes=[mode], max_examples=EXAMPLES, deterministic=True, with_security_parameters=False
    )
    schema.config.phases.update(phases=["fuzzing"])  # the examples phase builds valid bodies from defaults
    return schema


@pytest.fixture
def conforming_schema(server: ThreadServer) -> schemathesis.BaseSchema:
    return _schema(server, schemathesis.GenerationMode.POSITIVE)


@pytest.fixture
def violating_schema(server: ThreadServer) -> schemathesis.BaseSchema:
    return _schema(server, schemathesis.GenerationMode.NEGATIVE)


conforming = schemathesis.pytest.from_fixture("conforming_schema").exclude(method="POST", path="/v1/jobs")
violating_submit = schemathesis.pytest.from_fixture("violating_schema").include(method="POST", path="/v1/jobs")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@FUZZ_SETTINGS
@conforming.parametrize()
def test_conforming_requests_never_get_a_server_error(case: schemathesis.Case, finished_job: JobHandle) -> None:
    if case.path_parameters and len(case.path_parameters["job_id"]) % 2 == 0:
        case.path_parameters["job_id"] = finished_job.id  # half the cases reach a job with results
    response = case.call(headers=AUTH)
    assert response.status_code < 500, response.text


@FUZZ_SETTINGS
@violating_submit.parametrize()
def test_invalid_job_specs_are_refused_without_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers=AUTH)
    assert response.status_code < 500, response.text
    assert response.status_code != 201, f"an invalid spec was accepted: {case.body!r}"
