"""The one evaluator of coalitions: estimators, plan searchers and notebooks all get their values here.

::

    request -> value-cache lookup (game fingerprint + set-up) -> dedupe against what is on its way
        -> misses in layer order -> chunks -> executor (at most ``capacity`` in flight, completion order;
           a lost chunk is sent again) -> finite check -> cache -> every request waiting on the value

Every value is written to the cache as soon as its chunk returns, so the cache is the checkpoint: a client
that asks the same coalitions again (another client, or the same one after a resume) is served from it and
nothing is evaluated twice. Values computed under another set-up (device type, dtype, library versions) are
not served unless the evaluator is built with ``reuse_across_setups``, which :meth:`Evaluator.provenance`
then records. Progress (a bar of answered coalitions, a callback) and cancellation are reported from
:meth:`Evaluator.collect`, while work is in flight.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from shapley_svc.coalitions import as_coalitions, coalition_key, layer_order
from shapley_svc.errors import EvaluationError, ShapleySvcError
from shapley_svc.runner.executors import (
    Chunk,
    ChunkResult,
    Executor,
    GameInfo,
    InProcessExecutor,
    LostChunk,
    game_setup,
)
from shapley_svc.store.base import ValueCache
from shapley_svc.store.memory import MemoryValueCache
from shapley_svc.types import Coalitions, Game, Values

logger = logging.getLogger(__name__)

IN_MEMORY_GAME = "in-memory"
"""The key (and, without a fingerprint of its own, the fingerprint) of a game given to :meth:`Evaluator.of`."""


class JobCancelledError(ShapleySvcError):
    """The work was cancelled (e.g. its job was cancelled through the store) while it ran."""


@dataclass
class EvaluationStats:
    """Coalition rows asked for, answered from the cache, computed by workers, or waiting on one in flight."""

    requested: int = 0
    cache_hits: int = 0
    evaluated: int = 0
    deduplicated: int = 0
    reused_across_setups: int = 0
    chunks: int = 0
    resent: int = 0
    worker_seconds: float = 0.0

    def since(self, earlier: EvaluationStats) -> EvaluationStats:
        """What happened after ``earlier`` (a copy taken with ``dataclasses.replace``)."""
        return EvaluationStats(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)})


@dataclass
class Control:
    """How one client's work is reported and may be stopped: bar, progress callback, cancellation check."""

    progress_bar: bool = True
    total: int | None = None
    description: str = "coalitions"
    on_progress: Callable[[], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    report_every: float = 1.0


@dataclass
class Ticket:
    """One request: its coalitions (bool[k, n]) and their values (float[k, t], NaN until they arrive)."""

    coalitions: Coalitions
    values: Values
    missing: int

    @property
    def done(self) -> bool:
        return self.missing == 0


@dataclass
class _Waiting:
    """The requests (and their rows) waiting on one coalition that is queued or in flight."""

    coalition: np.ndarray
    rows: list[tuple[Ticket, int]] = field(default_factory=list)


class Evaluator:
    """Values of coalitions of one game: cached, deduplicated, evaluated in layer order on an executor."""

    def __init__(
        self,
        executor: Executor,
        cache: ValueCache,
        game: GameInfo,
        *,
        chunk_size: int = 16,
        reuse_across_setups: bool = False,
    ) -> None:
        if chunk_size < 1:
            raise EvaluationError(f"chunk_size must be at least 1, got {chunk_size}")
        self.executor = executor
        self.cache = cache
        self.game = game
        self.chunk_size = chunk_size
        self.reuse_across_setups = reuse_across_setups
        self.stats = EvaluationStats()
        self._waiting: dict[bytes, _Waiting] = {}
        self._queue: list[bytes] = []
        self._sent: dict[int, list[bytes]] = {}
        self._next_chunk = 0
        self._control = Control(progress_bar=False)
        self._bar: Any = None
        self._last_report = 0.0
        self.other_setups = {
            setup: count for setup, count in cache.value_setups(game.fingerprint).items() if setup != game.setup
        }
        if self.other_setups and not reuse_across_setups:
            logger.warning(
                "event=cache_setup_mismatch game=%s values=%d: the cache holds values of this game computed under "
                "other set-ups %s; they are not reused (this run: %s). Reuse them on purpose with "
                "reuse_across_setups",
                game.key,
                sum(self.other_setups.values()),
                sorted(self.other_setups),
                game.setup or "(no model)",
            )

    @classmethod
    def of(
        cls, game: Game, cache: ValueCache | None = None, *, fingerprint: str | None = None, chunk_size: int = 256
    ) -> Evaluator:
        """An in-process evaluator of any :class:`~shapley_svc.types.Game`, by default on a private memory cache.

        Values are cached under ``fingerprint``, else the game's own ``fingerprint()`` (a model game), else one
        fixed key: name what the values depend on before sharing a ``cache`` with other games.
        """
        keyed = _KeyedGame(game, fingerprint or _own_fingerprint(game) or IN_MEMORY_GAME)
        executor = InProcessExecutor.from_games({IN_MEMORY_GAME: keyed})
        cache = cache if cache is not None else MemoryValueCache()
        return cls(executor, cache, executor.games()[IN_MEMORY_GAME], chunk_size=chunk_size)

    # -- what clients call ---------------------------------------------------------------------------------

    def evaluate(self, coalitions: Coalitions) -> Values:
        """float[k, t] values of ``coalitions`` (bool[k, n]), waiting until every one has arrived."""
        ticket = self.request(coalitions)
        while not ticket.done:
            self.dispatch(last=True)
            self.collect(timeout=None)
        return ticket.values

    def request(self, coalitions: Coalitions) -> Ticket:
        """A ticket for ``coalitions``: cached values filled in now, the misses queued (see :meth:`dispatch`)."""
        coalitions = as_coalitions(coalitions, self.game.n_players)
        n_tasks = len(self.game.task_names)
        lookup = self.cache.lookup_values(self.game.fingerprint, coalitions, n_tasks, setup=self.game.setup)
        found, values = lookup.found.copy(), np.array(lookup.values)
        if self.reuse_across_setups and self.other_setups and not found.all():
            misses = np.flatnonzero(~found)
            elsewhere = self.cache.lookup_values(self.game.fingerprint, coalitions[misses], n_tasks, setup=None)
            found[misses[elsewhere.found]] = True
            values[misses[elsewhere.found]] = elsewhere.values[elsewhere.found]
            self.stats.reused_across_setups += int(elsewhere.found.sum())
        ticket = Ticket(coalitions, values, int((~found).sum()))
        self.stats.requested += len(coalitions)
        self.stats.cache_hits += int(found.sum())
        for row in np.flatnonzero(~found):
            key = coalition_key(coalitions[row])
            if key in self._waiting:
                self.stats.deduplicated += 1
            else:
                self._waiting[key] = _Waiting(coalitions[row])
                self._queue.append(key)
            self._waiting[key].rows.append((ticket, int(row)))
        self._advance_bar(int(found.sum()))
        return ticket

    @property
    def has_room(self) -> bool:
        """Whether more requests would still fill chunks for every free slot of the executor."""
        return len(self._queue) < self.chunk_size * self.executor.capacity

    @property
    def in_flight(self) -> int:
        """Chunks sent to the executor and not yet back."""
        return len(self._sent)

    def dispatch(self, *, last: bool) -> None:
        """Send queued misses in layer order, ``chunk_size`` a chunk, while the executor has room.

        ``last``: nothing more comes until these values are back, so cut them into equal chunks that fill
        whole waves of the workers; a round's end then does not wait on a few full chunks while others idle.
        """
        if not self._queue:
            return
        order = layer_order(np.stack([self._waiting[key].coalition for key in self._queue]))
        self._queue = [self._queue[index] for index in order]
        size = self.chunk_size
        if last:
            workers = self.executor.num_workers
            waves = math.ceil(len(self._queue) / (self.chunk_size * workers))
            size = math.ceil(len(self._queue) / (waves * workers))
        while self._queue and self.in_flight < self.executor.capacity:
            keys, self._queue = self._queue[:size], self._queue[size:]
            self._next_chunk += 1
            chunk = Chunk(self._next_chunk, self.game.key, np.stack([self._waiting[key].coalition for key in keys]))
            self._sent[chunk.id] = keys
            self.executor.submit(chunk)

    def collect(self, timeout: float | None) -> None:
        """Take what the executor finished (within ``timeout``), cache it, answer the waiting requests."""
        for finished in self.executor.wait(timeout=timeout):
            if isinstance(finished, LostChunk):
                self._resend(finished)
            else:
                self._receive(finished)
        self._report()

    def provenance(self) -> dict[str, Any]:
        """The set-up values were computed under, and any values reused from other set-ups."""
        record: dict[str, Any] = {"setup": json.loads(self.game.setup) if self.game.setup else None}
        if self.stats.reused_across_setups:
            record["reused_across_setups"] = {
                "values": self.stats.reused_across_setups,
                "setups": [json.loads(setup) if setup else None for setup in sorted(self.other_setups)],
            }
        return record

    @contextmanager
    def tracking(self, control: Control) -> Iterator[EvaluationStats]:
        """Report the work done inside the block as ``control`` says.

        Yields a copy of :attr:`stats` at the start: ``evaluator.stats.since(start)`` is the block's own work.
        """
        before = replace(self.stats)
        self._control, self._last_report = control, time.perf_counter()
        self._bar = tqdm(
            total=control.total, desc=control.description, unit="eval", disable=not control.progress_bar,
            dynamic_ncols=True,
        )  # fmt: skip
        completed = False
        try:
            yield before
            completed = True
        finally:
            self._bar.close()
            self._control, self._bar = Control(progress_bar=False), None
        if completed and control.on_progress is not None:
            control.on_progress()

    def show(self, measures: Mapping[str, float]) -> None:
        """Show a client's measures (e.g. the largest stderr) beside the progress bar."""
        if self._bar is not None:
            postfix = {name: f"{value:.4g}" for name, value in measures.items()} | {"hits": self.stats.cache_hits}
            self._bar.set_postfix(postfix, refresh=False)

    # -- inside ------------------------------------------------------------------------------------------------

    def _receive(self, result: ChunkResult) -> None:
        keys = self._sent.pop(result.chunk.id, None)
        if keys is None:  # a chunk sent again came back twice: its values are in already
            logger.debug("event=chunk_duplicate game=%s chunk=%d", self.game.key, result.chunk.id)
            return
        values = self._checked(result, len(keys))
        self.cache.put_values(self.game.fingerprint, result.chunk.coalitions, values, setup=self.game.setup)
        self.stats.evaluated += len(keys)
        self.stats.chunks += 1
        self.stats.worker_seconds += result.seconds
        logger.debug(
            "event=chunk_done game=%s chunk=%d size=%d worker=%d seconds=%.3f",
            self.game.key,
            result.chunk.id,
            len(keys),
            result.worker,
            result.seconds,
        )
        answered = 0
        for key, row_values in zip(keys, values, strict=True):
            for ticket, row in self._waiting.pop(key).rows:
                ticket.values[row] = row_values
                ticket.missing -= 1
                answered += 1
        self._advance_bar(answered)

    def _checked(self, result: ChunkResult, rows: int) -> Values:
        """The chunk's values as float[rows, t]; a wrong shape or a non-finite value is an EvaluationError."""
        values = np.asarray(result.values, dtype=np.float64)
        if values.shape != (rows, len(self.game.task_names)):
            raise EvaluationError(
                f"worker {result.worker} returned values of shape {values.shape} for chunk {result.chunk.id} "
                f"of {rows} coalitions x {len(self.game.task_names)} tasks"
            )
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise EvaluationError(
                f"coalition {result.chunk.coalitions[row].astype(int).tolist()} of {self.game.key} has a non-finite "
                f"value {values[row].tolist()} (worker {result.worker}); it is not cached and enters no estimate"
            )
        return values

    def _resend(self, lost: LostChunk) -> None:
        if lost.chunk.id not in self._sent:
            return
        self.stats.resent += 1
        logger.warning(
            "event=chunk_resent game=%s chunk=%d worker=%d reason=%s",
            self.game.key,
            lost.chunk.id,
            lost.worker,
            lost.reason,
        )
        self.executor.submit(lost.chunk)

    def _advance_bar(self, answered: int) -> None:
        if self._bar is not None and answered:
            self._bar.update(answered)

    def _report(self) -> None:
        """The progress callback and the cancellation check, at most every ``report_every`` seconds."""
        now = time.perf_counter()
        if now - self._last_report < self._control.report_every:
            return
        self._last_report = now
        if self._control.on_progress is not None:
            self._control.on_progress()
        if self._control.should_cancel is not None and self._control.should_cancel():
            raise JobCancelledError(f"{self._control.description} was cancelled; every value computed is cached")


class _KeyedGame:
    """A game under a given fingerprint, keeping the run-time set-up of the model it runs (if any)."""

    def __init__(self, game: Game, fingerprint: str) -> None:
        self.game = game
        self._fingerprint = fingerprint
        self.n_players = game.n_players
        self.player_names = tuple(game.player_names)
        self.task_names = tuple(game.task_names)

    def fingerprint(self) -> str:
        return self._fingerprint

    def setup(self) -> str:
        return game_setup(self.game)

    def __call__(self, coalitions: Coalitions) -> Values:
        return self.game(coalitions)


def _own_fingerprint(game: Game) -> str | None:
    fingerprint = getattr(game, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None
