"""Leave-one-out on a model game: the ``n + 1`` coalitions in one call, so a
:class:`~shapley_svc.values.base.ModelGame` evaluates them in one batched engine pass (the coalitions
without player ``i`` share the hidden states of layers before ``i`` with the full coalition). The
coalitions and the scores are those of :mod:`shapley_svc.estimators.loo`.
"""

from __future__ import annotations

from collections.abc import Callable

from shapley_svc.errors import ConfigError
from shapley_svc.estimators.loo import LeaveOneOut, leave_one_out_coalitions
from shapley_svc.types import Game
from shapley_svc.values.base import ModelGame

__all__ = ["LeaveOneOut", "leave_one_out", "leave_one_out_coalitions"]


def leave_one_out(game: Game, progress: Callable[[], object] | None = None) -> LeaveOneOut:
    """Leave-one-out values of every player of ``game``, from one call with ``n + 1`` coalitions.

    ``progress`` (a :class:`ModelGame` only) is called once per coalition and token batch done.
    """
    coalitions = leave_one_out_coalitions(game.n_players)
    if progress is None:
        values = game(coalitions)
    elif isinstance(game, ModelGame):
        values = game(coalitions, progress=progress)
    else:
        raise ConfigError(f"progress reporting needs a ModelGame, got {type(game).__name__}: pass progress=None")
    return LeaveOneOut.from_values(values, tuple(game.player_names), tuple(game.task_names))
