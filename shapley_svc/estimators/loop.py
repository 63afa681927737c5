"""The synchronous driver for tests and notebooks: one estimation run in this process, through the evaluator.

It is the same :class:`~shapley_svc.runner.estimation.EstimationRun` a job uses, on an in-process
:class:`~shapley_svc.runner.evaluator.Evaluator` (a private memory cache unless one is passed in, e.g. to
share values with a plan search of the same game).
"""

from __future__ import annotations

from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import Estimator, default_player_names
from shapley_svc.estimators.result import ShapleyResult
from shapley_svc.estimators.stopping import StoppingCriterion, round_hooks
from shapley_svc.runner.estimation import EstimationRun
from shapley_svc.runner.evaluator import Control, Evaluator
from shapley_svc.types import Game

DEFAULT_BATCH = 256


def estimate(
    estimator: Estimator,
    game: Game | Evaluator,
    budget: int | None = None,
    stopping: StoppingCriterion | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> ShapleyResult:
    """Run ``estimator`` on ``game`` until it is done, the budget is spent or ``stopping`` says stop.

    ``game`` is any game, or an :class:`Evaluator` whose cache other clients share. ``budget`` (distinct
    evaluations) defaults to the estimator's own; it is never exceeded.
    """
    limit = estimator.budget if budget is None else min(budget, estimator.budget)
    evaluator = game if isinstance(game, Evaluator) else Evaluator.of(game, chunk_size=batch_size)
    info = evaluator.game
    if info.n_players != estimator.n_players:
        raise ConfigError(
            f"{estimator.name} was built for {estimator.n_players} players but the game has {info.n_players}"
        )
    estimator.set_task_names(info.task_names)
    if estimator.settings.player_names == default_player_names(estimator.n_players):
        estimator.settings.player_names = info.player_names
    hooks = None
    if stopping is not None:
        stopping.reset()
        hooks = round_hooks(stopping)
    run = EstimationRun(
        estimator,
        evaluator,
        budget=limit,
        stopping=hooks.stopping if hooks else None,
        steer=hooks.steer if hooks else None,
    )
    run.run(Control(progress_bar=False, description=estimator.name))
    return estimator.result()
