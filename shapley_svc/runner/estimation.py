"""One estimation run: an ask/tell estimator pumped against the :class:`~shapley_svc.runner.evaluator.Evaluator`.

::

    ask -> evaluator.request -> dispatch / collect -> tell (in ask order) -> stop? -> steer -> ask ...

All algorithm state lives in the estimator; the run only pumps. It asks ``chunk_size`` coalitions at a time
while the evaluator has room, and tells whole requests in the order they were asked, whatever order their
values arrive in; with a seeded estimator the tells, hence the result, are the same for any number of
workers. After each tell it asks the stopping rule whether to stop and, if not, lets the steering step
redirect the estimator (both see the estimator only at round boundaries, see
:func:`shapley_svc.estimators.stopping.round_hooks`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from shapley_svc.errors import BudgetExceededError
from shapley_svc.runner.evaluator import Control, EvaluationStats, Evaluator, Ticket
from shapley_svc.types import Coalitions, Values

logger = logging.getLogger(__name__)


class CoalitionRequest(Protocol):
    """What an estimator's ``ask`` returns: an id and the coalitions (bool[k, n]) it wants values for."""

    @property
    def request_id(self) -> Any: ...

    @property
    def coalitions(self) -> Coalitions: ...


class AskTellEstimator(Protocol):
    """The part of an ask/tell estimator a run uses."""

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

Steering = Callable[[Any], None]
"""Called with the estimator after each tell that did not stop the run; may redirect its next rounds."""


@dataclass
class RunStats(EvaluationStats):
    """What one run did: the evaluator's counts of its work, coalitions told, and why it stopped."""

    told: int = 0
    seconds: float = 0.0
    stopped_by: str = ""

    def count(self, work: EvaluationStats) -> None:
        """Take the evaluator's counts of this run's work."""
        for counter in fields(EvaluationStats):
            setattr(self, counter.name, getattr(work, counter.name))

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
class EstimationRun:
    """Pumps ``estimator`` against ``evaluator`` until it is done, a rule stops it, or ``budget`` are told."""

    estimator: AskTellEstimator
    evaluator: Evaluator
    budget: int
    stopping: StoppingRule | None = None
    measure: StoppingMeasure | None = None
    steer: Steering | None = None
    stats: RunStats = field(default_factory=RunStats)
    _requests: deque[tuple[Any, Ticket]] = field(default_factory=deque, repr=False)
    _asked: int = 0
    _asking: bool = True
    _start: EvaluationStats = field(default_factory=EvaluationStats, repr=False)
    _started: float = 0.0

    def run(self, control: Control | None = None) -> RunStats:
        """Pump to the end; ``control`` reports progress (its total defaults to the budget) and may cancel."""
        control = control or Control()
        control = replace(control, total=control.total or self.budget, on_progress=self._progress(control))
        self._started = time.perf_counter()
        with self.evaluator.tracking(control) as self._start:
            while self._step():
                pass
        self._update()
        logger.info(
            "event=run_done run=%s told=%d evaluated=%d cache_hits=%d deduplicated=%d seconds=%.2f stopped_by=%s",
            control.description,
            self.stats.told,
            self.stats.evaluated,
            self.stats.cache_hits,
            self.stats.deduplicated,
            self.stats.seconds,
            self.stats.stopped_by,
        )
        return self.stats

    def _step(self) -> bool:
        """Tell what is ready, ask for more, send, collect; False once the run is over."""
        self._tell_ready()
        evaluator = self.evaluator
        if self.stats.stopped_by and evaluator.in_flight == 0:
            return False
        if not self.stats.stopped_by:
            self._ask()
            evaluator.dispatch(last=not self._asking or self._asked >= self.budget)
        if evaluator.in_flight == 0:
            if self._requests:  # complete (a pending miss would have been sent): tell it next
                return True
            self.stats.stopped_by = self.stats.stopped_by or (
                "estimator" if self.estimator.done else "budget" if self._asked >= self.budget else "exhausted"
            )
            return False
        evaluator.collect(timeout=1.0)
        return True

    def _ask(self) -> None:
        while self._asking and self._asked < self.budget and self.evaluator.has_room:
            room = min(self.evaluator.chunk_size, self.budget - self._asked)
            asks = self.estimator.ask(room)
            if not asks:
                self._asking = False
                return
            for request in asks:
                if len(request.coalitions) > room:
                    raise BudgetExceededError(
                        f"the estimator returned {len(request.coalitions)} coalitions when asked for {room}"
                    )
                room -= len(request.coalitions)
                self._asked += len(request.coalitions)
                self._requests.append((request.request_id, self.evaluator.request(request.coalitions)))

    def _tell_ready(self) -> None:
        while self._requests and self._requests[0][1].done and not self.stats.stopped_by:
            request_id, ticket = self._requests.popleft()
            self.estimator.tell(request_id, ticket.values)
            self.stats.told += len(ticket.coalitions)
            self._asking = True
            if self.estimator.done:
                self.stats.stopped_by = "estimator"
            elif self.stopping is not None and self.stopping(self.estimator):
                self.stats.stopped_by = "stopping"
            elif self.stats.told >= self.budget:
                self.stats.stopped_by = "budget"
            elif self.steer is not None:
                self.steer(self.estimator)
            if self.measure is not None:
                self.evaluator.show(self.measure(self.estimator))

    def _update(self) -> None:
        self.stats.count(self.evaluator.stats.since(self._start))
        self.stats.seconds = time.perf_counter() - self._started

    def _progress(self, control: Control) -> Callable[[], None] | None:
        """The client's progress callback, called with this run's stats brought up to date first."""
        if control.on_progress is None:
            return None
        report = control.on_progress

        def on_progress() -> None:
            self._update()
            report()

        return on_progress
