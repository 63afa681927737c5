"""The objectives users state, on games built for them with the answer known by enumeration: a constraint,
"as many as possible within a loss", a Pareto front over two tasks, and mixed sublayers under a cost target."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from planning_games import CountingGame, LayeredGame

from shapley_svc.errors import ConfigError
from shapley_svc.planning import SEARCHERS, Objective, RemovalProblem, search_plan
from shapley_svc.planning.objectives import least_mixes, pareto_front, plan_for_savings, plan_most
from shapley_svc.planning.problem import RemovalGame
from shapley_svc.runner.evaluator import Evaluator
from shapley_svc.types import Coalitions, Values


class TwoTasks:
    """Removing player i costs ``a[i]`` on task A and ``b[i]`` on task B (additive), plus neighbour redundancy on A."""

    def __init__(self, n_players: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.n_players = n_players
        self.player_names = tuple(f"layer{i}.block" for i in range(n_players))
        self.task_names = ("a", "b")
        self.a, self.b = rng.gamma(2.0, 0.2, n_players), rng.gamma(2.0, 0.2, n_players)

    def __call__(self, coalitions: Coalitions) -> Values:
        removed = ~np.asarray(coalitions, dtype=bool)
        neighbours = ((removed[:, :-1] & removed[:, 1:]) * 0.1).sum(axis=1)
        return np.stack([-(removed * self.a).sum(axis=1) - neighbours, -(removed * self.b).sum(axis=1)], axis=1)


def every_set(game: object, k: int, candidates: tuple[int, ...] | None = None) -> tuple[list[frozenset[int]], Values]:
    n = game.n_players  # type: ignore[attr-defined]
    sets = [frozenset(s) for s in itertools.combinations(candidates or range(n), k)]
    coalitions = np.ones((len(sets), n), dtype=bool)
    for row, removal in enumerate(sets):
        coalitions[row, list(removal)] = False
    return sets, np.asarray(game(coalitions))  # type: ignore[operator]


def searcher(method: str, **params: object):
    built = SEARCHERS.build(method, params=params or None)
    return lambda game: built.search(game, np.random.default_rng(0))


@pytest.mark.parametrize("method", ["default", "greedy"])
def test_a_constraint_keeps_the_other_task_within_its_limit(method: str) -> None:
    game = TwoTasks(9, seed=1)
    sets, values = every_set(game, 3)
    limit = float(np.quantile(-values[:, 1], 0.3))  # task b may lose at most this much
    feasible = -values[:, 1] <= limit
    best = float(values[feasible, 0].max())
    objective = Objective({"a": 1.0}, limits={"b": limit})
    problem = RemovalProblem.of(game.player_names, game.task_names, 3, objective=objective)
    plan = search_plan(problem, Evaluator.of(CountingGame(game)), budget=40, method=method)
    assert plan.value == pytest.approx(best) and plan.limits == {"b": limit}
    removed = frozenset(game.player_names.index(name) for name in plan.removed)
    assert -values[sets.index(removed), 1] <= limit + 1e-12
    assert plan.evaluations_used <= 40


@pytest.mark.parametrize("method", ["greedy", "default"])
def test_as_many_as_possible_within_a_loss(method: str) -> None:
    game = TwoTasks(8, seed=2)
    limit = 0.9
    reachable = [k for k in range(1, 8) if (-every_set(game, k)[1][:, 0] <= limit).any()]
    objective = Objective({"a": 1.0}, limits={"a": limit})

    def problems(k: int) -> RemovalProblem:
        return RemovalProblem.of(game.player_names, game.task_names, k, objective=objective)

    plan = plan_most(problems, Evaluator.of(game), searcher(method), budget=200, method=method)
    assert plan.k == max(reachable) and plan.evaluations_used <= 200  # default: no crash while no set is feasible
    with pytest.raises(ConfigError, match="needs a limit"):
        plan_most(
            lambda k: RemovalProblem.of(game.player_names, game.task_names, k, objective=Objective({"a": 1.0})),
            Evaluator.of(game),
            searcher("greedy"),
            budget=10,
            method="greedy",
        )


def test_the_front_holds_only_sets_no_other_set_beats_and_reaches_both_ends() -> None:
    game = TwoTasks(8, seed=3)
    sets, values = every_set(game, 2)
    dominated = [bool(np.any(np.all(values >= point, axis=1) & np.any(values > point, axis=1))) for point in values]
    problem = RemovalProblem.of(game.player_names, game.task_names, 2, objective=Objective({"a": 1.0}))
    front = pareto_front(problem, Evaluator.of(game), searcher("default"), tasks=("a", "b"), budget=60)
    assert front.evaluations_used <= 60 and len(front.points) >= 2
    for point in front.points:
        removed = frozenset(game.player_names.index(name) for name in point.removed)
        assert not dominated[sets.index(removed)], f"{point.removed} is beaten on both tasks"
    assert front.points[0].values["a"] == pytest.approx(values[:, 0].max())
    assert max(point.values["b"] for point in front.points) == pytest.approx(values[:, 1].max())


def test_least_mixes_reach_the_target_with_no_player_to_spare() -> None:
    assert least_mixes({"attn": 2, "mlp": 3}, {"attn": 4, "mlp": 4}, 6) == [
        {"attn": 0, "mlp": 2},
        {"attn": 2, "mlp": 1},
        {"attn": 3, "mlp": 0},
    ]
    with pytest.raises(ConfigError, match="short of the target"):
        least_mixes({"attn": 1, "mlp": 1}, {"attn": 2, "mlp": 2}, 5)


def test_mixed_sublayers_under_a_savings_target_find_the_best_mix() -> None:
    names = tuple(f"layer{i // 2}.{'attn' if i % 2 == 0 else 'mlp'}" for i in range(12))
    game = LayeredGame(12, 6)
    game.player_names = names
    saving = {"attn": 1.0, "mlp": 2.0}  # an MLP saves twice what an attention does
    mixes = least_mixes(saving, {"attn": 6, "mlp": 6}, 4.0)
    kinds = np.array([name.rsplit(".", 1)[1] for name in names])
    best = -np.inf
    for size in range(1, 7):
        sets, values = every_set(game, size)
        for removal, value in zip(sets, values[:, 0], strict=True):
            if sum(saving[kinds[i]] for i in removal) >= 4.0:
                best = max(best, float(value))
    objective = Objective({"quality": 1.0})

    def problems(mix: dict[str, int]) -> RemovalProblem:
        return RemovalProblem.mixed(names, game.task_names, mix, objective=objective)

    plan = plan_for_savings(mixes, problems, Evaluator.of(game), searcher("greedy"), budget=300, method="greedy")
    assert plan.value == pytest.approx(best)
    assert sum(saving[name.rsplit(".", 1)[1]] for name in plan.removed) >= 4.0
    assert plan.evaluations_used <= 300


def test_a_game_keeps_every_read_across_problems() -> None:
    game = CountingGame(TwoTasks(6, seed=4))
    removal_game = RemovalGame(
        RemovalProblem.of(game.player_names, game.task_names, 2, objective=Objective({"a": 1.0})),
        Evaluator.of(game),
        budget=30,
    )
    removal_game.values([[0], [1], [0, 1]])
    removal_game.problem = RemovalProblem.of(game.player_names, game.task_names, 2, objective=Objective({"b": 1.0}))
    removal_game.values([[0], [0, 1], [2]])
    assert removal_game.used == 4 == game.asked, "a set read under one objective was read again under another"
