"""The evaluator alone, on a counting fake executor: each coalition evaluated once across clients and
resumes, a lost chunk sent again and counted once, cancellation that keeps what landed, set-up keys."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shapley_svc.errors import EvaluationError
from shapley_svc.runner.evaluator import Control, Evaluator, JobCancelledError
from shapley_svc.runner.executors import Chunk, ChunkResult, Finished, GameInfo, LostChunk
from shapley_svc.store import MemoryValueCache, SQLiteStore
from shapley_svc.types import Coalitions, Values

N_PLAYERS = 5
WEIGHTS = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
GAME = GameInfo("g", "additive", tuple(f"p{i}" for i in range(N_PLAYERS)), ("sum",), setup='{"device": "cpu"}')


class CountingExecutor:
    """Evaluates v(S) = weights . S, one chunk per ``wait``; counts every coalition it computes.

    ``lose`` names chunk ids whose first run dies with its worker (handed back as lost); ``echo`` names
    chunk ids that come back twice (a slow worker answering after its chunk was sent again).
    """

    def __init__(self, capacity: int = 2, lose: tuple[int, ...] = (), echo: tuple[int, ...] = ()) -> None:
        self.capacity = capacity
        self.num_workers = capacity
        self.pending: list[Chunk] = []
        self.computed: Counter[tuple[int, ...]] = Counter()
        self.lose, self.echo = set(lose), set(echo)
        self.submitted: list[int] = []

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def games(self) -> dict[str, GameInfo]:
        return {"g": GAME}

    def submit(self, chunk: Chunk) -> None:
        self.submitted.append(chunk.id)
        self.pending.append(chunk)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        if not self.pending:
            return []
        chunk = self.pending.pop(0)
        if chunk.id in self.lose:
            self.lose.discard(chunk.id)
            return [LostChunk(chunk, worker=0, reason="RayActorError")]
        self.computed.update(tuple(row.astype(int)) for row in chunk.coalitions)
        result = ChunkResult(chunk, (chunk.coalitions @ WEIGHTS)[:, None], 0.0, worker=1)
        return [result, result] if chunk.id in self.echo else [result]

    def close(self) -> None:
        self.pending.clear()


def coalitions(count: int, seed: int) -> Coalitions:
    return np.random.default_rng(seed).random((count, N_PLAYERS)) < 0.5


def expected(rows: Coalitions) -> Values:
    return (rows @ WEIGHTS)[:, None]


def test_a_coalition_asked_by_two_clients_is_evaluated_once() -> None:
    executor = CountingExecutor()
    evaluator = Evaluator(executor, MemoryValueCache(), GAME, chunk_size=3)
    first, second = coalitions(12, seed=0), coalitions(12, seed=1)
    shared = np.vstack([first[:6], second])
    np.testing.assert_array_equal(evaluator.evaluate(first), expected(first))
    np.testing.assert_array_equal(evaluator.evaluate(shared), expected(shared))
    distinct = {tuple(row.astype(int)) for row in np.vstack([first, second])}
    assert set(executor.computed) == distinct and max(executor.computed.values()) == 1
    assert evaluator.stats.evaluated == len(distinct)
    assert evaluator.stats.requested == 12 + 18


def test_a_coalition_asked_while_on_its_way_waits_for_the_same_evaluation() -> None:
    executor = CountingExecutor(capacity=1)
    evaluator = Evaluator(executor, MemoryValueCache(), GAME, chunk_size=2)
    rows = coalitions(6, seed=2)
    first, second = evaluator.request(rows), evaluator.request(rows[::-1])
    while not (first.done and second.done):
        evaluator.dispatch(last=True)
        evaluator.collect(timeout=None)
    np.testing.assert_array_equal(second.values, expected(rows[::-1]))
    assert max(executor.computed.values()) == 1
    assert evaluator.stats.deduplicated >= len({tuple(row) for row in rows.astype(int)})


def test_after_a_resume_nothing_cached_is_evaluated_again(tmp_path: Path) -> None:
    rows = coalitions(20, seed=3)
    with SQLiteStore(tmp_path / "s.sqlite") as store:
        Evaluator(CountingExecutor(), store, GAME, chunk_size=4).evaluate(rows[:10])
    resumed = CountingExecutor()
    with SQLiteStore(tmp_path / "s.sqlite") as store:
        values = Evaluator(resumed, store, GAME, chunk_size=4).evaluate(rows)
    np.testing.assert_array_equal(values, expected(rows))
    assert set(resumed.computed) == {tuple(row.astype(int)) for row in rows[10:]} - {
        tuple(row.astype(int)) for row in rows[:10]
    }


def test_a_lost_chunk_is_sent_again_and_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    executor = CountingExecutor(capacity=2, lose=(1,), echo=(2,))
    cache = MemoryValueCache()
    evaluator = Evaluator(executor, cache, GAME, chunk_size=2)
    rows = np.unique(coalitions(10, seed=4), axis=0)
    with caplog.at_level(logging.WARNING):
        values = evaluator.evaluate(rows)
    np.testing.assert_array_equal(values, expected(rows))
    assert executor.submitted.count(1) == 2, "the lost chunk was not sent again"
    assert evaluator.stats.resent == 1 and "event=chunk_resent game=g chunk=1" in caplog.text
    assert evaluator.stats.evaluated == len(rows) == cache.count_values("additive")
    assert max(executor.computed.values()) == 1


def test_cancellation_stops_new_work_and_keeps_what_landed() -> None:
    executor = CountingExecutor(capacity=1)
    cache = MemoryValueCache()
    evaluator = Evaluator(executor, cache, GAME, chunk_size=2)
    rows = np.unique(coalitions(16, seed=5), axis=0)
    checks: list[int] = []

    def cancel_after_two_chunks() -> bool:
        checks.append(evaluator.stats.chunks)
        return evaluator.stats.chunks >= 2

    with (
        pytest.raises(JobCancelledError),
        evaluator.tracking(Control(progress_bar=False, should_cancel=cancel_after_two_chunks, report_every=0.0)),
    ):
        evaluator.evaluate(rows)
    landed = sum(executor.computed.values())
    assert landed == 4 and cache.count_values("additive") == 4, "what landed is cached"
    assert len(executor.submitted) == 2, "no new chunk was sent after the cancel"
    resumed = CountingExecutor()
    np.testing.assert_array_equal(Evaluator(resumed, cache, GAME, chunk_size=2).evaluate(rows), expected(rows))
    assert sum(resumed.computed.values()) == len(rows) - 4


def test_a_non_finite_value_is_refused_and_not_cached() -> None:
    class Poisoned(CountingExecutor):
        def wait(self, timeout: float | None = None) -> list[Finished]:
            chunk = self.pending.pop(0)
            return [ChunkResult(chunk, np.full((len(chunk.coalitions), 1), np.nan), 0.0, worker=3)]

    cache = MemoryValueCache()
    with pytest.raises(EvaluationError, match="non-finite"):
        Evaluator(Poisoned(), cache, GAME).evaluate(coalitions(3, seed=6))
    assert cache.count_values("additive") == 0


def test_values_of_another_setup_are_not_served_unless_reuse_is_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    cache = MemoryValueCache()
    rows = np.unique(coalitions(8, seed=7), axis=0)
    cache.put_values("additive", rows, expected(rows), setup='{"device": "cuda"}')
    strict = CountingExecutor()
    with caplog.at_level(logging.WARNING):
        evaluator = Evaluator(strict, cache, GAME)
        evaluator.evaluate(rows)
    assert sum(strict.computed.values()) == len(rows), "values of another set-up were served"
    assert "event=cache_setup_mismatch" in caplog.text
    assert "reused_across_setups" not in evaluator.provenance()
    other = MemoryValueCache()
    other.put_values("additive", rows, expected(rows), setup='{"device": "cuda"}')
    lenient = CountingExecutor()
    reusing = Evaluator(lenient, other, GAME, reuse_across_setups=True)
    np.testing.assert_array_equal(reusing.evaluate(rows), expected(rows))
    assert sum(lenient.computed.values()) == 0
    provenance = reusing.provenance()
    assert provenance["setup"] == json.loads(GAME.setup)
    assert provenance["reused_across_setups"] == {"values": len(rows), "setups": [{"device": "cuda"}]}


def test_layer_order_and_full_chunks_while_more_comes() -> None:
    executor = CountingExecutor(capacity=4)
    evaluator = Evaluator(executor, MemoryValueCache(), GAME, chunk_size=3)
    rows = np.unique(coalitions(30, seed=8), axis=0)
    evaluator.request(rows)
    evaluator.dispatch(last=False)
    sent = [chunk.coalitions for chunk in executor.pending]
    assert [len(chunk) for chunk in sent] == [3, 3, 3, 3]
    flat = np.vstack(sent).astype(int)
    assert [tuple(row) for row in flat] == sorted(tuple(row) for row in flat), "not in layer order"
