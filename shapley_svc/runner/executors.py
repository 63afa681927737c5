"""Executors: where chunks of coalitions are evaluated, behind one interface.

An executor takes :class:`Chunk` s (a game key and bool[k, n] coalitions), evaluates them and hands back
:class:`ChunkResult` s in completion order, or a :class:`LostChunk` when the worker holding a chunk died.
It holds no algorithm state: the :class:`~shapley_svc.runner.evaluator.Evaluator` owns the cache, what is
in flight and what is sent again. Two implementations:

- :class:`InProcessExecutor`: evaluates in the calling process (tests, notebooks, one machine).
- :class:`RayActorPool`: ``num_workers`` Ray actors, each loading the model once and preparing every value
  function once (``num_gpus_per_worker=1`` on a GPU cluster). A bounded number of chunks is in flight; a
  dead actor is replaced and its chunks are handed back as lost, for the evaluator to send again
  (evaluation is idempotent); an actor that cannot load its model fails the job with the reason. The
  worker setup is put in the object store once and shared by every actor.

A worker that runs out of memory halves its batch and retries, and says so in the log.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from shapley_svc.errors import ConfigError, EvaluationError, ModelLoadError, ShapleySvcError
from shapley_svc.spec import ExecutorSpec, JobSpec, ModelSpec, TaskSpec
from shapley_svc.types import Coalitions, Game, Values

if TYPE_CHECKING:
    from shapley_svc.values.base import ValueFunction

logger = logging.getLogger(__name__)


class FingerprintedGame(Game, Protocol):
    """A :class:`~shapley_svc.types.Game` whose values depend only on :meth:`fingerprint` and the coalition."""

    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class GameInfo:
    """What the evaluator needs to know about one game a worker serves (one per granularity).

    ``fingerprint`` names what a value depends on (model, value function, granularity); ``setup`` how it was
    computed (device type, dtype, library versions; empty for a game that does not run a model).
    """

    key: str
    fingerprint: str
    player_names: tuple[str, ...]
    task_names: tuple[str, ...]
    setup: str = ""

    @property
    def n_players(self) -> int:
        return len(self.player_names)


@dataclass(frozen=True)
class Chunk:
    """Coalitions (bool[k, n]) of game ``game`` to evaluate together; ``id`` is unique within a job."""

    id: int
    game: str
    coalitions: Coalitions


@dataclass(frozen=True)
class ChunkResult:
    """The values (float[k, t]) of a chunk, which worker computed them and how long it took."""

    chunk: Chunk
    values: Values
    seconds: float
    worker: int


@dataclass(frozen=True)
class LostChunk:
    """A chunk whose worker died before it was done; send it again."""

    chunk: Chunk
    worker: int
    reason: str


Finished = ChunkResult | LostChunk
"""What :meth:`Executor.wait` hands back for each chunk that left the executor."""


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker needs to build its games; plain data, sent to each worker once.

    ``held_out`` tasks (any mean over items: windows, questions, passages) give each granularity a second
    game, ``<granularity>.held_out``, valued per item (:class:`~shapley_svc.values.per_item.PerItem`), on which
    plans are checked item by item against the full model. ``selection`` tasks (the estimation tasks on fresh
    data) give it a third, ``<granularity>.selection``, on which a plan search decides among its finalists.
    """

    model: ModelSpec
    granularities: tuple[str, ...]
    tasks: tuple[TaskSpec, ...]
    threads: int = 1
    held_out: tuple[TaskSpec, ...] = ()
    selection: tuple[TaskSpec, ...] = ()

    @classmethod
    def from_spec(cls, spec: JobSpec) -> WorkerSetup:
        """The worker setup a job spec implies."""
        return cls(
            model=spec.model,
            granularities=tuple(spec.players.granularities),
            tasks=tuple(spec.tasks),
            threads=spec.executor.threads_per_worker,
            held_out=tuple(spec.held_out),
        )


HELD_OUT = ".held_out"
"""Suffix of the key of a granularity's held-out game."""
SELECTION = ".selection"
"""Suffix of the key of a granularity's selection game."""


def build_value_function(tasks: tuple[TaskSpec, ...], *, per_item: bool = False) -> ValueFunction:
    """One value function scoring every task of ``tasks`` (one value column per task, or per task and item
    with ``per_item``), via the registry."""
    from shapley_svc.values import make_value_fn
    from shapley_svc.values.multi import MultiTask
    from shapley_svc.values.per_item import per_item as item_by_item

    value_fns = [make_value_fn(task.name, task.params) for task in tasks]
    if per_item:
        value_fns = [item_by_item(value_fn) for value_fn in value_fns]
    return value_fns[0] if len(value_fns) == 1 else MultiTask(value_fns)


def build_games(setup: WorkerSetup) -> dict[str, FingerprintedGame]:
    """Load the model once and build one :class:`~shapley_svc.values.base.ModelGame` per granularity."""
    import torch

    from shapley_svc.model.loading import load_model
    from shapley_svc.model.masked import MaskedModel
    from shapley_svc.values.base import ModelGame

    torch.set_num_threads(setup.threads)
    loaded = load_model(setup.model.name, dtype=setup.model.dtype, device=setup.model.device)
    games: dict[str, FingerprintedGame] = {}
    for granularity in setup.granularities:
        masked = MaskedModel(loaded.model, loaded.layout, granularity)
        games[granularity] = ModelGame(masked, build_value_function(setup.tasks), loaded.tokenizer, loaded.fingerprint)
        if setup.held_out:
            held_out = build_value_function(setup.held_out, per_item=True)
            games[granularity + HELD_OUT] = ModelGame(masked, held_out, loaded.tokenizer, loaded.fingerprint)
        if setup.selection:
            selection = build_value_function(setup.selection)
            games[granularity + SELECTION] = ModelGame(masked, selection, loaded.tokenizer, loaded.fingerprint)
    return games


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device out-of-memory error (CUDA OOM, or a RuntimeError saying so)."""
    return type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class GameWorker:
    """Evaluates chunks on resident games; on out-of-memory it halves its batch, retries and logs it."""

    def __init__(self, games: Mapping[str, FingerprintedGame], *, worker: int = 0):
        self.games = dict(games)
        self.worker = worker
        self.batch_limit: int | None = None

    @classmethod
    def from_setup(cls, setup: WorkerSetup, *, worker: int = 0) -> GameWorker:
        """Load the model and prepare the value functions of ``setup``."""
        return cls(build_games(setup), worker=worker)

    def describe(self) -> dict[str, GameInfo]:
        """The games this worker serves, by key."""
        return {
            key: GameInfo(key, game.fingerprint(), tuple(game.player_names), tuple(game.task_names), game_setup(game))
            for key, game in self.games.items()
        }

    def evaluate(self, game_key: str, coalitions: Coalitions) -> Values:
        """float[k, t] values of ``coalitions`` under game ``game_key``, in at most ``batch_limit`` at a time."""
        try:
            game = self.games[game_key]
        except KeyError:
            raise ConfigError(f"worker has no game {game_key!r}; it serves {sorted(self.games)}") from None
        parts: list[Values] = []
        start = 0
        while start < len(coalitions):
            size = min(self.batch_limit or len(coalitions), len(coalitions) - start)
            try:
                parts.append(np.asarray(game(coalitions[start : start + size]), dtype=np.float64))
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if size == 1:
                    raise EvaluationError(
                        f"worker {self.worker} ran out of memory on a single coalition of {game_key}: use a "
                        "device with more memory, a smaller dtype, or fewer tokens per batch in the task"
                    ) from error
                self.batch_limit = max(1, size // 2)
                logger.warning(
                    "event=out_of_memory worker=%d game=%s batch=%d retry_batch=%d",
                    self.worker,
                    game_key,
                    size,
                    self.batch_limit,
                )
                _free_device_memory()
                continue
            start += size
        return np.concatenate(parts) if parts else np.zeros((0, len(game.task_names)))


def game_setup(game: object) -> str:
    """The run-time set-up of a model game (``ModelGame.setup``); empty for a game without a model."""
    setup = getattr(game, "setup", None)
    return setup() if callable(setup) else ""


class Executor(Protocol):
    """Evaluates chunks and returns them in completion order; holds no algorithm state."""

    @property
    def capacity(self) -> int:
        """How many chunks may be in flight at once."""
        ...

    @property
    def in_flight(self) -> int:
        """Chunks submitted and not yet handed back (done or lost)."""
        ...

    @property
    def num_workers(self) -> int: ...

    def games(self) -> dict[str, GameInfo]:
        """The games the workers serve, by key (granularity)."""
        ...

    def submit(self, chunk: Chunk) -> None:
        """Queue ``chunk`` for evaluation (the caller keeps at most ``capacity`` in flight)."""
        ...

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Chunks done or lost since the last call, at least one unless ``timeout`` passes or none is in flight."""
        ...

    def close(self) -> None:
        """Stop every worker this executor started."""
        ...


class InProcessExecutor:
    """Evaluates chunks in the calling process, one at a time, when :meth:`wait` is called."""

    def __init__(self, worker: GameWorker):
        self.worker = worker
        self._queue: deque[Chunk] = deque()
        self._games = worker.describe()

    @classmethod
    def from_games(cls, games: Mapping[str, FingerprintedGame]) -> InProcessExecutor:
        """An executor over ready-made games (a model game, or any game with a fingerprint)."""
        return cls(GameWorker(games))

    @property
    def capacity(self) -> int:
        return 1

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    @property
    def num_workers(self) -> int:
        return 1

    def games(self) -> dict[str, GameInfo]:
        return dict(self._games)

    def submit(self, chunk: Chunk) -> None:
        self._queue.append(chunk)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        if not self._queue:
            return []
        chunk = self._queue.popleft()
        started = time.perf_counter()
        values = self.worker.evaluate(chunk.game, chunk.coalitions)
        return [ChunkResult(chunk, values, time.perf_counter() - started, self.worker.worker)]

    def close(self) -> None:
        self._queue.clear()


class ModelActor:
    """The body of one Ray actor: a :class:`GameWorker` built from the shared setup, or the reason it failed."""

    def __init__(self, setup: WorkerSetup, worker: int):
        self.worker = worker
        self.load_error: str | None = None
        self.game_worker: GameWorker | None = None
        try:
            self.game_worker = GameWorker.from_setup(setup, worker=worker)
        except Exception as error:  # reported by describe(): the driver fails the job with this reason
            logger.exception("worker %d could not load its model", worker)
            self.load_error = f"{type(error).__name__}: {error}"

    def describe(self) -> dict[str, GameInfo]:
        """The games served; a ModelLoadError with the reason if the model did not load."""
        return self._ready().describe()

    def evaluate(self, game_key: str, coalitions: Coalitions) -> tuple[Values, float]:
        """Values of ``coalitions`` and the seconds they took."""
        started = time.perf_counter()
        values = self._ready().evaluate(game_key, coalitions)
        return values, time.perf_counter() - started

    def _ready(self) -> GameWorker:
        if self.game_worker is None:
            raise ModelLoadError(f"worker {self.worker} could not load its model: {self.load_error}")
        return self.game_worker


@dataclass(eq=False)
class _Slot:
    """One live actor of the pool and the chunks it holds, by object reference."""

    index: int
    handle: Any
    pending: dict[Any, Chunk] = field(default_factory=dict)


class RayActorPool:
    """``num_workers`` Ray actors with one resident model each; bounded in flight; dead actors replaced.

    Uses the Ray this process is connected to, else connects to ``executor.address``, else starts a private
    local Ray (never joining another one on the machine); it shuts down only a Ray it started itself.
    """

    def __init__(
        self,
        setup: WorkerSetup,
        executor: ExecutorSpec,
        *,
        actor_class: Callable[..., Any] = ModelActor,
        startup_timeout: float = 600.0,
    ):
        import ray

        self._ray = ray
        self.spec = executor
        self._started_ray = False
        if not ray.is_initialized():
            if executor.address is None:  # "local": a private Ray, never one that another user started here
                ray.init(
                    address="local",
                    num_cpus=max(1, math.ceil(executor.num_workers * executor.num_cpus_per_worker)),
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            else:
                ray.init(address=executor.address, logging_level=logging.WARNING)
            self._started_ray = True
        self._remote_class = ray.remote(actor_class).options(
            num_cpus=executor.num_cpus_per_worker,
            num_gpus=executor.num_gpus_per_worker,
            max_restarts=0,
            max_concurrency=1,
        )
        self._setup_ref = ray.put(setup)
        self._startup_timeout = startup_timeout
        self._next_index = 0
        self.restarts = 0
        self._slots: list[_Slot] = []
        try:
            self._slots = [self._new_slot() for _ in range(executor.num_workers)]
            infos = [self._describe(slot) for slot in self._slots]
        except BaseException:
            self.close()
            raise
        self._games = infos[0]
        for info in infos[1:]:
            if info != self._games:
                self.close()
                raise ModelLoadError(
                    "workers loaded different models or data (their game fingerprints differ): make sure every "
                    f"node sees the same model {setup.model.name!r} and the same task data"
                )

    def _new_slot(self) -> _Slot:
        index = self._next_index
        self._next_index += 1
        return _Slot(index, self._remote_class.remote(self._setup_ref, index))

    def _describe(self, slot: _Slot) -> dict[str, GameInfo]:
        """Wait for ``slot``'s actor to load; a load failure fails the job with the worker's reason."""
        ray = self._ray
        try:
            return ray.get(slot.handle.describe.remote(), timeout=self._startup_timeout)
        except ray.exceptions.GetTimeoutError as error:
            raise ModelLoadError(
                f"worker {slot.index} did not load its model within {self._startup_timeout:.0f} s; check that the "
                "cluster has the resources asked for (num_gpus_per_worker, num_cpus_per_worker)"
            ) from error
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, ShapleySvcError):
                raise ModelLoadError(str(cause)) from error
            raise ModelLoadError(f"worker {slot.index} failed while loading: {error}") from error
        except ray.exceptions.RayActorError as error:
            raise ModelLoadError(f"worker {slot.index} died while loading its model: {error}") from error

    @property
    def capacity(self) -> int:
        return self.spec.in_flight_limit

    @property
    def in_flight(self) -> int:
        return sum(len(slot.pending) for slot in self._slots)

    @property
    def num_workers(self) -> int:
        return len(self._slots)

    def games(self) -> dict[str, GameInfo]:
        return dict(self._games)

    def actors(self) -> list[Any]:
        """The live actor handles (tests kill one to check fault tolerance)."""
        return [slot.handle for slot in self._slots]

    def submit(self, chunk: Chunk) -> None:
        slot = min(self._slots, key=lambda candidate: len(candidate.pending))
        slot.pending[slot.handle.evaluate.remote(chunk.game, chunk.coalitions)] = chunk

    def wait(self, timeout: float | None = None) -> list[Finished]:
        ray = self._ray
        owner = {ref: slot for slot in self._slots for ref in slot.pending}
        if not owner:
            return []
        ready, _ = ray.wait(list(owner), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(owner), num_returns=len(owner), timeout=0)
        results: list[Finished] = []
        for ref in ready:
            slot = owner[ref]
            if ref not in slot.pending:  # its actor died earlier in this loop and the chunk was handed back
                continue
            try:
                values, seconds = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                results.extend(self._replace(slot, error))
                continue
            except ray.exceptions.RayTaskError as error:
                chunk = slot.pending.pop(ref)
                cause = error.cause
                if isinstance(cause, ShapleySvcError):
                    raise type(cause)(f"{cause} (chunk {chunk.id} of {chunk.game}, worker {slot.index})") from error
                raise EvaluationError(
                    f"worker {slot.index} failed on chunk {chunk.id} of {chunk.game}: {error}"
                ) from error
            results.append(ChunkResult(slot.pending.pop(ref), values, seconds, slot.index))
        return results

    def _replace(self, slot: _Slot, error: BaseException) -> list[LostChunk]:
        """Replace the dead actor of ``slot``; every chunk it held comes back as lost."""
        self.restarts += 1
        lost = list(slot.pending.values())
        slot.pending.clear()
        logger.warning(
            "event=worker_died worker=%d chunks_lost=%d restarts=%d reason=%s",
            slot.index,
            len(lost),
            self.restarts,
            type(error).__name__,
        )
        if self.restarts > self.spec.max_worker_restarts:
            raise EvaluationError(
                f"workers died {self.restarts} times (max_worker_restarts={self.spec.max_worker_restarts}); "
                f"last: {error}. Check the workers' logs (ray logs) for out-of-memory kills or node failures"
            ) from error
        self._ray.kill(slot.handle, no_restart=True)
        replacement = self._new_slot()
        self._slots[self._slots.index(slot)] = replacement
        self._describe(replacement)
        reason = type(error).__name__
        return [LostChunk(chunk, slot.index, reason) for chunk in sorted(lost, key=lambda chunk: chunk.id)]

    def close(self) -> None:
        """Kill the actors; shut Ray down if this pool started it."""
        for slot in self._slots:
            self._ray.kill(slot.handle, no_restart=True)
        self._slots = []
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False


def make_executor(spec: JobSpec) -> Executor:
    """The executor a job spec asks for: in process, or a Ray actor pool."""
    return start_executor(WorkerSetup.from_spec(spec), spec.executor)


def start_executor(setup: WorkerSetup, executor: ExecutorSpec) -> Executor:
    """Workers serving the games of ``setup``: in this process, or ``executor.num_workers`` Ray actors."""
    if executor.kind == "local":
        return InProcessExecutor(GameWorker.from_setup(setup))
    return RayActorPool(setup, executor)
