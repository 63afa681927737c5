"""Pruning plans: which k players to remove, found by searching removal sets directly.

A Shapley value averages a player's contribution over sub-networks of every size, while removing k of n
players only visits sizes n - k..n; so a Shapley ranking is attribution, not a removal rule. A plan searcher
reads removal sets through the one evaluator (reusing every cached value) under a budget of distinct reads,
and its plan is the best set of k it read, verified on held-out data (:mod:`.verify`).

Example:
    >>> from shapley_svc.planning import SEARCHERS
    >>> SEARCHERS.key("default")
    'model_based'
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from shapley_svc.planning.plan import HeldOut, RemovalPlan
from shapley_svc.planning.problem import Objective, RemovalGame, RemovalProblem, Step
from shapley_svc.planning.searchers import PlanSearcher, greedy_evaluations
from shapley_svc.registry import Entry, Registry
from shapley_svc.runner.evaluator import Control, Evaluator

DEFAULT_SEARCHER = "model_based"

SEARCHERS: Registry[PlanSearcher] = Registry(
    "plan searcher",
    PlanSearcher,
    {
        "model_based": Entry(
            "shapley_svc.planning.model_based:ModelBasedSearch",
            "Bayesian optimisation over removal sets with a Gaussian-process surrogate (recommended)",
        ),
        "greedy": Entry("shapley_svc.planning.searchers:GreedySearch", "SLEB: remove the best player, one at a time"),
        "beam": Entry("shapley_svc.planning.searchers:BeamSearch", "greedy keeping the width best sets per size"),
        "evolutionary": Entry(
            "shapley_svc.planning.searchers:EvolutionarySearch", "EvoPress: swap mutations of one set of k"
        ),
        "ranking": Entry(
            "shapley_svc.planning.searchers:RankingSearch", "the k lowest of a ranking (default: leave-one-out)"
        ),
    },
    aliases={"default": DEFAULT_SEARCHER},
)
"""Every plan searcher by name; ``default`` is the recommended one."""


def search_plan(
    problem: RemovalProblem,
    evaluator: Evaluator,
    *,
    budget: int,
    method: str = "default",
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    progress: bool | Control = False,
    selection: Evaluator | None = None,
) -> RemovalPlan:
    """Search removal sets of ``problem`` with the searcher ``method`` within ``budget`` distinct reads.

    ``progress`` shows a bar of the reads out of the budget, or is a whole :class:`Control` (bar, progress
    callback, cancellation check). ``selection``: the same tasks on fresh data, where a searcher that uses it
    (the default) decides among its finalists.
    """
    key = SEARCHERS.key(method)
    searcher = SEARCHERS.build(key, params=params)
    game = RemovalGame(problem, evaluator, budget, selection)
    control = plan_control(progress, budget, f"plan/{key}")
    with contextlib.ExitStack() as tracking:
        tracking.enter_context(evaluator.tracking(control))
        if selection is not None:  # the few finalists: no bar of their own, the same callbacks
            tracking.enter_context(selection.tracking(dataclasses.replace(control, progress_bar=False)))
        searcher.search(game, np.random.default_rng(seed))
    return RemovalPlan.from_search(game, method=key, seed=seed, params=dict(params or {}))


def plan_control(progress: bool | Control, budget: int, description: str) -> Control:
    """``progress`` as a Control counting reads out of ``budget`` under ``description``."""
    control = progress if isinstance(progress, Control) else Control(progress_bar=progress)
    return dataclasses.replace(control, total=budget, description=description)


__all__ = [
    "DEFAULT_SEARCHER",
    "SEARCHERS",
    "HeldOut",
    "Objective",
    "PlanSearcher",
    "RemovalGame",
    "RemovalPlan",
    "RemovalProblem",
    "Step",
    "greedy_evaluations",
    "plan_control",
    "search_plan",
]
