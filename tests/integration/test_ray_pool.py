"""The Ray actor pool on a local Ray (2 CPUs): same values as in process, dead actors replaced, load errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.errors import ModelLoadError
from shapley_svc.model.loading import tiny_model
from shapley_svc.runner.driver import RunControl, run_estimation
from shapley_svc.runner.executors import Chunk, GameWorker, RayActorPool, WorkerSetup
from shapley_svc.spec import ExecutorSpec, ModelSpec, TaskSpec
from shapley_svc.store import SQLiteStore
from shapley_svc.types import Coalitions, Values

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> WorkerSetup:
    folder = tmp_path_factory.mktemp("tiny-llama")
    loaded = tiny_model("llama", num_layers=4, seed=0)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    task = TaskSpec(
        name="lm_loss", params={"corpus": "wikitext2", "data_dir": str(default_data_dir()), "window": 32, "windows": 2}
    )
    return WorkerSetup(ModelSpec(name=str(folder), dtype="float32"), ("block", "sublayer"), (task,), threads=1)


@dataclass(frozen=True)
class Request:
    request_id: int
    coalitions: Coalitions


class SeededSampler:
    """A test estimator: ``total`` random coalitions of ``n`` players in requests of 2, seeded; keeps the tells."""

    def __init__(self, n: int, total: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.total = total
        self.asked = 0
        self.told: dict[int, Values] = {}

    def ask(self, max_coalitions: int) -> list[Request]:
        requests = []
        while self.asked < self.total and max_coalitions >= 2:
            requests.append(Request(len(requests) + self.asked // 2, self.rng.random((2, self.n)) < 0.5))
            self.asked += 2
            max_coalitions -= 2
        return requests

    def tell(self, request_id: int, values: Values) -> None:
        self.told[request_id] = np.array(values)

    @property
    def done(self) -> bool:
        return 2 * len(self.told) >= self.total

    @property
    def evaluations_used(self) -> int:
        return 2 * len(self.told)

    def result(self) -> np.ndarray:
        return np.concatenate([self.told[i] for i in sorted(self.told)])


def test_pool_values_equal_in_process_values(local_ray: None, setup: WorkerSetup) -> None:
    coalitions = np.random.default_rng(0).random((12, 8)) < 0.5
    expected = GameWorker.from_setup(setup).evaluate("sublayer", coalitions)
    pool = RayActorPool(setup, ExecutorSpec(kind="ray", num_workers=2, chunk_size=4))
    try:
        assert pool.games()["sublayer"].n_players == 8
        for index, start in enumerate(range(0, 12, 4)):
            pool.submit(Chunk(index, "sublayer", coalitions[start : start + 4]))
        results = []
        while pool.in_flight:
            results.extend(pool.wait(timeout=60))
    finally:
        pool.close()
    assert sorted(result.chunk.id for result in results) == [0, 1, 2]
    assert {result.worker for result in results} == {0, 1}
    got = np.concatenate([result.values for result in sorted(results, key=lambda result: result.chunk.id)])
    np.testing.assert_array_equal(got, expected)


class KillingPool:
    """Wraps a pool and kills one actor after the first chunk comes back (a node lost mid-run)."""

    def __init__(self, pool: RayActorPool):
        self.pool = pool
        self.killed = False

    def __getattr__(self, name: str):
        return getattr(self.pool, name)

    def wait(self, timeout: float | None = None):
        results = self.pool.wait(timeout)
        if results and not self.killed:
            self.killed = True
            ray.kill(self.pool.actors()[0], no_restart=True)
        return results


def test_killed_actor_is_replaced_and_the_result_is_unchanged(
    local_ray: None, setup: WorkerSetup, tmp_path: Path
) -> None:
    reference = SeededSampler(8, 48, seed=7)
    with SQLiteStore(tmp_path / "reference.sqlite") as store:
        local = GameWorker.from_setup(setup)
        from shapley_svc.runner.executors import InProcessExecutor

        executor = InProcessExecutor(local)
        expected = run_estimation(
            reference,
            executor,
            executor.games()["sublayer"],
            store,
            budget=48,
            chunk_size=4,
            control=RunControl(progress_bar=False),
        )
    pool = RayActorPool(setup, ExecutorSpec(kind="ray", num_workers=2, chunk_size=4, max_in_flight=4))
    killing = KillingPool(pool)
    estimator = SeededSampler(8, 48, seed=7)
    try:
        with SQLiteStore(tmp_path / "pool.sqlite") as store:
            stats = run_estimation(
                estimator,
                killing,
                pool.games()["sublayer"],
                store,
                budget=48,
                chunk_size=4,
                control=RunControl(progress_bar=False),
            )
            cached = store.count_values(pool.games()["sublayer"].fingerprint)
    finally:
        pool.close()
    assert killing.killed and pool.restarts == 1
    assert stats.told == expected.told == 48
    assert stats.evaluated == expected.evaluated == cached
    np.testing.assert_array_equal(estimator.result(), reference.result())


def test_a_worker_that_cannot_load_its_model_fails_with_the_reason(local_ray: None, tmp_path: Path) -> None:
    missing = WorkerSetup(ModelSpec(name=str(tmp_path / "nowhere" / "model"), dtype="float32"), ("block",), ())
    with pytest.raises(ModelLoadError, match="no such folder"):
        RayActorPool(missing, ExecutorSpec(kind="ray", num_workers=1))


def test_job_on_ray_equals_the_in_process_job_even_when_an_actor_dies(
    local_ray: None, setup: WorkerSetup, tmp_path: Path
) -> None:
    from shapley_svc.estimators.base import EstimatorSettings
    from shapley_svc.estimators.exact import ExactEstimator
    from shapley_svc.runner.driver import PreparedRun, run_job
    from shapley_svc.spec import parse_spec

    def exact(spec, game, budget) -> PreparedRun:
        estimator = ExactEstimator(EstimatorSettings(game.n_players, budget.evaluations, spec.seed, game.player_names))
        estimator.set_task_names(game.task_names)
        return PreparedRun(estimator, None, None)

    def job(store: str, kind: str):
        return parse_spec(
            {
                "model": setup.model.model_dump(),
                "players": {"granularities": ["sublayer"]},
                "tasks": [task.model_dump() for task in setup.tasks],
                "estimators": [{"name": "exact"}],
                "budget": {"evaluations": 256},
                "executor": {"kind": kind, "num_workers": 2, "chunk_size": 16}
                if kind == "ray"
                else {"kind": "local", "chunk_size": 16},
                "store": {"path": str(tmp_path / store)},
            }
        )

    local = run_job(job("local.sqlite", "local"), estimator_factory=exact, progress_bar=False)
    ray_spec = job("ray.sqlite", "ray")
    pool = RayActorPool(WorkerSetup.from_spec(ray_spec), ray_spec.executor)
    killing = KillingPool(pool)
    try:
        distributed = run_job(ray_spec, estimator_factory=exact, executor=killing, progress_bar=False)
    finally:
        pool.close()
    assert killing.killed and pool.restarts == 1
    assert distributed.runs[0].stats.evaluated == local.runs[0].stats.evaluated == 256

    def values(path: str, job_id: str) -> dict:
        with SQLiteStore(tmp_path / path) as store:
            (record,) = store.get_results(job_id)
        result = json.loads(record.result_json)
        return {key: result[key] for key in ("values", "v_full", "v_empty", "evaluations_used")}

    assert values("ray.sqlite", distributed.job_id) == values("local.sqlite", local.job_id)
