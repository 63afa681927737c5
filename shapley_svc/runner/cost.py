"""Cost estimate before a run (``--dry-run``): seconds per evaluation on one worker, scaled to the job.

One worker is built in this process, a warm-up chunk is evaluated, then ``sample`` random coalitions of each
granularity are timed. The job implies at most ``budget x estimators`` evaluations per granularity (an upper
bound: values already in the store's cache are not evaluated again); wall time assumes the evaluations
spread evenly over the workers, and GPU-hours count every worker's GPUs for that wall time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shapley_svc.runner.executors import GameWorker, WorkerSetup
from shapley_svc.spec import JobSpec


@dataclass(frozen=True)
class CostEstimate:
    """Measured seconds per evaluation per granularity and what the job's budget implies."""

    seconds_per_evaluation: dict[str, float]
    evaluations: dict[str, int]
    workers: int
    wall_seconds: float
    gpu_hours: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_cost(spec: JobSpec, *, sample: int = 8, seed: int = 0) -> CostEstimate:
    """Time ``sample`` random coalitions per granularity on one in-process worker; scale to the spec."""
    worker = GameWorker.from_setup(WorkerSetup.from_spec(spec))
    rng = np.random.default_rng(seed)
    per_evaluation: dict[str, float] = {}
    evaluations: dict[str, int] = {}
    for key, info in worker.describe().items():
        worker.evaluate(key, np.ones((1, info.n_players), dtype=bool))  # warm-up: kernels, allocator
        coalitions = rng.random((sample, info.n_players)) < 0.5
        started = time.perf_counter()
        worker.evaluate(key, coalitions)
        per_evaluation[key] = (time.perf_counter() - started) / sample
        evaluations[key] = spec.budget.evaluations * len(spec.estimators)
    workers = spec.executor.num_workers if spec.executor.kind == "ray" else 1
    total_seconds = sum(per_evaluation[key] * evaluations[key] for key in per_evaluation)
    wall = total_seconds / workers
    gpus = spec.executor.num_gpus_per_worker if spec.executor.kind == "ray" else 0.0
    return CostEstimate(per_evaluation, evaluations, workers, wall, wall * workers * gpus / 3600)
