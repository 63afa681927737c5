"""The SQLite store: job life cycle, results, the value cache, threads, reopening, schema version."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shapley_svc.store import JobNotFoundError, JobStateError, JobStatus, MemoryValueCache, SQLiteStore, StoreError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "store.sqlite")
    yield opened
    opened.close()


def test_job_life_cycle(store: SQLiteStore) -> None:
    job = store.create_job({"name": "a"}, job_id="job-1")
    assert job.status is JobStatus.QUEUED and job.started_at is None
    running = store.update_job("job-1", status=JobStatus.RUNNING, progress={"evaluations": 3})
    assert running.started_at is not None and running.progress == {"evaluations": 3}
    done = store.update_job("job-1", status=JobStatus.SUCCEEDED, only_from=[JobStatus.RUNNING])
    assert done.finished_at is not None and done.status.finished
    with pytest.raises(JobStateError, match="succeeded"):
        store.update_job("job-1", status=JobStatus.CANCELLED, only_from=[JobStatus.QUEUED, JobStatus.RUNNING])
    with pytest.raises(JobStateError, match="already exists"):
        store.create_job({}, job_id="job-1")
    with pytest.raises(JobNotFoundError):
        store.get_job("nope")
    with pytest.raises(JobNotFoundError):
        store.update_job("nope", status=JobStatus.FAILED)


def test_list_jobs_newest_first_and_by_status(store: SQLiteStore) -> None:
    ids = [store.create_job({"i": i}).id for i in range(3)]
    store.update_job(ids[1], status=JobStatus.RUNNING)
    assert [job.id for job in store.list_jobs()] == ids[::-1]
    assert [job.id for job in store.list_jobs(status=JobStatus.RUNNING)] == [ids[1]]
    assert len(store.list_jobs(limit=1, offset=1)) == 1


def test_results_round_trip(store: SQLiteStore) -> None:
    store.create_job({}, job_id="j")
    store.put_result("j", task="t1", granularity="block", estimator="perm", result_json='{"v": 1}')
    store.put_result("j", task="t1", granularity="block", estimator="perm", result_json='{"v": 2}')
    store.put_result("j", task="t0", granularity="block", estimator="perm", result_json='{"v": 3}')
    results = store.get_results("j")
    assert [(r.task, r.result_json) for r in results] == [("t0", '{"v": 3}'), ("t1", '{"v": 2}')]
    with pytest.raises(StoreError, match="not JSON"):
        store.put_result("j", task="t", granularity="block", estimator="perm", result_json="{")
    with pytest.raises(JobNotFoundError):
        store.put_result("missing", task="t", granularity="block", estimator="perm", result_json="{}")


def test_value_cache_by_game_and_coalition(store: SQLiteStore) -> None:
    coalitions = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=bool)
    values = np.array([[0.5, 1.0], [-1.0, 2.0], [3.0, 4.0]])
    store.put_values("game-a", coalitions[:2], values[:2])
    lookup = store.lookup_values("game-a", coalitions[[2, 0, 1, 0]], n_tasks=2)
    assert lookup.found.tolist() == [False, True, True, True]
    np.testing.assert_array_equal(lookup.values[1:], values[[0, 1, 0]])
    assert np.isnan(lookup.values[0]).all()
    assert not store.lookup_values("game-b", coalitions, n_tasks=2).found.any()
    assert store.count_values("game-a") == 2
    with pytest.raises(StoreError, match="non-finite"):
        store.put_values("game-a", coalitions[2:], np.array([[np.nan, 1.0]]))
    with pytest.raises(StoreError, match="not unique"):
        store.lookup_values("game-a", coalitions, n_tasks=3)


def test_many_coalitions_at_once(store: SQLiteStore) -> None:
    coalitions = np.random.default_rng(0).random((1500, 20)) < 0.5
    values = np.arange(1500, dtype=float)[:, None]
    store.put_values("g", coalitions, values)
    lookup = store.lookup_values("g", coalitions, n_tasks=1)
    assert lookup.found.all()
    assert store.count_values("g") == len(np.unique(coalitions, axis=0))


def test_threads_share_the_store(store: SQLiteStore) -> None:
    store.create_job({}, job_id="j")
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for step in range(20):
                store.update_job("j", progress={"thread": index, "step": step})
                store.put_values("g", np.array([[index % 2, step % 2, 1]], dtype=bool), np.array([[float(step)]]))
        except Exception as error:  # reported to the main thread below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.get_job("j").progress["step"] == 19


def test_reopening_keeps_everything_and_checks_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SQLiteStore(path) as first:
        first.create_job({"a": 1}, job_id="j")
        first.put_values("g", np.ones((1, 2), dtype=bool), np.array([[1.5]]))
    with SQLiteStore(path) as second:
        assert second.get_job("j").spec == {"a": 1}
        assert second.lookup_values("g", np.ones((1, 2), dtype=bool), 1).values[0, 0] == 1.5
        assert second.schema_version() == 3
    connection = sqlite3.connect(path)
    connection.execute("UPDATE schema_version SET version = 99")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="not a database"):
        SQLiteStore(garbage)


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    opened = SQLiteStore(tmp_path / "s.sqlite")
    opened.close()
    with pytest.raises(StoreError, match="closed"):
        opened.list_jobs()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_values_are_keyed_by_setup(kind: str, tmp_path: Path) -> None:
    cache = SQLiteStore(tmp_path / "s.sqlite") if kind == "sqlite" else MemoryValueCache()
    coalitions = np.array([[1, 0], [0, 1]], dtype=bool)
    cache.put_values("g", coalitions[:1], np.array([[1.0]]), setup="cpu-float32")
    cache.put_values("g", coalitions[1:], np.array([[2.0]]), setup="cuda-bfloat16")
    assert cache.lookup_values("g", coalitions, 1, setup="cpu-float32").found.tolist() == [True, False]
    assert cache.lookup_values("g", coalitions, 1, setup="cuda-bfloat16").found.tolist() == [False, True]
    assert cache.lookup_values("g", coalitions, 1).values[:, 0].tolist() == [1.0, 2.0]
    assert cache.value_setups("g") == {"cpu-float32": 1, "cuda-bfloat16": 1}
    assert cache.count_values("g") == 2 and cache.count_values("g", setup="cpu-float32") == 1
    with pytest.raises(StoreError, match="non-finite"):
        cache.put_values("g", coalitions[:1], np.array([[np.inf]]), setup="cpu-float32")


def test_a_version_1_store_is_migrated_and_its_values_keep_an_empty_setup(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    connection = sqlite3.connect(path)
    connection.executescript(
        """
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (1);
        CREATE TABLE value_cache (game TEXT NOT NULL, coalition BLOB NOT NULL, n_players INTEGER NOT NULL,
            n_tasks INTEGER NOT NULL, value_bytes BLOB NOT NULL, created_at REAL NOT NULL,
            PRIMARY KEY (game, coalition)) WITHOUT ROWID;
        """
    )
    connection.execute(
        "INSERT INTO value_cache VALUES (?, ?, 2, 1, ?, 0)",
        ("g", np.packbits(np.array([1, 1], dtype=bool)).tobytes(), np.array([1.5]).astype("<f8").tobytes()),
    )
    connection.commit()
    connection.close()
    with SQLiteStore(path) as store:
        assert store.schema_version() == 3
        assert store.value_setups("g") == {"": 1}
        assert not store.lookup_values("g", np.ones((1, 2), dtype=bool), 1, setup="cpu").found.any()
        assert store.lookup_values("g", np.ones((1, 2), dtype=bool), 1).values[0, 0] == 1.5


def test_plans_are_stored_per_job_and_name(store: SQLiteStore) -> None:
    store.create_job({}, job_id="j")
    store.put_plan("j", name="block-block-2", granularity="block", plan_json='{"removed": ["layer1.block"]}')
    store.put_plan("j", name="block-block-2", granularity="block", plan_json='{"removed": ["layer2.block"]}')
    (record,) = store.get_plans("j")
    assert (record.name, record.granularity, record.plan_json) == (
        "block-block-2",
        "block",
        '{"removed": ["layer2.block"]}',
    )
    with pytest.raises(StoreError, match="not JSON"):
        store.put_plan("j", name="x", granularity="block", plan_json="{")
    with pytest.raises(JobNotFoundError):
        store.put_plan("missing", name="x", granularity="block", plan_json="{}")
