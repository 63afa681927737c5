"""Every plan searcher on games whose best removal set is known (enumerated): the optimum found, the budget
counted at the game and never exceeded, the same plan for a seed whatever the number of workers, and no
coalition evaluated twice across estimation and planning of one game."""

from __future__ import annotations

import random

import numpy as np
import pytest
from planning_games import CountingGame, LayeredGame, best_removal, shipped_table

from shapley_svc.errors import BudgetExceededError, ConfigError
from shapley_svc.estimators import estimate, make_estimator
from shapley_svc.planning import Objective, RemovalProblem, greedy_evaluations, search_plan
from shapley_svc.runner.evaluator import Evaluator
from shapley_svc.runner.executors import Chunk, ChunkResult, GameInfo, GameWorker
from shapley_svc.store import MemoryValueCache

SEARCHERS = ("greedy", "beam", "evolutionary", "ranking", "default")


def budget_for(method: str, n: int, k: int) -> int:
    """Greedy's count for the field's searchers; for default at most half of it (or n + 2, the least it needs)."""
    greedy = greedy_evaluations(n, k)
    return {"default": max(greedy // 2, n + 2), "beam": 4 * greedy, "evolutionary": 2 * greedy}.get(method, greedy)


def plan_on(game: object, k: int, method: str, seed: int = 0, **options: object):
    counting = CountingGame(game)
    options.setdefault("objective", Objective({counting.task_names[0]: 1.0}))
    problem = RemovalProblem.of(counting.player_names, counting.task_names, k, **options)
    budget = budget_for(method, len(problem.candidates), k)
    plan = search_plan(problem, Evaluator.of(counting), budget=budget, method=method, seed=seed)
    assert plan.evaluations_used == len(counting.distinct) <= budget, "the budget is counted at the game"
    assert counting.asked == len(counting.distinct), "a coalition was evaluated twice"
    return plan, problem


@pytest.mark.parametrize("method", SEARCHERS)
@pytest.mark.parametrize(("seed", "k"), [(0, 2), (1, 3), (2, 4)])
def test_every_searcher_finds_the_best_removal_of_a_layered_game(method: str, seed: int, k: int) -> None:
    game = LayeredGame(10, seed)
    if method == "ranking":  # a ranking is blind to interactions: it is optimal where there are none
        game.redundancy[:] = 0.0
    best, value = best_removal(game, k)
    plan, problem = plan_on(game, k, method)
    assert set(plan.removed) == {problem.player_names[i] for i in best}
    assert plan.value == pytest.approx(value)


@pytest.mark.parametrize("method", ["greedy", "beam", "default", "ranking"])
def test_on_the_shipped_table_the_best_three_blocks_are_found(method: str) -> None:
    table = shipped_table()
    best, value = best_removal(table, 3)
    plan, problem = plan_on(table, 3, method)
    assert plan.value == pytest.approx(value) and set(plan.removed) == {problem.player_names[i] for i in best}
    if method == "default":
        assert plan.evaluations_used <= greedy_evaluations(12, 3) // 2


def test_default_matches_greedy_at_half_its_reads_on_the_shipped_table() -> None:
    table = shipped_table()
    for k in (2, 4, 6):
        greedy, _ = plan_on(table, k, "greedy")
        default, _ = plan_on(table, k, "default")
        assert default.evaluations_used <= max(greedy_evaluations(12, k) // 2, 14)
        assert default.value >= greedy.value - 1e-9, f"k={k}: default {default.value} < greedy {greedy.value}"


def test_the_exact_shapley_ranking_is_not_a_removal_rule() -> None:
    table = shipped_table()
    _, value = best_removal(table, 3)
    shapley, _ = plan_on(table, 3, "ranking")
    by_shapley = search_plan(
        RemovalProblem.of(table.player_names, table.task_names, 3),
        Evaluator.of(table),
        budget=1,
        method="ranking",
        params={"scores": table.exact_shapley[0].tolist()},
    )
    assert shapley.value == pytest.approx(value)
    assert value - by_shapley.value > 1.0, "the k lowest exact Shapley values cost over a nat more than the best"


def test_attention_only_and_weighted_objectives() -> None:
    names = tuple(f"layer{i // 2}.{'attn' if i % 2 == 0 else 'mlp'}" for i in range(10))

    class Sublayers(LayeredGame):
        pass

    game = Sublayers(10, 4)
    game.player_names = names
    plan, problem = plan_on(game, 2, "default", target="attn")
    assert all(name.endswith(".attn") for name in plan.removed)
    attn = [index for index, name in enumerate(names) if name.endswith("attn")]
    assert problem.candidates == tuple(attn)
    weights = np.array([1.0, -0.3])  # quality, and a little weight against the count of players removed
    objective = Objective({"quality": 1.0, "speed": -0.3})
    _, value = best_removal(game, 3, weights=weights)
    weighted, problem = plan_on(game, 3, "greedy", objective=objective)
    assert weighted.value == pytest.approx(value) and weighted.objective == {"quality": 1.0, "speed": -0.3}
    with pytest.raises(ConfigError, match="not among the game's tasks"):
        Objective.parse("qualty", game.task_names)


def test_a_read_past_the_budget_is_refused() -> None:
    game = LayeredGame(8, 0)
    problem = RemovalProblem.of(game.player_names, game.task_names, 2, objective=Objective({"quality": 1.0}))
    with pytest.raises(ConfigError, match="needs at least 9 reads"):
        search_plan(problem, Evaluator.of(game), budget=5, method="default")
    from shapley_svc.planning.problem import RemovalGame

    removal_game = RemovalGame(problem, Evaluator.of(game), budget=3)
    removal_game.values([[0], [1], [0]])
    with pytest.raises(BudgetExceededError, match="budget of 3"):
        removal_game.values([[2], [3]])
    assert removal_game.used == 2


class ShuffledPool:
    """Four 'workers': chunks complete in a random order, as on a Ray pool."""

    def __init__(self, game: object, seed: int) -> None:
        self.worker = GameWorker({"g": _Keyed(game)})
        self.pending: list[Chunk] = []
        self.random = random.Random(seed)
        self.capacity = self.num_workers = 4

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


class _Keyed:
    def __init__(self, game: object) -> None:
        self.game = game
        self.n_players, self.player_names, self.task_names = game.n_players, game.player_names, game.task_names

    def fingerprint(self) -> str:
        return "layered"

    def __call__(self, coalitions):
        return self.game(coalitions)


@pytest.mark.parametrize("method", ["evolutionary", "default", "beam"])
def test_the_same_seed_gives_the_same_plan_whatever_the_workers(method: str) -> None:
    game = LayeredGame(12, 7)
    problem = RemovalProblem.of(game.player_names, game.task_names, 4, objective=Objective({"quality": 1.0}))
    budget = budget_for(method, 12, 4)
    alone = search_plan(problem, Evaluator.of(game), budget=budget, method=method, seed=3)
    pool = ShuffledPool(game, seed=11)
    spread = search_plan(
        problem,
        Evaluator(pool, MemoryValueCache(), pool.games()["g"], chunk_size=2),
        budget=budget,
        method=method,
        seed=3,
    )
    assert spread.removed == alone.removed and spread.path == alone.path


def test_estimation_and_planning_of_one_game_never_evaluate_a_coalition_twice() -> None:
    game = CountingGame(LayeredGame(10, 5))
    evaluator = Evaluator.of(game)
    estimate(make_estimator("default", 10, 50, seed=0), evaluator)
    estimated = game.asked
    problem = RemovalProblem.of(game.player_names, game.task_names, 3, objective=Objective({"quality": 1.0}))
    plan = search_plan(problem, evaluator, budget=20, method="default")
    assert game.asked == len(game.distinct), "a cached coalition was evaluated again"
    assert plan.evaluations_computed == game.asked - estimated < plan.evaluations_used, "singles came from the cache"
