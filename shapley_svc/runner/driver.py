"""The driver: a dumb pump between an ask/tell estimator and an executor, with the value cache in between.

One run (one estimator on one game) goes::

    ask -> value-cache lookup -> misses ordered for prefix sharing (layer order) -> chunks
        -> executor (bounded in flight, completion order) -> finite check -> cache -> tell -> stopping

All algorithm state lives in the estimator. The driver asks ``chunk_size`` coalitions at a time, keeping up
to one full pool's worth of chunks queued beyond those in flight, and tells whole requests in the order they
were asked, whatever order chunks complete in; with a seeded estimator the tells, hence the result, are the
same for any number of workers. When the estimator has nothing more to give until its round is told, the
queued coalitions are cut into equal chunks of at most ``chunk_size``, as many as fill whole waves of the
workers, so the end of a round does not wait on a few full chunks while other workers idle. Every
value is written to the cache as soon as its chunk returns, so the cache is the checkpoint: a run stopped at
any moment is resumed by a fresh estimator with the same seed, whose asks all hit the cache until the point
where the first run stopped. A coalition asked twice while its value is on its way is evaluated once.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from shapley_svc.errors import EvaluationError, ShapleySvcError
from shapley_svc.estimators import Estimator, check_estimator, make_estimator
from shapley_svc.estimators.result import ShapleyResult
from shapley_svc.estimators.stopping import any_of, make_stopping
from shapley_svc.runner.executors import Chunk, ChunkResult, Executor, GameInfo, make_executor
from shapley_svc.spec import BudgetSpec, EstimatorSpec, JobSpec
from shapley_svc.store.base import JobNotFoundError, JobRecord, JobStateError, JobStatus, ResultStore
from shapley_svc.store.sqlite import SQLiteStore, coalition_key
from shapley_svc.types import Coalitions, Values

logger = logging.getLogger(__name__)


class JobCancelledError(ShapleySvcError):
    """The job was cancelled (through the store) while it ran."""


class CoalitionRequest(Protocol):
    """What an estimator's ``ask`` returns: an id and the coalitions (bool[k, n]) it wants values for."""

    @property
    def request_id(self) -> Any: ...

    @property
    def coalitions(self) -> Coalitions: ...


class AskTellEstimator(Protocol):
    """The part of an ask/tell estimator the driver uses."""

    def ask(self, max_coalitions: int) -> list[Any]: ...

    def tell(self, request_id: Any, values: Values) -> None: ...

    @property
    def done(self) -> bool: ...

    @property
    def evaluations_used(self) -> int: ...

    def result(self) -> Any: ...


StoppingRule = Callable[[Any], bool]
"""Called with the estimator after each tell; True stops the run."""

StoppingMeasure = Callable[[Any], Mapping[str, float]]
"""The current values of the stopping measures by name (shown in the progress bar); empty when none yet."""


@dataclass
class RunStats:
    """What one run did: coalitions told, evaluated by workers, served by the cache, and why it stopped."""

    told: int = 0
    evaluated: int = 0
    cache_hits: int = 0
    deduplicated: int = 0
    chunks: int = 0
    seconds: float = 0.0
    stopped_by: str = ""
    worker_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "told": self.told,
            "evaluated": self.evaluated,
            "cache_hits": self.cache_hits,
            "deduplicated": self.deduplicated,
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
            "worker_seconds": round(self.worker_seconds, 3),
            "stopped_by": self.stopped_by,
        }


@dataclass
class _Request:
    """One asked request: its coalitions, the values arrived so far, how many rows still miss one."""

    request_id: Any
    coalitions: Coalitions
    values: Values
    missing: int


@dataclass
class _Waiter:
    request: _Request
    row: int


@dataclass
class RunControl:
    """How a run reports and may be stopped from outside: progress callback, cancellation check, bar."""

    progress_bar: bool = True
    on_progress: Callable[[RunStats], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    report_every: float = 1.0
    description: str = "shapley"


def lexicographic_rows(coalitions: Coalitions) -> np.ndarray:
    """Row order of bool[k, n] sorted lexicographically, player 0 (the first layer) most significant."""
    if len(coalitions) == 0:
        return np.zeros(0, dtype=int)
    return np.lexsort(np.asarray(coalitions, dtype=np.int8).T[::-1])


def run_estimation(
    estimator: AskTellEstimator,
    executor: Executor,
    game: GameInfo,
    store: ResultStore,
    *,
    budget: int,
    chunk_size: int,
    stopping: StoppingRule | None = None,
    measure: StoppingMeasure | None = None,
    control: RunControl | None = None,
) -> RunStats:
    """Pump ``estimator`` against ``game`` on ``executor`` until it is done, stops, or told ``budget`` coalitions.

    Values come from the cache in ``store`` when present and are written there as they arrive.
    """
    control = control if control is not None else RunControl()
    stats = RunStats()
    started = time.perf_counter()
    requests: deque[_Request] = deque()
    waiting: dict[bytes, list[_Waiter]] = {}
    queue: list[tuple[bytes, np.ndarray]] = []
    chunk_keys: dict[int, list[bytes]] = {}
    asked = 0
    chunk_count = 0
    asking = True
    stopped = False
    last_report = 0.0
    bar = tqdm(
        total=budget, desc=control.description, unit="eval", disable=not control.progress_bar, dynamic_ncols=True
    )

    def take(request: Any) -> _Request:
        nonlocal asked
        coalitions = np.atleast_2d(np.asarray(request.coalitions, dtype=bool))
        if coalitions.shape[1] != game.n_players:
            raise EvaluationError(
                f"estimator asked for coalitions of {coalitions.shape[1]} players but game {game.key} has "
                f"{game.n_players}; build the estimator with n_players={game.n_players}"
            )
        lookup = store.lookup_values(game.fingerprint, coalitions, len(game.task_names))
        entry = _Request(request.request_id, coalitions, lookup.values, int((~lookup.found).sum()))
        stats.cache_hits += int(lookup.found.sum())
        for row in np.flatnonzero(~lookup.found):
            key = coalition_key(coalitions[row])
            if key in waiting:
                stats.deduplicated += 1
            else:
                waiting[key] = []
                queue.append((key, coalitions[row]))
            waiting[key].append(_Waiter(entry, int(row)))
        asked += len(coalitions)
        return entry

    def receive(result: ChunkResult) -> None:
        keys = chunk_keys.pop(result.chunk.id)
        values = np.asarray(result.values, dtype=np.float64)
        if values.shape != (len(keys), len(game.task_names)):
            raise EvaluationError(
                f"worker {result.worker} returned values of shape {values.shape} for chunk {result.chunk.id} "
                f"of {len(keys)} coalitions x {len(game.task_names)} tasks"
            )
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise EvaluationError(
                f"coalition {result.chunk.coalitions[row].astype(int).tolist()} of {game.key} has a non-finite "
                f"value {values[row].tolist()} (worker {result.worker}); it is not cached and enters no estimate"
            )
        store.put_values(game.fingerprint, result.chunk.coalitions, values)
        stats.evaluated += len(keys)
        stats.chunks += 1
        stats.worker_seconds += result.seconds
        logger.debug(
            "event=chunk_done game=%s chunk=%d size=%d worker=%d seconds=%.3f",
            game.key,
            result.chunk.id,
            len(keys),
            result.worker,
            result.seconds,
        )
        for key, row_values in zip(keys, values, strict=True):
            for waiter in waiting.pop(key):
                waiter.request.values[waiter.row] = row_values
                waiter.request.missing -= 1

    def submit_chunks() -> None:
        nonlocal queue, chunk_count
        if not queue:
            return
        order = lexicographic_rows(np.stack([coalition for _, coalition in queue]))
        queue = [queue[index] for index in order]
        size = chunk_size
        if not asking or asked >= budget:  # nothing more comes until these are told: spread them evenly
            waves = math.ceil(len(queue) / (chunk_size * executor.num_workers))
            size = math.ceil(len(queue) / (waves * executor.num_workers))
        while queue and executor.in_flight < executor.capacity:
            part, queue = queue[:size], queue[size:]
            chunk_count += 1
            chunk = Chunk(chunk_count, game.key, np.stack([coalition for _, coalition in part]))
            chunk_keys[chunk.id] = [key for key, _ in part]
            executor.submit(chunk)

    def show_measures() -> None:
        current = measure(estimator) if measure is not None else {}
        postfix = {name: f"{value:.4g}" for name, value in current.items()} | {"hits": stats.cache_hits}
        bar.set_postfix(postfix, refresh=False)

    def report(force: bool = False) -> None:
        nonlocal last_report
        now = time.perf_counter()
        if not force and now - last_report < control.report_every:
            return
        last_report = now
        stats.seconds = now - started
        if control.on_progress is not None:
            control.on_progress(stats)
        if control.should_cancel is not None and control.should_cancel():
            raise JobCancelledError(f"run {control.description} was cancelled after {stats.told} evaluations")

    try:
        while True:
            while requests and requests[0].missing == 0 and not stopped:
                request = requests.popleft()
                estimator.tell(request.request_id, request.values)
                stats.told += len(request.coalitions)
                asking = True
                if estimator.done:
                    stopped, stats.stopped_by = True, "estimator"
                elif stopping is not None and stopping(estimator):
                    stopped, stats.stopped_by = True, "stopping"
                elif stats.told >= budget:
                    stopped, stats.stopped_by = True, "budget"
                show_measures()
                bar.update(len(request.coalitions))
            if stopped and executor.in_flight == 0:
                break
            while asking and not stopped and asked < budget and len(queue) < chunk_size * executor.capacity:
                asks = estimator.ask(min(chunk_size, budget - asked))
                if not asks:
                    asking = False
                    break
                requests.extend(take(request) for request in asks)
            if not stopped:
                submit_chunks()
            if executor.in_flight == 0:
                if requests:  # complete (a pending miss would have been submitted): tell it next
                    continue
                if stats.stopped_by == "":
                    stats.stopped_by = "estimator" if estimator.done else "budget" if asked >= budget else "exhausted"
                break
            for result in executor.wait(timeout=control.report_every):
                receive(result)
            report()
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - started
    report(force=True)
    logger.info(
        "event=run_done run=%s told=%d evaluated=%d cache_hits=%d deduplicated=%d seconds=%.2f stopped_by=%s",
        control.description,
        stats.told,
        stats.evaluated,
        stats.cache_hits,
        stats.deduplicated,
        stats.seconds,
        stats.stopped_by,
    )
    return stats


@dataclass(frozen=True)
class PreparedRun:
    """A fresh estimator for one run with its stopping rule and the measure shown in the progress bar."""

    estimator: AskTellEstimator
    stopping: StoppingRule | None
    measure: StoppingMeasure | None


EstimatorFactory = Callable[[EstimatorSpec, GameInfo, BudgetSpec], PreparedRun]
"""Builds a fresh seeded estimator (and its stopping rule) for one game; called once per run."""


@dataclass(frozen=True)
class RunOutcome:
    """One finished run: which game and estimator, its stats, and the result JSON per task."""

    granularity: str
    estimator: str
    stats: RunStats
    results: dict[str, str]


@dataclass(frozen=True)
class JobOutcome:
    """A finished job: its id, status, store path and every run."""

    job_id: str
    status: JobStatus
    store_path: str
    runs: tuple[RunOutcome, ...]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: job id, status, store, and per run the counts and why it stopped."""
        return {
            "job_id": self.job_id,
            "status": self.status.value,
            "store": self.store_path,
            "seconds": round(self.seconds, 3),
            "runs": [
                {"granularity": run.granularity, "estimator": run.estimator, "tasks": sorted(run.results)}
                | run.stats.as_dict()
                for run in self.runs
            ],
        }


_RESUMABLE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED)
"""A cancelled job stays cancelled: running the spec again starts a new job, which the value cache makes cheap."""


def _open_job(store: ResultStore, spec: JobSpec, job_id: str | None, resume: bool) -> JobRecord:
    """The job record to run under: the one named, the latest unfinished one of the same spec, or a new one."""
    spec_json = spec.model_dump(mode="json")
    if job_id is not None:
        try:
            job = store.get_job(job_id)
        except JobNotFoundError:
            return store.create_job(spec_json, job_id=job_id)
        if not resume:
            raise JobStateError(f"job {job_id} already exists; pass --resume to continue it, or choose a new id")
        if JobSpec.model_validate(job.spec).result_fingerprint() != spec.result_fingerprint():
            raise JobStateError(f"job {job_id} was started with a different spec; resume it with its own spec")
        return job
    if resume:
        fingerprint = spec.result_fingerprint()
        for job in store.list_jobs(limit=1000):
            if job.status in _RESUMABLE and _fingerprint_of(job) == fingerprint:
                logger.info("event=resume job=%s status=%s", job.id, job.status.value)
                return job
        logger.info("event=resume_nothing_to_resume spec=%s", fingerprint[:12])
    return store.create_job(spec_json)


def _fingerprint_of(job: JobRecord) -> str | None:
    try:
        return JobSpec.model_validate(job.spec).result_fingerprint()
    except ValueError:  # a job stored by another version of the spec
        return None


def run_job(
    spec: JobSpec,
    *,
    estimator_factory: EstimatorFactory | None = None,
    store: ResultStore | None = None,
    executor: Executor | None = None,
    job_id: str | None = None,
    resume: bool = False,
    progress_bar: bool = True,
) -> JobOutcome:
    """Run every (granularity, estimator) of ``spec`` and store one result per task.

    ``store`` defaults to the spec's store path, ``executor`` to the one the spec asks for (closed at the
    end). With ``resume`` the latest unfinished job of the same spec continues; the cache makes it cheap.
    """
    started = time.perf_counter()
    if estimator_factory is None:
        check_job(spec)
    own_store = store is None
    active_store: ResultStore = store if store is not None else SQLiteStore(spec.store.path)
    job = _open_job(active_store, spec, job_id, resume)
    own_executor = executor is None
    runs: list[RunOutcome] = []
    try:
        # only from a runnable status: a cancel landing between the caller's last read and this write wins
        active_store.update_job(job.id, status=JobStatus.RUNNING, progress={"runs": []}, only_from=_RESUMABLE)
        active = executor if executor is not None else make_executor(spec)
        try:
            games = active.games()
            for granularity in spec.players.granularities:
                for estimator_spec in spec.estimators:
                    runs.append(
                        _run_one(
                            spec,
                            estimator_spec,
                            games[granularity],
                            active,
                            active_store,
                            job.id,
                            runs,
                            estimator_factory,
                            progress_bar,
                        )
                    )
        finally:
            if own_executor:
                active.close()
        active_store.update_job(job.id, status=JobStatus.SUCCEEDED, only_from=[JobStatus.RUNNING])
    except JobCancelledError:
        raise
    except JobStateError as error:
        raise JobCancelledError(f"job {job.id} changed status while it ran: {error}") from error
    except BaseException as error:
        reason = "interrupted; continue it with --resume" if isinstance(error, KeyboardInterrupt) else str(error)
        active_store.update_job(job.id, status=JobStatus.FAILED, error=f"{type(error).__name__}: {reason}")
        raise
    finally:
        if own_store:
            active_store.close()
    return JobOutcome(job.id, JobStatus.SUCCEEDED, str(spec.store.path), tuple(runs), time.perf_counter() - started)


def _run_one(
    spec: JobSpec,
    estimator_spec: EstimatorSpec,
    game: GameInfo,
    executor: Executor,
    store: ResultStore,
    job_id: str,
    done: list[RunOutcome],
    estimator_factory: EstimatorFactory,
    progress_bar: bool,
) -> RunOutcome:
    """One (granularity, estimator) run: a fresh seeded estimator pumped to the end, its results stored."""
    prepared = (estimator_factory or default_estimator_factory)(estimator_spec, game, spec.budget)
    label = f"{game.key}/{estimator_spec.key}"
    finished = [{"granularity": run.granularity, "estimator": run.estimator} | run.stats.as_dict() for run in done]

    def on_progress(stats: RunStats) -> None:
        """Report progress while the job runs; once it is cancelled the write fails and the run stops."""
        store.update_job(
            job_id,
            progress={
                "runs": finished,
                "current": {"granularity": game.key, "estimator": estimator_spec.key, "budget": spec.budget.evaluations}
                | stats.as_dict(),
            },
            only_from=[JobStatus.RUNNING],
        )

    def should_cancel() -> bool:
        return store.get_job(job_id).status is JobStatus.CANCELLED

    stats = run_estimation(
        prepared.estimator,
        executor,
        game,
        store,
        budget=spec.budget.evaluations,
        chunk_size=spec.executor.chunk_size,
        stopping=prepared.stopping,
        measure=prepared.measure,
        control=RunControl(
            progress_bar=progress_bar, on_progress=on_progress, should_cancel=should_cancel, description=label
        ),
    )
    results = results_per_task(prepared.estimator.result(), game, provenance={"job_id": job_id, "run": label})
    for task, result_json in results.items():
        store.put_result(job_id, task=task, granularity=game.key, estimator=estimator_spec.key, result_json=result_json)
    store.update_job(
        job_id,
        progress={"runs": [*finished, {"granularity": game.key, "estimator": estimator_spec.key} | stats.as_dict()]},
    )
    return RunOutcome(game.key, estimator_spec.key, stats, results)


def results_per_task(result: ShapleyResult, game: GameInfo, provenance: dict[str, Any]) -> dict[str, str]:
    """One single-task ShapleyResult JSON per task column of ``result``, with ``provenance`` in its params."""
    params = {**result.params, "provenance": {**provenance, "game": game.fingerprint, "granularity": game.key}}
    return {
        task: ShapleyResult(
            values=result.values[index : index + 1],
            stderr=result.stderr[index : index + 1],
            counts=result.counts,
            evaluations_used=result.evaluations_used,
            v_full=np.atleast_1d(result.v_full)[index : index + 1],
            v_empty=np.atleast_1d(result.v_empty)[index : index + 1],
            player_names=tuple(game.player_names),
            task_names=(task,),
            estimator=result.estimator,
            params=params,
            seed=result.seed,
        ).to_json()
        for index, task in enumerate(game.task_names)
    }


def default_estimator_factory(spec: EstimatorSpec, game: GameInfo, budget: BudgetSpec) -> PreparedRun:
    """A fresh registry estimator (seeded, players and task columns named) and the budget's stopping rules.

    The rules are checked at round boundaries only, so a seeded run stops at the same point for any chunk
    size or number of workers; their measures (e.g. the largest stderr) are shown in the progress bar.
    """
    estimator = make_estimator(
        spec.name, game.n_players, budget.evaluations, spec.seed, game.player_names, params=spec.params
    )
    estimator.set_task_names(game.task_names)
    criterion = any_of([make_stopping(rule.name, rule.params) for rule in budget.stopping])
    if criterion is None:
        return PreparedRun(estimator, stopping=None, measure=None)

    def at_round_boundary(current: Estimator) -> bool:
        return current.at_round_boundary and criterion.should_stop(current)

    return PreparedRun(estimator, stopping=at_round_boundary, measure=lambda _: criterion.measures())


def check_job(spec: JobSpec) -> None:
    """Fail before any model loads on an unknown estimator, estimator parameter or stopping rule of ``spec``."""
    for estimator in spec.estimators:
        check_estimator(estimator.name, estimator.params)
    for rule in spec.budget.stopping:
        make_stopping(rule.name, rule.params)
