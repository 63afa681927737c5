"""Jobs on a private local Ray (2 CPU actors, tiny model): same result as in process for the same seed, also
when an actor is killed mid-run (same number of evaluations), and an actor that cannot load its model fails
the job with the reason.

Starting an actor imports torch and transformers in a fresh process (10-25 s on a busy 2-core machine), so
one pool serves every test of this module.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.errors import ModelLoadError
from shapley_svc.runner.driver import JobOutcome, run_job
from shapley_svc.runner.executors import Chunk, ChunkResult, GameWorker, RayActorPool, WorkerSetup
from shapley_svc.spec import JobSpec, parse_spec
from shapley_svc.store import JobStatus, SQLiteStore

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A Ray of our own (2 CPUs, its own temp dir), never one another user started on this machine."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=temp_dir)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def job(model: Path, store: Path, kind: str) -> JobSpec:
    """Blocks and sublayers, two seeded estimators, a stopping rule; on Ray or in process."""
    task = {"corpus": "wikitext2", "data_dir": str(default_data_dir()), "window": 32, "windows": 2}
    return parse_spec(
        {
            "model": {"name": str(model), "dtype": "float32"},
            "players": {"granularities": ["block", "sublayer"]},
            "tasks": [{"name": "lm_loss", "params": task}],
            "estimators": [{"name": "permutation", "seed": 3}, {"name": "kernelshap", "seed": 5}],
            "budget": {"evaluations": 64, "stopping": [{"name": "rank_stable", "params": {"checkpoints": 3}}]},
            "executor": {"kind": kind, "num_workers": 2, "chunk_size": 4, "max_in_flight": 4},
            "store": {"path": str(store)},
        }
    )


@pytest.fixture(scope="module")
def pool(local_ray: None, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayActorPool]:
    spec = job(tiny_checkpoint, tmp_path_factory.mktemp("unused") / "s.sqlite", "ray")
    started = RayActorPool(WorkerSetup.from_spec(spec), spec.executor)
    yield started
    started.close()


@pytest.fixture(scope="module")
def in_process(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[JobOutcome, dict]:
    """The reference: the same job in this process, and its stored results."""
    spec = job(tiny_checkpoint, tmp_path_factory.mktemp("local") / "local.sqlite", "local")
    outcome = run_job(spec, progress_bar=False)
    return outcome, stored(Path(spec.store.path), outcome.job_id)


def stored(store_path: Path, job_id: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The job's results by (granularity, estimator, task), without the job id recorded in their provenance."""
    with SQLiteStore(store_path) as store:
        results = {(r.granularity, r.estimator, r.task): json.loads(r.result_json) for r in store.get_results(job_id)}
    for result in results.values():
        assert result["params"]["provenance"].pop("job_id") == job_id
    return results


def counts(outcome: JobOutcome) -> list[tuple[str, str, int, int, str]]:
    """Per run: granularity, estimator, coalitions told and evaluated, and why it stopped."""
    return [
        (run.granularity, run.estimator, run.stats.told, run.stats.evaluated, run.stats.stopped_by)
        for run in outcome.runs
    ]


class KillingPool:
    """The pool, with one of its actors killed (``ray.kill``) as soon as the first chunk comes back."""

    def __init__(self, pool: RayActorPool):
        self.pool = pool
        self.killed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)

    def wait(self, timeout: float | None = None) -> list[ChunkResult]:
        results = self.pool.wait(timeout)
        if results and not self.killed:
            self.killed = True
            ray.kill(self.pool.actors()[0], no_restart=True)
        return results


def test_pool_values_equal_in_process_values(pool: RayActorPool, tiny_checkpoint: Path) -> None:
    coalitions = np.random.default_rng(0).random((12, 8)) < 0.5
    setup = WorkerSetup.from_spec(job(tiny_checkpoint, tiny_checkpoint / "unused.sqlite", "local"))
    expected = GameWorker.from_setup(setup).evaluate("sublayer", coalitions)
    assert pool.games()["sublayer"].n_players == 8
    for index, start in enumerate(range(0, 12, 4)):
        pool.submit(Chunk(index, "sublayer", coalitions[start : start + 4]))
    results: list[ChunkResult] = []
    while pool.in_flight:
        results.extend(pool.wait(timeout=60))
    assert sorted(result.chunk.id for result in results) == [0, 1, 2]
    assert {result.worker for result in results} == {0, 1}
    got = np.concatenate([result.values for result in sorted(results, key=lambda result: result.chunk.id)])
    np.testing.assert_array_equal(got, expected)


def test_job_on_two_actors_equals_the_in_process_job(
    pool: RayActorPool, tiny_checkpoint: Path, tmp_path: Path, in_process: tuple[JobOutcome, dict]
) -> None:
    reference, reference_results = in_process
    spec = job(tiny_checkpoint, tmp_path / "ray.sqlite", "ray")
    distributed = run_job(spec, executor=pool, progress_bar=False)
    assert len(reference_results) == 4
    assert stored(tmp_path / "ray.sqlite", distributed.job_id) == reference_results
    assert counts(distributed) == counts(reference)


def test_killed_actor_is_replaced_and_the_job_keeps_its_result_and_evaluation_count(
    pool: RayActorPool, tiny_checkpoint: Path, tmp_path: Path, in_process: tuple[JobOutcome, dict]
) -> None:
    reference, reference_results = in_process
    spec = job(tiny_checkpoint, tmp_path / "ray.sqlite", "ray")
    killing = KillingPool(pool)
    restarts = pool.restarts
    distributed = run_job(spec, executor=killing, progress_bar=False)
    assert killing.killed and pool.restarts == restarts + 1
    assert stored(tmp_path / "ray.sqlite", distributed.job_id) == reference_results
    assert counts(distributed) == counts(reference), "a requeued chunk was counted twice or lost"
    with SQLiteStore(tmp_path / "ray.sqlite") as store:
        cached = sum(store.count_values(game.fingerprint) for game in pool.games().values())
    assert cached == sum(run.stats.evaluated for run in reference.runs)


def test_an_actor_that_cannot_load_its_model_fails_the_job_with_the_reason(local_ray: None, tmp_path: Path) -> None:
    spec = job(tmp_path / "nowhere" / "model", tmp_path / "s.sqlite", "ray")
    one_worker = spec.executor.model_copy(update={"num_workers": 1, "num_cpus_per_worker": 0})  # the pool holds 2 CPUs
    with pytest.raises(ModelLoadError, match="no such folder"):
        run_job(spec.model_copy(update={"executor": one_worker}), progress_bar=False)
    with SQLiteStore(tmp_path / "s.sqlite") as store:
        (failed,) = store.list_jobs()
    assert failed.status is JobStatus.FAILED
    assert "ModelLoadError" in (failed.error or "") and "no such folder" in (failed.error or "")
