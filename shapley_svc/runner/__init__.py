"""Running jobs: executors (in process, Ray actor pool), the driver pump, the cost estimate."""

from shapley_svc.runner.driver import (
    JobCancelledError,
    JobOutcome,
    PreparedRun,
    RunControl,
    RunOutcome,
    RunStats,
    run_estimation,
    run_job,
)
from shapley_svc.runner.executors import (
    Chunk,
    ChunkResult,
    Executor,
    GameInfo,
    GameWorker,
    InProcessExecutor,
    RayActorPool,
    WorkerSetup,
    make_executor,
)

__all__ = [
    "Chunk",
    "ChunkResult",
    "Executor",
    "GameInfo",
    "GameWorker",
    "InProcessExecutor",
    "JobCancelledError",
    "JobOutcome",
    "PreparedRun",
    "RayActorPool",
    "RunControl",
    "RunOutcome",
    "RunStats",
    "WorkerSetup",
    "make_executor",
    "run_estimation",
    "run_job",
]
