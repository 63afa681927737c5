"""SQLite results store: one file in WAL mode, a schema-version table, one connection per thread.

Tables: ``jobs`` (spec, status, progress JSON, timestamps, error), ``results`` (one ShapleyResult JSON per
job x task x granularity x estimator) and ``value_cache`` (game fingerprint + set-up + packed coalition bits
-> float64 values). A version-1 file (no set-up column) is migrated in place: its values keep an empty set-up,
so they are served again only to a run that reuses values across set-ups on purpose. Several processes
may share the file (a service and the runners it starts): writes take an immediate lock and wait up to
``busy_timeout`` seconds for one another.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shapley_svc.coalitions import coalition_key
from shapley_svc.store.base import (
    CacheLookup,
    JobNotFoundError,
    JobRecord,
    JobStateError,
    JobStatus,
    PlanRecord,
    ResultRecord,
    StoreError,
    cacheable,
)
from shapley_svc.types import Coalitions, Values

SCHEMA_VERSION = 3
_LOOKUP_BATCH = 400  # coalitions per IN (...) query, well under SQLite's bound-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    progress TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    granularity TEXT NOT NULL,
    estimator TEXT NOT NULL,
    task TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, granularity, estimator, task)
);
CREATE TABLE IF NOT EXISTS plans (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    granularity TEXT NOT NULL,
    plan TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, name)
);
"""

_VALUE_CACHE = """
CREATE TABLE IF NOT EXISTS value_cache (
    game TEXT NOT NULL,
    setup TEXT NOT NULL,
    coalition BLOB NOT NULL,
    n_players INTEGER NOT NULL,
    n_tasks INTEGER NOT NULL,
    value_bytes BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (game, setup, coalition)
) WITHOUT ROWID;
"""

_MIGRATE_FROM_1 = (
    "ALTER TABLE value_cache RENAME TO value_cache_v1;"
    + _VALUE_CACHE
    + "INSERT INTO value_cache SELECT game, '', coalition, n_players, n_tasks, value_bytes, created_at "
    "FROM value_cache_v1; DROP TABLE value_cache_v1; UPDATE schema_version SET version = 2;"
)
_MIGRATE_FROM_2 = "UPDATE schema_version SET version = 3;"  # version 3 adds the plans table (created if missing)
_MIGRATIONS = {1: _MIGRATE_FROM_1, 2: _MIGRATE_FROM_2}


def _timestamp(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


class SQLiteStore:
    """A :class:`~shapley_svc.store.base.ResultStore` in one SQLite file (created with its schema if missing)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0):
        self.path = Path(path).expanduser()
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the folder of the store {self.path}: {error}") from error
        self._initialise()

    # -- connections ----------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the store {self.path} is closed; open a new SQLiteStore")
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error as error:
                raise StoreError(f"cannot open the store {self.path}: {error}") from error
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as error:
                connection.close()
                raise StoreError(f"cannot open the store {self.path}: {error}; is it a SQLite file?") from error
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction, committed on success and rolled back on any error."""
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(f"cannot lock the store {self.path} for writing: {error}") from error
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _initialise(self) -> None:
        try:
            with self._transaction() as connection:
                row = self._version(connection)
                for version in range(row or SCHEMA_VERSION, SCHEMA_VERSION):
                    _execute_script(connection, _MIGRATIONS[version])
                _execute_script(connection, _SCHEMA + _VALUE_CACHE)
                if row is None:
                    connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif row > SCHEMA_VERSION:
                    raise StoreError(
                        f"the store {self.path} has schema version {row}, newer than this shapley-svc "
                        f"understands ({SCHEMA_VERSION}); upgrade shapley-svc or use another store path"
                    )
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path} is not a usable SQLite store: {error}") from error

    @staticmethod
    def _version(connection: sqlite3.Connection) -> int | None:
        """The schema version in the file, None for a new file."""
        exists = connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone()
        row = connection.execute("SELECT version FROM schema_version").fetchone() if exists else None
        return None if row is None else int(row[0])

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        return int(self._connection().execute("SELECT version FROM schema_version").fetchone()[0])

    def close(self) -> None:
        """Close every thread's connection; later calls raise StoreError."""
        with self._lock:
            self._closed = True
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------------------------

    @staticmethod
    def _job(row: tuple[Any, ...]) -> JobRecord:
        job_id, spec, status, progress, created, updated, started, finished, error = row
        return JobRecord(
            id=job_id,
            spec=json.loads(spec),
            status=JobStatus(status),
            progress=json.loads(progress),
            created_at=datetime.fromtimestamp(created, UTC),
            updated_at=datetime.fromtimestamp(updated, UTC),
            started_at=_timestamp(started),
            finished_at=_timestamp(finished),
            error=error,
        )

    _JOB_COLUMNS = "id, spec, status, progress, created_at, updated_at, started_at, finished_at, error"

    def create_job(self, spec: dict[str, Any], *, job_id: str | None = None) -> JobRecord:
        """Insert a queued job (a fresh id unless ``job_id`` is given; an existing id is a JobStateError)."""
        new_id = job_id if job_id is not None else uuid.uuid4().hex
        now = time.time()
        try:
            with self._transaction() as connection:
                connection.execute(
                    f"INSERT INTO jobs ({self._JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
                    (new_id, json.dumps(spec, sort_keys=True), JobStatus.QUEUED.value, "{}", now, now),
                )
        except sqlite3.IntegrityError as error:
            raise JobStateError(f"a job with id {new_id!r} already exists; choose another id") from error
        return self.get_job(new_id)

    def get_job(self, job_id: str) -> JobRecord:
        """The job ``job_id``; JobNotFoundError if there is none."""
        row = self._connection().execute(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job with id {job_id!r} in {self.path}")
        return self._job(row)

    def list_jobs(self, *, status: JobStatus | None = None, limit: int = 100, offset: int = 0) -> list[JobRecord]:
        """Jobs, newest first, optionally only those with ``status``."""
        where, parameters = ("WHERE status = ?", [JobStatus(status).value]) if status is not None else ("", [])
        rows = self._connection().execute(
            f"SELECT {self._JOB_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            (*parameters, limit, offset),
        )
        return [self._job(row) for row in rows]

    def update_job(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        progress: dict[str, Any] | None = None,
        error: str | None = None,
        only_from: Iterable[JobStatus] | None = None,
    ) -> JobRecord:
        """Change status / progress / error atomically; with ``only_from``, a JobStateError unless the
        current status is one of them. Entering running or a finished status stamps the time."""
        allowed = None if only_from is None else {JobStatus(s) for s in only_from}
        now = time.time()
        with self._transaction() as connection:
            row = connection.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id!r} in {self.path}")
            current = JobStatus(row[0])
            if allowed is not None and current not in allowed:
                raise JobStateError(
                    f"job {job_id} is {current.value}; this change needs it to be "
                    f"{' or '.join(sorted(s.value for s in allowed))}"
                )
            assignments = ["updated_at = ?"]
            parameters: list[Any] = [now]
            if status is not None:
                assignments.append("status = ?")
                parameters.append(JobStatus(status).value)
                if status is JobStatus.RUNNING:
                    assignments.append("started_at = COALESCE(started_at, ?)")
                    parameters.append(now)
                elif JobStatus(status).finished:
                    assignments.append("finished_at = ?")
                    parameters.append(now)
            if progress is not None:
                assignments.append("progress = ?")
                parameters.append(json.dumps(progress, sort_keys=True))
            if error is not None:
                assignments.append("error = ?")
                parameters.append(error)
            connection.execute(f"UPDATE jobs SET {', '.join(assignments)} WHERE id = ?", (*parameters, job_id))
        return self.get_job(job_id)

    # -- results --------------------------------------------------------------------------------------------

    def put_result(self, job_id: str, *, task: str, granularity: str, estimator: str, result_json: str) -> None:
        """Store (or replace) one run's result JSON; text that is not JSON is a StoreError."""
        self._put_json(
            "INSERT OR REPLACE INTO results (job_id, granularity, estimator, task, result, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, granularity, estimator, task),
            result_json,
            f"result of job {job_id} ({task}, {granularity}, {estimator})",
        )

    def get_results(self, job_id: str) -> list[ResultRecord]:
        """Every result of ``job_id``, ordered by granularity, estimator, task."""
        rows = self._connection().execute(
            "SELECT job_id, task, granularity, estimator, result, created_at FROM results WHERE job_id = ? "
            "ORDER BY granularity, estimator, task",
            (job_id,),
        )
        return [
            ResultRecord(job, task, granularity, estimator, result, datetime.fromtimestamp(created, UTC))
            for job, task, granularity, estimator, result, created in rows
        ]

    def put_plan(self, job_id: str, *, name: str, granularity: str, plan_json: str) -> None:
        """Store (or replace) one plan's JSON; text that is not JSON is a StoreError."""
        self._put_json(
            "INSERT OR REPLACE INTO plans (job_id, name, granularity, plan, created_at) VALUES (?, ?, ?, ?, ?)",
            (job_id, name, granularity),
            plan_json,
            f"plan {name} of job {job_id}",
        )

    def _put_json(self, statement: str, keys: tuple[str, ...], text: str, what: str) -> None:
        """Insert one row of a job's JSON document (``keys``, the text, now); the job (``keys[0]``) must exist."""
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            raise StoreError(f"{what} is not JSON") from error
        try:
            with self._transaction() as connection:
                connection.execute(statement, (*keys, text, time.time()))
        except sqlite3.IntegrityError as error:
            raise JobNotFoundError(f"no job with id {keys[0]!r} in {self.path}; create it first") from error

    def get_plans(self, job_id: str) -> list[PlanRecord]:
        """Every plan of ``job_id``, ordered by name."""
        rows = self._connection().execute(
            "SELECT job_id, name, granularity, plan, created_at FROM plans WHERE job_id = ? ORDER BY name", (job_id,)
        )
        return [
            PlanRecord(job, name, granularity, plan, datetime.fromtimestamp(created, UTC))
            for job, name, granularity, plan, created in rows
        ]

    # -- value cache ----------------------------------------------------------------------------------------

    def lookup_values(
        self, game: str, coalitions: Coalitions, n_tasks: int, *, setup: str | None = None
    ) -> CacheLookup:
        """Cached values of ``coalitions`` (bool[k, n]) under ``game`` and ``setup`` (``None``: any set-up)."""
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        keys = [coalition_key(row) for row in coalitions]
        found = np.zeros(len(keys), dtype=bool)
        values = np.full((len(keys), n_tasks), np.nan)
        rows_of: dict[bytes, list[int]] = {}
        for index, key in enumerate(keys):
            rows_of.setdefault(key, []).append(index)
        unique = list(rows_of)
        connection = self._connection()
        for start in range(0, len(unique), _LOOKUP_BATCH):
            batch = unique[start : start + _LOOKUP_BATCH]
            placeholders = ", ".join("?" * len(batch))
            setup_clause, setup_value = ("", ()) if setup is None else (" AND setup = ?", (setup,))
            for key, n_players, stored_tasks, value_bytes in connection.execute(
                "SELECT coalition, n_players, n_tasks, value_bytes FROM value_cache "
                f"WHERE game = ?{setup_clause} AND coalition IN ({placeholders})",
                (game, *setup_value, *batch),
            ):
                if n_players != coalitions.shape[1] or stored_tasks != n_tasks:
                    raise StoreError(
                        f"cache entry of game {game[:12]} has {n_players} players x {stored_tasks} tasks, but "
                        f"{coalitions.shape[1]} x {n_tasks} were asked for: the game fingerprint is not unique; "
                        "delete the value_cache rows of that game"
                    )
                indices = rows_of[key]
                found[indices] = True
                values[indices] = np.frombuffer(value_bytes, dtype="<f8")
        return CacheLookup(found=found, values=values)

    def put_values(self, game: str, coalitions: Coalitions, values: Values, *, setup: str = "") -> None:
        """Cache finite ``values`` (float[k, t]) of ``coalitions``; non-finite values are a StoreError."""
        coalitions, values = cacheable(coalitions, values)
        now = time.time()
        rows = [
            (
                game,
                setup,
                coalition_key(coalition),
                *coalitions.shape[1:],
                values.shape[1],
                row.astype("<f8").tobytes(),
                now,
            )
            for coalition, row in zip(coalitions, values, strict=True)
        ]
        with self._transaction() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO value_cache "
                "(game, setup, coalition, n_players, n_tasks, value_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def count_values(self, game: str, *, setup: str | None = None) -> int:
        """How many values are cached under ``game`` (and ``setup``; ``None``: every set-up)."""
        setups = self.value_setups(game)
        return sum(setups.values()) if setup is None else setups.get(setup, 0)

    def value_setups(self, game: str) -> dict[str, int]:
        """The set-ups holding values of ``game``, with how many each."""
        rows = self._connection().execute(
            "SELECT setup, COUNT(*) FROM value_cache WHERE game = ? GROUP BY setup", (game,)
        )
        return {setup: int(count) for setup, count in rows}


def _execute_script(connection: sqlite3.Connection, script: str) -> None:
    """Run each statement of ``script`` inside the caller's transaction (``executescript`` would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            connection.execute(statement)
