"""The driver pump against games with known answers: cache, dedup, tell order, resume, NaN, stopping."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from shapley_svc.errors import EvaluationError
from shapley_svc.runner.estimation import EstimationRun
from shapley_svc.runner.evaluator import Control, Evaluator
from shapley_svc.runner.executors import Chunk, ChunkResult, GameInfo, GameWorker, InProcessExecutor
from shapley_svc.store import SQLiteStore
from shapley_svc.types import Coalitions, Values

N_PLAYERS = 6
WEIGHTS = np.arange(1.0, N_PLAYERS + 1)


class AdditiveGame:
    """v(S) = sum of the weights of S (and twice that as a second task); counts every coalition evaluated."""

    def __init__(self, fingerprint: str = "additive", poison: tuple[int, ...] | None = None):
        self._fingerprint = fingerprint
        self.poison = poison
        self.evaluated: list[tuple[int, ...]] = []

    n_players = N_PLAYERS
    player_names = tuple(f"p{i}" for i in range(N_PLAYERS))
    task_names = ("sum", "double")

    def fingerprint(self) -> str:
        return self._fingerprint

    def __call__(self, coalitions: Coalitions) -> Values:
        self.evaluated.extend(tuple(row.astype(int)) for row in coalitions)
        total = coalitions.astype(float) @ WEIGHTS
        values = np.stack([total, 2 * total], axis=1)
        for row, coalition in enumerate(coalitions):
            if self.poison is not None and tuple(coalition.astype(int)) == self.poison:
                values[row, 0] = np.nan
        return values


@dataclass(frozen=True)
class Request:
    request_id: int
    coalitions: Coalitions


class SeededSampler:
    """A test estimator: random coalitions in requests of 1-3 rows (with repeats), seeded; keeps every tell."""

    def __init__(self, total: int, seed: int, fail_after_tells: int | None = None):
        self.rng = np.random.default_rng(seed)
        self.total = total
        self.asked = 0
        self.next_id = 0
        self.told: dict[int, Values] = {}
        self.tell_order: list[int] = []
        self.fail_after_tells = fail_after_tells

    def ask(self, max_coalitions: int) -> list[Request]:
        requests = []
        while self.asked < self.total and max_coalitions > 0:
            size = min(int(self.rng.integers(1, 4)), max_coalitions, self.total - self.asked)
            coalitions = self.rng.random((size, N_PLAYERS)) < 0.5
            if size > 1:
                coalitions[-1] = coalitions[0]  # a repeat inside one request
            requests.append(Request(self.next_id, coalitions))
            self.next_id += 1
            self.asked += size
            max_coalitions -= size
        return requests

    def tell(self, request_id: int, values: Values) -> None:
        if self.fail_after_tells is not None and len(self.told) == self.fail_after_tells:
            raise KeyboardInterrupt("simulated Ctrl-C")
        assert np.isfinite(values).all()
        self.told[request_id] = np.array(values)
        self.tell_order.append(request_id)

    @property
    def done(self) -> bool:
        return self.asked >= self.total and len(self.told) == self.next_id

    @property
    def evaluations_used(self) -> int:
        return sum(len(values) for values in self.told.values())

    def result(self) -> np.ndarray:
        return np.concatenate([self.told[i] for i in sorted(self.told)])


class ShuffledExecutor:
    """Holds up to ``capacity`` chunks and completes them in a random order (a stand-in for a pool)."""

    def __init__(self, game: AdditiveGame, capacity: int, seed: int):
        self.worker = GameWorker({"g": game})
        self.capacity = capacity
        self.pending: list[Chunk] = []
        self.random = random.Random(seed)
        self.num_workers = capacity

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def games(self) -> dict[str, GameInfo]:
        return self.worker.describe()

    def submit(self, chunk: Chunk) -> None:
        self.pending.append(chunk)

    def wait(self, timeout: float | None = None) -> list[ChunkResult]:
        chunk = self.pending.pop(self.random.randrange(len(self.pending)))
        return [ChunkResult(chunk, self.worker.evaluate(chunk.game, chunk.coalitions), 0.0, 0)]

    def close(self) -> None:
        self.pending.clear()


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    opened = SQLiteStore(tmp_path / "s.sqlite")
    yield opened
    opened.close()


def run(estimator: SeededSampler, executor, store: SQLiteStore, budget: int = 60, chunk_size: int = 4):
    evaluator = Evaluator(executor, store, executor.games()["g"], chunk_size=chunk_size)
    return EstimationRun(estimator, evaluator, budget=budget).run(Control(progress_bar=False))


def test_values_are_told_in_ask_order_whatever_the_completion_order(store: SQLiteStore) -> None:
    reference = SeededSampler(60, seed=1)
    run(reference, InProcessExecutor.from_games({"g": AdditiveGame()}), store)
    for seed in range(3):
        estimator = SeededSampler(60, seed=1)
        with SQLiteStore(store.path.with_name(f"other{seed}.sqlite")) as fresh:
            run(estimator, ShuffledExecutor(AdditiveGame(), capacity=4, seed=seed), fresh)
        assert estimator.tell_order == reference.tell_order == sorted(reference.tell_order)
        np.testing.assert_array_equal(estimator.result(), reference.result())
    expected_sum = reference.result()[:, 0]
    assert expected_sum.shape == (60,)


def test_each_distinct_coalition_is_evaluated_once_and_then_cached(store: SQLiteStore) -> None:
    game = AdditiveGame()
    first = SeededSampler(60, seed=2)
    stats = run(first, InProcessExecutor.from_games({"g": game}), store)
    asked = np.concatenate([first.told[i] for i in sorted(first.told)])
    assert stats.told == first.evaluations_used == 60 and len(asked) == 60
    assert len(game.evaluated) == len(set(game.evaluated)) == stats.evaluated
    assert stats.cache_hits + stats.evaluated + stats.deduplicated == 60
    again = SeededSampler(60, seed=2)
    second_game = AdditiveGame()
    second = run(again, InProcessExecutor.from_games({"g": second_game}), store)
    assert second_game.evaluated == [] and second.cache_hits == 60
    np.testing.assert_array_equal(again.result(), first.result())


def test_resume_after_an_interrupt_evaluates_nothing_twice(store: SQLiteStore, tmp_path: Path) -> None:
    reference = SeededSampler(80, seed=3)
    with SQLiteStore(tmp_path / "reference.sqlite") as other:
        run(reference, InProcessExecutor.from_games({"g": AdditiveGame()}), other, budget=80)
    game = AdditiveGame()
    with pytest.raises(KeyboardInterrupt):
        run(SeededSampler(80, seed=3, fail_after_tells=9), InProcessExecutor.from_games({"g": game}), store, 80)
    interrupted = list(game.evaluated)
    assert 0 < len(interrupted) < 80
    resumed = SeededSampler(80, seed=3)
    run(resumed, InProcessExecutor.from_games({"g": game}), store, budget=80)
    assert len(game.evaluated) == len(set(game.evaluated)), "a cached coalition was evaluated again"
    np.testing.assert_array_equal(resumed.result(), reference.result())


def test_non_finite_value_fails_loudly_and_enters_nothing(store: SQLiteStore) -> None:
    probe = SeededSampler(60, seed=4)
    first_coalition = probe.ask(4)[0].coalitions[0]
    poison = tuple(first_coalition.astype(int))
    estimator = SeededSampler(60, seed=4)
    with pytest.raises(EvaluationError, match="non-finite"):
        run(estimator, InProcessExecutor.from_games({"g": AdditiveGame(poison=poison)}), store)
    assert estimator.told == {}
    assert not store.lookup_values("additive", np.array([first_coalition]), 2).found.any()


def test_stopping_rule_and_budget_end_the_run(store: SQLiteStore) -> None:
    executor = InProcessExecutor.from_games({"g": AdditiveGame()})
    estimator = SeededSampler(1000, seed=5)
    stats = EstimationRun(
        estimator,
        Evaluator(executor, store, executor.games()["g"], chunk_size=4),
        budget=1000,
        stopping=lambda current: current.evaluations_used >= 20,
        measure=lambda current: {"evaluations": float(current.evaluations_used)},
    ).run(Control(progress_bar=False))
    assert stats.stopped_by == "stopping" and 20 <= stats.told < 24
    capped = run(SeededSampler(1000, seed=5), executor, store, budget=30)
    assert capped.told == 30 and capped.stopped_by == "budget"


@pytest.mark.parametrize("error", ["torch", "runtime"])
def test_out_of_memory_halves_the_batch_and_logs(error: str, caplog: pytest.LogCaptureFixture) -> None:
    import torch

    class Picky(AdditiveGame):
        """Runs out of memory on more than 2 coalitions at once, as a GPU would on a too-large batch."""

        def __call__(self, coalitions: Coalitions) -> Values:
            if len(coalitions) > 2:
                message = "CUDA out of memory. Tried to allocate 2.00 GiB"
                raise torch.OutOfMemoryError(message) if error == "torch" else RuntimeError(message)
            return super().__call__(coalitions)

    game = Picky()
    worker = GameWorker({"g": game})
    coalitions = np.random.default_rng(0).random((7, N_PLAYERS)) < 0.5
    with caplog.at_level("WARNING"):
        values = worker.evaluate("g", coalitions)
    np.testing.assert_array_equal(values[:, 0], coalitions @ WEIGHTS)
    assert worker.batch_limit == 1
    assert [tuple(row.astype(int)) for row in coalitions] == game.evaluated, "each coalition evaluated once, in order"
    assert "event=out_of_memory worker=0 game=g batch=7 retry_batch=3" in caplog.text
    assert "batch=3 retry_batch=1" in caplog.text

    class Hopeless(AdditiveGame):
        def __call__(self, coalitions: Coalitions) -> Values:
            raise RuntimeError("CUDA out of memory")

    with pytest.raises(EvaluationError, match="single coalition"):
        GameWorker({"g": Hopeless()}).evaluate("g", coalitions)


def test_the_end_of_a_round_is_spread_over_every_worker(store: SQLiteStore) -> None:
    class Recording(ShuffledExecutor):
        """Four workers, two chunks each in flight; records the size of every chunk submitted."""

        def __init__(self) -> None:
            super().__init__(AdditiveGame(), capacity=8, seed=0)
            self.num_workers = 4
            self.sizes: list[int] = []

        def submit(self, chunk: Chunk) -> None:
            self.sizes.append(len(chunk.coalitions))
            super().submit(chunk)

    executor = Recording()
    stats = run(SeededSampler(30, seed=6), executor, store, budget=30, chunk_size=32)
    assert stats.told == 30 and sum(executor.sizes) == stats.evaluated > 12
    assert max(executor.sizes) == -(-stats.evaluated // 4) and len(executor.sizes) == 4, "not one chunk of all"
    many = Recording()
    with SQLiteStore(store.path.with_name("many.sqlite")) as other:
        run(SeededSampler(200, seed=6), many, other, budget=200, chunk_size=4)
    assert many.sizes[:8] == [4] * 8, "full chunks while the estimator has more to give"
