"""A server killed mid-job and started again on the same store loses no job, result or cached value.

The first server is a ``shapley-svc serve`` subprocess, killed with SIGKILL like a crashing machine; the
second serves the same store file from a thread of the test process (torch already imported there).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from live_server import WIKITEXT, Server, job_spec, served_policy, start_server, start_thread_server

from shapley_svc.store.base import JobStatus

pytestmark = pytest.mark.integration


def cache_counts(store: Path) -> dict[str, int]:
    """Cached coalition values per game fingerprint, read straight from the SQLite file."""
    with sqlite3.connect(store) as connection:
        return dict(connection.execute("SELECT game, COUNT(*) FROM value_cache GROUP BY game").fetchall())


def test_a_restart_resumes_unfinished_jobs_and_keeps_every_job_result_and_cached_value(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    store = tmp_path / "store.sqlite"
    policy = served_policy(tiny_checkpoint)
    first: Server = start_server(store, tmp_path, max_jobs=1, policy=policy)
    try:
        with first.client() as client:
            done = client.submit(job_spec(tiny_checkpoint, name="done", arc=False))
            assert done.wait(progress=False, poll_interval=0.2, timeout=240).status is JobStatus.SUCCEEDED
            long = client.submit(
                job_spec(tiny_checkpoint, name="long", granularities=("sublayer",), arc=False, windows=48)
            )
            waiting = client.submit(job_spec(tiny_checkpoint, name="waiting", arc=False, first_window=9))
            deadline = time.monotonic() + 240
            while long.status().progress.evaluations_done == 0:
                assert time.monotonic() < deadline and long.status().status is JobStatus.RUNNING
                time.sleep(0.1)
            before_jobs = {job.id: job.status for job in client.jobs()}
            before_results = done.result()
    finally:
        first.stop(crash=True)
    assert before_jobs == {done.id: JobStatus.SUCCEEDED, long.id: JobStatus.RUNNING, waiting.id: JobStatus.QUEUED}
    cached_before = cache_counts(store)
    assert sum(cached_before.values()) > 16, "the killed job had cached nothing"

    second = start_thread_server(store, policy=policy)
    try:
        with second.client() as client:
            assert {job.id for job in client.jobs()} == set(before_jobs)
            assert client.results(done.id) == before_results
            for job in (long, waiting):
                final = client.job(job.id).wait(progress=False, poll_interval=0.2, timeout=240)
                assert final.status is JobStatus.SUCCEEDED, final.error
            (result,) = client.results(long.id).results
            assert result.task == WIKITEXT and sum(result.values) == pytest.approx(
                result.v_full - result.v_empty, abs=1e-9
            )
            (run,) = client.get_job(long.id).progress.runs
    finally:
        second.stop()
    game = result.params["provenance"]["game"]
    assert run.cache_hits >= cached_before[game] > 0, "values cached before the crash were not reused"
    assert run.evaluated + run.cache_hits == run.told == 256, "a cached coalition was evaluated again"
    cached_after = cache_counts(store)
    assert all(cached_after[key] >= count for key, count in cached_before.items())
