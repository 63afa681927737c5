"""A plan as a job spec asks for it (:class:`~shapley_svc.spec.PlanSpec`): the right driver for its objective
(k players, or as many as the limits allow), on a game's evaluator, checked on held-out data when given.

The job driver and ``shapley-svc plan`` both come here, so a spec's plan and the CLI's are the same search.
"""

from __future__ import annotations

import numpy as np

from shapley_svc.planning import SEARCHERS, RemovalPlan, RemovalProblem, plan_control, search_plan
from shapley_svc.planning.objectives import plan_most
from shapley_svc.planning.problem import Objective, RemovalGame
from shapley_svc.planning.verify import held_out_check
from shapley_svc.runner.evaluator import Control, Evaluator
from shapley_svc.spec import PlanSpec


def objective_of(request: PlanSpec, task_names: tuple[str, ...]) -> Objective:
    """``request``'s objective (default: the first task) and limits, checked against the game's tasks."""
    weights = request.objective or {task_names[0]: 1.0}
    return Objective(dict(weights), dict(request.limits)).checked(task_names)


def problem_of(request: PlanSpec, evaluator: Evaluator, k: int) -> RemovalProblem:
    """The problem of removing ``k`` of ``request``'s target players of the evaluator's game."""
    game = evaluator.game
    objective = objective_of(request, game.task_names)
    return RemovalProblem.of(game.player_names, game.task_names, k, target=request.resolved_target, objective=objective)


def plan_requested(
    request: PlanSpec,
    evaluator: Evaluator,
    *,
    held_out: Evaluator | None = None,
    selection: Evaluator | None = None,
    progress: bool | Control = False,
) -> RemovalPlan:
    """Search ``request``'s plan through ``evaluator`` within its budget; with ``held_out``, check it there.

    ``selection``: the same tasks on fresh data, where the default searcher decides among its finalists (a plan
    of "as many as the limits allow" does not use it). ``progress``: a bar, or a whole
    :class:`~shapley_svc.runner.evaluator.Control` (callback, cancellation).
    """
    if request.most:
        plan = _plan_most(request, evaluator, progress)
    else:
        assert request.remove is not None  # PlanSpec's validator: remove, or most
        plan = search_plan(
            problem_of(request, evaluator, request.remove),
            evaluator,
            budget=request.budget,
            method=request.method,
            seed=request.seed,
            params=request.params,
            progress=progress,
            selection=selection,
        )
    if held_out is None:
        return plan
    return plan.with_held_out(held_out_check(plan, problem_of(request, evaluator, plan.k), held_out))


def _plan_most(request: PlanSpec, evaluator: Evaluator, progress: bool | Control) -> RemovalPlan:
    key = SEARCHERS.key(request.method)
    rng = np.random.default_rng(request.seed)

    def search(game: RemovalGame) -> None:
        SEARCHERS.build(key, params=request.params).search(game, rng)

    with evaluator.tracking(plan_control(progress, request.budget, f"plan/{key}/most")):
        plan = plan_most(
            lambda k: problem_of(request, evaluator, k), evaluator, search, budget=request.budget, method=key
        )
    return plan.model_copy(update={"seed": request.seed, "params": {"objective": "most", **request.params}})
