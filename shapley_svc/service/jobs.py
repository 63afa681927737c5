"""Running submitted jobs in the background of the server: a FIFO queue and a few worker threads.

Each worker thread takes the next queued job and calls :func:`shapley_svc.runner.driver.run_job` on the
server's store, which reports progress there and stops at the next progress report once the job's status
turns ``cancelled``. Jobs with executor kind ``ray`` share one Ray connection that the manager opens on
first use: the cluster at ``ray_address`` when configured, else a local Ray. Worker threads are daemons:
stopping the server leaves a running job ``running`` in the store.

A job is admitted under the server's policy (:class:`~shapley_svc.service.admission.Admission`) when it is
submitted, and again when it starts (the policy may have changed since). The store keeps the spec as
submitted (plus the task folder of a named lm-eval task); what only the server decides is set when the job
runs (:meth:`JobManager.as_run`): its store, its Ray address and, for in-process ``local`` jobs, the torch
thread count the server set at start, so that no job changes the server process's threads.

On start, the manager requeues every job the store holds as ``queued`` or ``running`` (left so by a
stopped or crashed server) and resumes it: the value cache holds every coalition value the earlier
attempt computed, so the resumed run re-evaluates none of them and ends with the same result.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from shapley_svc.errors import ShapleySvcError
from shapley_svc.service.admission import Admission, JobQuotaError
from shapley_svc.spec import JobSpec, StoreSpec
from shapley_svc.store.base import JobRecord, JobStateError, JobStatus, ResultStore

logger = logging.getLogger(__name__)

_STOP = ""  # put on the queue once per worker to end it


class JobManager:
    """Queues jobs in ``store`` and runs them, at most ``max_concurrent`` at a time, on daemon threads."""

    def __init__(
        self,
        store: ResultStore,
        store_path: str,
        *,
        max_concurrent: int,
        ray_address: str | None,
        admission: Admission | None = None,
    ):
        self.store = store
        self.store_path = store_path
        self.max_concurrent = max_concurrent
        self.ray_address = ray_address
        self.admission = admission if admission is not None else Admission()
        self.local_threads = self.admission.policy.local_threads
        self._submit_lock = threading.Lock()
        self._queue: queue.Queue[str] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._ray_lock = threading.Lock()
        self._ray_started = False
        self._stopping = threading.Event()

    def start(self) -> list[str]:
        """Fix the torch threads of local jobs, start the worker threads and requeue every queued or running job
        of the store; returns their ids."""
        import torch

        if torch.get_num_threads() != self.local_threads:
            torch.set_num_threads(self.local_threads)
        running, queued = self._all_jobs(JobStatus.RUNNING), self._all_jobs(JobStatus.QUEUED)
        recovered = [job.id for job in [*reversed(running), *reversed(queued)]]  # each oldest first
        for job_id in recovered:
            logger.info("event=job_requeued job=%s", job_id)
            self._queue.put(job_id)
        for index in range(self.max_concurrent):
            worker = threading.Thread(target=self._work, name=f"shapley-job-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return recovered

    def stop(self) -> list[str]:
        """Start no more jobs and let idle workers end; returns the ids of jobs still running (they stay
        ``running``, as jobs still waiting stay ``queued``, and both resume at the next start)."""
        self._stopping.set()
        for _ in self._workers:
            self._queue.put(_STOP)
        with self._lock:
            running = sorted(self._running)
        if self._ray_started and not running:  # with jobs running, Ray goes down with the process
            import ray

            ray.shutdown()
        return running

    def as_run(self, spec: JobSpec) -> JobSpec:
        """``spec`` as the server runs it: results go to the server's store; Ray jobs use the server's Ray;
        local jobs, in this process, its torch threads (none of which decides a result)."""
        executor = spec.executor
        if executor.kind == "ray":
            executor = executor.model_copy(update={"address": self.ray_address})
        else:
            executor = executor.model_copy(update={"threads_per_worker": self.local_threads})
        store = StoreSpec(path=self.store_path, reuse_across_setups=spec.store.reuse_across_setups)
        return spec.model_copy(update={"store": store, "executor": executor})

    def submit(self, spec: JobSpec) -> JobRecord:
        """Admit ``spec`` under the policy (PolicyError), check the token's job quota (JobQuotaError), store it
        as a queued job and put it in line; returns the stored job."""
        admitted = self.admission.enforce(spec)
        limit = self.admission.policy.max_jobs_per_token
        with self._submit_lock:
            active = sum(len(self._all_jobs(status)) for status in (JobStatus.QUEUED, JobStatus.RUNNING))
            if active >= limit:
                raise JobQuotaError(
                    f"the write token has {active} queued or running jobs, this server's limit (policy "
                    "max_jobs_per_token); submit again when one has finished, or cancel one"
                )
            job = self.store.create_job(admitted.model_dump(mode="json"))
        logger.info("event=job_submitted job=%s name=%s", job.id, spec.name)
        self._queue.put(job.id)
        return job

    def cancel(self, job_id: str) -> JobRecord:
        """Mark a queued or running job cancelled (a running one stops within about a second)."""
        job = self.store.get_job(job_id)
        if job.status.finished:
            raise JobStateError(
                f"job {job_id} has finished ({job.status.value}); only queued or running jobs can be cancelled"
            )
        cancelled = self.store.update_job(
            job_id, status=JobStatus.CANCELLED, only_from=[JobStatus.QUEUED, JobStatus.RUNNING]
        )
        logger.info("event=job_cancelled job=%s", job_id)
        return cancelled

    def running(self) -> list[str]:
        """The ids of the jobs this process is running now (a cancelled one until it reaches its next report)."""
        with self._lock:
            return sorted(self._running)

    def counts(self) -> tuple[int, int]:
        """(running, queued) jobs in the store."""
        return len(self._all_jobs(JobStatus.RUNNING)), len(self._all_jobs(JobStatus.QUEUED))

    def _all_jobs(self, status: JobStatus) -> list[JobRecord]:
        jobs: list[JobRecord] = []
        while True:
            page = self.store.list_jobs(status=status, limit=500, offset=len(jobs))
            jobs.extend(page)
            if len(page) < 500:
                return jobs

    def _work(self) -> None:
        while (job_id := self._queue.get()) != _STOP:
            if self._stopping.is_set():
                continue
            with self._lock:
                self._running.add(job_id)
            try:
                self._run(job_id)
            except Exception:  # a bug must not end the worker: log it and take the next job
                logger.exception("event=job_worker_error job=%s", job_id)
            finally:
                with self._lock:
                    self._running.discard(job_id)

    def _run(self, job_id: str) -> None:
        """Run one job unless it was cancelled while it waited; run_job records success or failure."""
        from shapley_svc.runner.driver import JobCancelledError, run_job

        try:
            job = self.store.update_job(
                job_id, status=JobStatus.RUNNING, only_from=[JobStatus.QUEUED, JobStatus.RUNNING]
            )
        except JobStateError:
            logger.info("event=job_skipped job=%s reason=not_queued", job_id)
            return
        try:
            spec = self.as_run(self.admission.readmit(job.spec))
        except ShapleySvcError as error:  # the policy changed since the job was submitted
            self.store.update_job(job_id, status=JobStatus.FAILED, error=f"refused when it started: {error}")
            return
        except ValueError as error:
            self.store.update_job(job_id, status=JobStatus.FAILED, error=f"the stored spec is no longer valid: {error}")
            return
        logger.info("event=job_started job=%s", job_id)
        try:
            if spec.executor.kind == "ray":
                self._connect_ray()
            outcome = run_job(spec, store=self.store, job_id=job_id, resume=True, progress_bar=False)
        except JobCancelledError:
            logger.info("event=job_stopped job=%s reason=cancelled", job_id)
        except ShapleySvcError as error:
            logger.warning("event=job_failed job=%s error=%s", job_id, error)
            self._record_failure(job_id, error)
        except Exception as error:  # not an expected failure: keep the traceback in the log
            logger.exception("event=job_failed job=%s", job_id)
            self._record_failure(job_id, error)
        else:
            logger.info("event=job_done job=%s seconds=%.2f", job_id, outcome.seconds)

    def _record_failure(self, job_id: str, error: BaseException) -> None:
        """run_job marks a failure it sees; this covers one raised before it started (e.g. Ray unreachable)."""
        job = self.store.get_job(job_id)
        if job.status is JobStatus.RUNNING:
            self.store.update_job(job_id, status=JobStatus.FAILED, error=f"{type(error).__name__}: {error}")

    def _connect_ray(self) -> None:
        """Open the server's one Ray connection (the configured cluster, else a local Ray) if not open yet."""
        with self._ray_lock:
            import ray

            if ray.is_initialized():
                return
            try:
                init_options: dict[str, Any] = {"address": self.ray_address, "logging_level": logging.WARNING}
                if self.ray_address is None:
                    init_options["include_dashboard"] = False
                ray.init(**init_options)
            except Exception as error:  # Ray raises ConnectionError, RuntimeError, ... for an unreachable cluster
                raise RayUnavailableError(
                    f"cannot connect to Ray at {self.ray_address or 'a new local instance'}: {error}; "
                    "check the server's ray_address setting (SHAPLEY_SVC_RAY_ADDRESS)"
                ) from error
            self._ray_started = True
            logger.info("event=ray_connected address=%s", self.ray_address or "local")


class RayUnavailableError(ShapleySvcError):
    """The server could not connect to the Ray cluster its settings name (or start a local one)."""
