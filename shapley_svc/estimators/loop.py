"""The synchronous driver: ask, evaluate, tell, check the stopping criteria at round boundaries."""

from __future__ import annotations

import logging

from shapley_svc.errors import BudgetExceededError, ConfigError
from shapley_svc.estimators.base import Estimator, default_player_names
from shapley_svc.estimators.result import ShapleyResult
from shapley_svc.estimators.stopping import StoppingCriterion
from shapley_svc.types import Game

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 256


def estimate(
    estimator: Estimator,
    game: Game,
    budget: int | None = None,
    stopping: StoppingCriterion | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> ShapleyResult:
    """Run ``estimator`` on ``game`` until it is done, the budget is spent or ``stopping`` says stop.

    ``budget`` (distinct evaluations) defaults to the estimator's own; it is never exceeded.
    """
    limit = estimator.budget if budget is None else min(budget, estimator.budget)
    if game.n_players != estimator.n_players:
        raise ConfigError(
            f"{estimator.name} was built for {estimator.n_players} players but the game has {game.n_players}"
        )
    estimator.set_task_names(tuple(game.task_names))
    if estimator.settings.player_names == default_player_names(estimator.n_players):
        estimator.settings.player_names = tuple(game.player_names)
    if stopping is not None:
        stopping.reset()
    while not estimator.done:
        at_boundary = estimator.rounds_started > 0 and estimator.at_round_boundary
        if stopping is not None and at_boundary and stopping.should_stop(estimator):
            logger.info("stopping criterion met after %d evaluations", estimator.evaluations_used)
            break
        room = limit - estimator.evaluations_used
        if room <= 0:
            break
        requests = estimator.ask(min(batch_size, room))
        if not requests:
            break
        for request in requests:
            if estimator.evaluations_used + len(request.coalitions) > limit:
                raise BudgetExceededError(f"{estimator.name} asked past the budget of {limit}")
            estimator.tell(request.request_id, game(request.coalitions))
    return estimator.result()
