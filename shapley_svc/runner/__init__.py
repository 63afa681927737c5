"""Running work: executors (in process, Ray actor pool), the one evaluator of coalitions, estimation runs,
jobs (:mod:`.driver`) and their cost estimate (:mod:`.cost`).

The package namespace holds what has no estimator dependency; import jobs from :mod:`.driver`.
"""

from shapley_svc.runner.estimation import EstimationRun, RunStats
from shapley_svc.runner.evaluator import Control, EvaluationStats, Evaluator, JobCancelledError, Ticket
from shapley_svc.runner.executors import (
    Chunk,
    ChunkResult,
    Executor,
    GameInfo,
    GameWorker,
    InProcessExecutor,
    LostChunk,
    RayActorPool,
    WorkerSetup,
    make_executor,
)

__all__ = [
    "Chunk",
    "ChunkResult",
    "Control",
    "EstimationRun",
    "EvaluationStats",
    "Evaluator",
    "Executor",
    "GameInfo",
    "GameWorker",
    "InProcessExecutor",
    "JobCancelledError",
    "LostChunk",
    "RayActorPool",
    "RunStats",
    "Ticket",
    "WorkerSetup",
    "make_executor",
]
