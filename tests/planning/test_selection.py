"""Selection data: the default searcher decides among its finalists on fresh data, within its budget, counted
at both games; without selection data nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
from planning_games import CountingGame, LayeredGame, best_removal

from shapley_svc.errors import BudgetExceededError, ConfigError
from shapley_svc.planning import Objective, RemovalProblem, search_plan
from shapley_svc.planning.problem import RemovalGame
from shapley_svc.runner.evaluator import Evaluator


class Flattered(LayeredGame):
    """The calibration data of a layered game, on which one set looks better than it is (the set the search
    then reads as its best, as a small calibration slice flatters some set)."""

    def __init__(self, truth: LayeredGame, flattered: frozenset[int], bonus: float) -> None:
        self.__dict__.update(truth.__dict__)
        self.truth, self.flattered, self.bonus = truth, flattered, bonus

    def __call__(self, coalitions):
        values = self.truth(coalitions)
        removed = ~np.asarray(coalitions, dtype=bool)
        hit = np.all(removed[:, sorted(self.flattered)], axis=1) & (removed.sum(axis=1) == len(self.flattered))
        return values + np.outer(hit, [self.bonus, 0.0])


def redundant_cheapest() -> tuple[LayeredGame, frozenset[int]]:
    """A layered game whose three cheapest single removals (leave-one-out's set, a seed of the search) are not
    the best three to remove: two of them are redundant neighbours."""
    truth = LayeredGame(10, 3)
    truth.costs = np.array([3.0, 0.5, 0.6, 0.1, 0.1, 0.7, 0.8, 0.2, 0.9, 3.0])
    truth.redundancy = np.where(np.arange(9) == 3, 1.0, 0.0)  # layers 3 and 4 cost 1 more together
    return truth, frozenset({3, 4, 7})


def problem_of(game: LayeredGame, k: int) -> RemovalProblem:
    return RemovalProblem.of(game.player_names, game.task_names, k, objective=Objective({"quality": 1.0}))


def test_the_default_searcher_keeps_the_finalist_best_on_the_selection_data() -> None:
    truth, loo = redundant_cheapest()
    flattered = loo  # the best on the calibration data
    problem = problem_of(truth, 3)
    calibration, selection = CountingGame(Flattered(truth, flattered, 5.0)), CountingGame(truth)
    plan = search_plan(
        problem, Evaluator.of(calibration), budget=24, method="default", selection=Evaluator.of(selection)
    )
    chosen = frozenset(problem.player_names.index(name) for name in plan.removed)
    finalists = {
        frozenset(problem.player_names.index(name) for name in names): value for names, value in plan.selection
    }
    assert loo in finalists and len(finalists) >= 2, "the calibration's best and the next best are finalists"
    assert chosen != flattered and finalists[chosen] == max(finalists.values())
    assert chosen == best_removal(truth, 3)[0], "here the true best set is a finalist"
    assert finalists[chosen] == pytest.approx(float(truth(problem.coalitions([chosen]))[0, 0]))
    assert plan.value == pytest.approx(float(calibration.game(problem.coalitions([chosen]))[0, 0]))
    used = len(calibration.distinct) + len(selection.distinct)
    assert plan.evaluations_used == used <= 24 and plan.evaluations_computed == used, "counted at both games"
    assert len(selection.distinct) == len(plan.selection) >= 2


def test_without_selection_data_the_plan_is_the_calibration_best() -> None:
    truth, flattered = redundant_cheapest()
    problem = problem_of(truth, 3)
    plan = search_plan(problem, Evaluator.of(Flattered(truth, flattered, 5.0)), budget=24, method="default")
    assert {problem.player_names.index(name) for name in plan.removed} == flattered and plan.selection == ()


def test_selection_reads_count_against_the_budget_and_need_selection_data() -> None:
    truth = LayeredGame(6, 0)
    problem = problem_of(truth, 2)
    game = RemovalGame(problem, Evaluator.of(truth), budget=3, selection=Evaluator.of(truth))
    game.values([[0, 1]])
    assert game.select([[0, 1], [2, 3], [0, 1]]).shape == (3,) and game.used == 3
    with pytest.raises(BudgetExceededError, match="selection data would use 4 of a budget of 3"):
        game.select([[4, 5]])
    assert game.best().removed == frozenset({0, 1}), "the finalist read on both slices"
    with pytest.raises(ConfigError, match="no selection data"):
        RemovalGame(problem, Evaluator.of(truth), budget=3).select([[0, 1]])
    other = CountingGame(truth)
    other.task_names = ("loss", "speed")
    with pytest.raises(ConfigError, match="selection game's tasks"):
        RemovalGame(problem, Evaluator.of(truth), budget=3, selection=Evaluator.of(other))
