"""Jobs: every (granularity, estimator) run of a spec, then its plans, over one evaluator per game.

A job opens (or resumes) its record in the store, starts the executor the spec asks for, builds one
:class:`~shapley_svc.runner.evaluator.Evaluator` per granularity (so every estimator and plan of a game
reads the same cached values) and pumps a fresh seeded estimator through each
:class:`~shapley_svc.runner.estimation.EstimationRun`, then searches each plan of that granularity
(:func:`~shapley_svc.planning.requests.plan_requested`), checked on the held-out game when the spec has
held-out tasks; progress goes to the store, and the job stops when it is cancelled there. Results are stored
one ``ShapleyResult`` JSON per task, plans one ``RemovalPlan`` JSON each, with their provenance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from shapley_svc.data.splits import check_disjoint, seed_paper_note, split_provenance
from shapley_svc.estimators import check_estimator, make_estimator
from shapley_svc.estimators.result import ShapleyResult
from shapley_svc.estimators.stopping import make_stopping_rule, round_hooks
from shapley_svc.planning import SEARCHERS
from shapley_svc.planning.plan import RemovalPlan
from shapley_svc.planning.requests import objective_of, plan_requested
from shapley_svc.runner.estimation import (
    AskTellEstimator,
    EstimationRun,
    RunStats,
    Steering,
    StoppingMeasure,
    StoppingRule,
)
from shapley_svc.runner.evaluator import Control, Evaluator, JobCancelledError
from shapley_svc.runner.executors import HELD_OUT, Executor, GameInfo, build_value_function, make_executor
from shapley_svc.spec import BudgetSpec, EstimatorSpec, JobSpec, PlanSpec, TaskSpec
from shapley_svc.store.base import JobNotFoundError, JobRecord, JobStateError, JobStatus, ResultStore
from shapley_svc.store.sqlite import SQLiteStore

logger = logging.getLogger(__name__)

__all__ = ["JobCancelledError", "JobOutcome", "PlanOutcome", "PreparedRun", "RunOutcome", "RunStats", "run_job"]


@dataclass(frozen=True)
class PreparedRun:
    """A fresh estimator for one run with its stopping rule, the measure shown beside the bar, its steering."""

    estimator: AskTellEstimator
    stopping: StoppingRule | None
    measure: StoppingMeasure | None
    steer: Steering | None = None


EstimatorFactory = Callable[[EstimatorSpec, GameInfo, BudgetSpec], PreparedRun]
"""Builds a fresh seeded estimator (and its stopping rule) for one game; called once per run."""


@dataclass(frozen=True)
class RunOutcome:
    """One finished run: which game and estimator, its stats, and the result JSON per task."""

    granularity: str
    estimator: str
    stats: RunStats
    results: dict[str, str]


class PlanOutcome(NamedTuple):
    """One searched plan: its name (the spec's key), granularity and the plan."""

    name: str
    granularity: str
    plan: RemovalPlan


@dataclass(frozen=True)
class JobOutcome:
    """A finished job: its id, status, store path, every run and every plan."""

    job_id: str
    status: JobStatus
    store_path: str
    runs: tuple[RunOutcome, ...]
    seconds: float
    plans: tuple[PlanOutcome, ...] = ()

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
            "plans": [
                {"name": done.name, "granularity": done.granularity, "removed": list(done.plan.removed)}
                | {"value": done.plan.value, "evaluations_used": done.plan.evaluations_used}
                | {"evaluations_computed": done.plan.evaluations_computed}
                | {"held_out": [check.model_dump() for check in done.plan.held_out]}
                for done in self.plans
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
    active_store: ResultStore = store if store is not None else SQLiteStore(spec.store.path)
    try:
        job = _open_job(active_store, spec, job_id, resume)
        job_run = _JobRun(spec, job.id, active_store, estimator_factory or default_estimator_factory, progress_bar)
        runs, plans = job_run.run_recorded(executor)
    finally:
        if store is None:
            active_store.close()
    seconds = time.perf_counter() - started
    return JobOutcome(job.id, JobStatus.SUCCEEDED, str(spec.store.path), tuple(runs), seconds, tuple(plans))


@dataclass
class _JobRun:
    """One job's runs against its store: status kept there, progress reported, cancellation obeyed."""

    spec: JobSpec
    job_id: str
    store: ResultStore
    factory: EstimatorFactory
    progress_bar: bool

    def run_recorded(self, executor: Executor | None) -> tuple[list[RunOutcome], list[PlanOutcome]]:
        """Every run and plan, the job marked running, then succeeded, failed (with the reason) or cancelled."""
        store, job_id = self.store, self.job_id
        try:
            # only from a runnable status: a cancel landing between the caller's last read and this write wins
            store.update_job(job_id, status=JobStatus.RUNNING, progress={"runs": []}, only_from=_RESUMABLE)
            runs, plans = self.run_all(executor)
            store.update_job(job_id, status=JobStatus.SUCCEEDED, only_from=[JobStatus.RUNNING])
        except JobCancelledError:
            raise
        except JobStateError as error:
            raise JobCancelledError(f"job {job_id} changed status while it ran: {error}") from error
        except BaseException as error:
            reason = "interrupted; continue it with --resume" if isinstance(error, KeyboardInterrupt) else str(error)
            store.update_job(job_id, status=JobStatus.FAILED, error=f"{type(error).__name__}: {reason}")
            raise
        return runs, plans

    def run_all(self, executor: Executor | None) -> tuple[list[RunOutcome], list[PlanOutcome]]:
        """One evaluator per granularity, shared by that game's estimator runs and plans; the executor closed
        if ours."""
        active = executor if executor is not None else make_executor(self.spec)
        runs: list[RunOutcome] = []
        plans: list[PlanOutcome] = []
        try:
            games = active.games()
            for granularity in self.spec.players.granularities:
                evaluator = self.evaluator(active, games[granularity])
                runs.extend(self.run_one(estimator, evaluator, runs) for estimator in self.spec.estimators)
                held_out = self.evaluator(active, games[granularity + HELD_OUT]) if self.spec.held_out else None
                for request in self.spec.plans:
                    if request.granularity.value == granularity:
                        plans.append(self.plan_one(request, evaluator, held_out, runs, plans))
        finally:
            if executor is None:
                active.close()
        return runs, plans

    def evaluator(self, executor: Executor, game: GameInfo) -> Evaluator:
        """The evaluator of one of the executor's games, under the spec's chunking and cache settings."""
        return Evaluator(
            executor,
            self.store,
            game,
            chunk_size=self.spec.executor.chunk_size,
            reuse_across_setups=self.spec.store.reuse_across_setups,
        )

    def plan_one(
        self,
        request: PlanSpec,
        evaluator: Evaluator,
        held_out: Evaluator | None,
        runs: list[RunOutcome],
        done: list[PlanOutcome],
    ) -> PlanOutcome:
        """One plan searched on the game's cached values (checked on held-out data if any), stored by name."""
        progress = {"runs": _runs_progress(runs), "plans": [outcome.name for outcome in done]}

        def on_progress() -> None:
            current = {"plan": request.key, "budget": request.budget}
            self.store.update_job(self.job_id, progress=progress | {"current": current}, only_from=[JobStatus.RUNNING])

        control = Control(
            self.progress_bar, on_progress=on_progress, should_cancel=self.cancelled, description=request.key
        )
        plan = plan_requested(request, evaluator, held_out=held_out, progress=control)
        provenance = {"job_id": self.job_id, "plan": request.key, "game": evaluator.game.fingerprint}
        provenance |= splits_provenance(self.spec)
        plan = plan.with_provenance(provenance | evaluator.provenance())
        self.store.put_plan(self.job_id, name=request.key, granularity=evaluator.game.key, plan_json=plan.to_json())
        self.store.update_job(self.job_id, progress=progress | {"plans": [*progress["plans"], request.key]})
        return PlanOutcome(request.key, evaluator.game.key, plan)

    def cancelled(self) -> bool:
        """Whether the job was cancelled in the store (checked between chunks)."""
        return self.store.get_job(self.job_id).status is JobStatus.CANCELLED

    def run_one(self, estimator_spec: EstimatorSpec, evaluator: Evaluator, done: list[RunOutcome]) -> RunOutcome:
        """One (granularity, estimator) run: a fresh seeded estimator pumped to the end, its results stored."""
        game, budget = evaluator.game, self.spec.budget
        prepared = self.factory(estimator_spec, game, budget)
        label = f"{game.key}/{estimator_spec.key}"
        finished = _runs_progress(done)
        run = EstimationRun(
            prepared.estimator,
            evaluator,
            budget=budget.evaluations,
            stopping=prepared.stopping,
            measure=prepared.measure,
            steer=prepared.steer,
        )

        def on_progress() -> None:
            """Report progress while the job runs; once it is cancelled the write fails and the run stops."""
            current = {"granularity": game.key, "estimator": estimator_spec.key, "budget": budget.evaluations}
            self.store.update_job(
                self.job_id,
                progress={"runs": finished, "current": current | run.stats.as_dict()},
                only_from=[JobStatus.RUNNING],
            )

        control = Control(self.progress_bar, description=label, on_progress=on_progress, should_cancel=self.cancelled)
        stats = run.run(control)
        provenance = {"job_id": self.job_id, "run": label} | evaluator.provenance() | splits_provenance(self.spec)
        provenance |= seed_paper_provenance(prepared.estimator, self.spec)
        results = results_per_task(prepared.estimator.result(), game, provenance=provenance)
        for task, result_json in results.items():
            self.store.put_result(
                self.job_id, task=task, granularity=game.key, estimator=estimator_spec.key, result_json=result_json
            )
        self.store.update_job(
            self.job_id,
            progress={
                "runs": [*finished, {"granularity": game.key, "estimator": estimator_spec.key} | stats.as_dict()]
            },
        )
        return RunOutcome(game.key, estimator_spec.key, stats, results)


def task_pairs(tasks: Sequence[TaskSpec]) -> list[tuple[str, dict[str, Any]]]:
    """(name, params) of each task, as :mod:`shapley_svc.data.splits` reads them."""
    return [(task.name, task.params) for task in tasks]


def splits_provenance(spec: JobSpec) -> dict[str, Any]:
    """The estimation and judging slices of ``spec`` and whether they were allowed to overlap."""
    return {"splits": split_provenance(task_pairs(spec.tasks), task_pairs(spec.held_out), spec.allow_overlap)}


def seed_paper_provenance(estimator: object, spec: JobSpec) -> dict[str, Any]:
    """A note (also logged) when an estimator that follows the seed paper estimates on MMLU test questions."""
    note = seed_paper_note(task_pairs(spec.tasks)) if getattr(estimator, "follows_seed_paper", False) else None
    if note is None:
        return {}
    logger.info("event=seed_paper_test_set estimator=%s %s", type(estimator).__name__, note)
    return {"seed_paper": note}


def _runs_progress(runs: list[RunOutcome]) -> list[dict[str, Any]]:
    """The finished runs as the job's progress reports them."""
    return [{"granularity": run.granularity, "estimator": run.estimator} | run.stats.as_dict() for run in runs]


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
    size or number of workers; their measures (e.g. the largest stderr) are shown in the progress bar, and a
    rule that steers sampling (``pruning_set_decided``) focuses a focusable estimator.
    """
    estimator = make_estimator(
        spec.name, game.n_players, budget.evaluations, spec.seed, game.player_names, params=spec.params
    )
    estimator.set_task_names(game.task_names)
    criterion = make_stopping_rule(budget.stopping)
    if criterion is None:
        return PreparedRun(estimator, stopping=None, measure=None)
    hooks = round_hooks(criterion)
    return PreparedRun(estimator, stopping=hooks.stopping, measure=hooks.measure, steer=hooks.steer)


def check_job(spec: JobSpec) -> None:
    """Fail before any model loads on an unknown estimator, estimator parameter or stopping rule of ``spec``,
    a plan whose searcher, options or objective tasks are unknown, or held-out data overlapping the tasks'
    (unless ``allow_overlap``)."""
    check_disjoint(task_pairs(spec.tasks), task_pairs(spec.held_out), allow_overlap=spec.allow_overlap)
    for estimator in spec.estimators:
        check_estimator(estimator.name, estimator.params)
    make_stopping_rule(spec.budget.stopping)
    if spec.plans:
        task_names = build_value_function(tuple(spec.tasks)).task_names
        for request in spec.plans:
            SEARCHERS.build(SEARCHERS.key(request.method), params=request.params)
            objective_of(request, task_names)
