"""Service test fixtures: a tiny model saved to disk, one live server shared by the API, CLI and fuzz tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import ThreadServer, job_spec, served_policy, start_thread_server

from shapley_svc.service import Client, JobHandle
from shapley_svc.store.base import JobStatus


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[ThreadServer]:
    """One live server in a thread for the API, CLI and fuzz tests: tokens ``TOKEN`` and ``READ_TOKEN``, two
    jobs at a time, the tiny model's folder and the shared data folder as the policy's roots."""
    store = tmp_path_factory.mktemp("server") / "store.sqlite"
    running = start_thread_server(store, policy=served_policy(tiny_checkpoint))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def finished_job(server: ThreadServer, tiny_checkpoint: Path) -> JobHandle:
    """A job on the live server with two tasks at both granularities and a block plan, run to the end."""
    client = server.client()
    job = client.submit(job_spec(tiny_checkpoint, name="two tasks", granularities=("block", "sublayer"), plans=True))
    final = job.wait(progress=False, poll_interval=0.2, timeout=240)
    assert final.status is JobStatus.SUCCEEDED, final.error
    return job


@pytest.fixture
def client(server: ThreadServer) -> Iterator[Client]:
    with server.client() as connected:
        yield connected
