"""Leave-one-out importance: what the coalition of all players loses when one player is removed.

``LOO_i = v(N) - v(N \\ {i})`` per task, higher = more important. The ``n + 1`` coalitions (all players,
then each player removed in turn) go to the game in one call, so a :class:`~shapley_svc.values.base.ModelGame`
evaluates them in one batched engine pass: the coalitions without player ``i`` share the hidden states of
layers before ``i`` with the full coalition. LOO ignores interactions (two redundant players both score
near zero); Shapley values average over coalitions to account for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.players import Granularity
from shapley_svc.ranking import Ranking
from shapley_svc.types import Coalitions, Game, PlayerVector, Values
from shapley_svc.values.base import ModelGame

METHOD = "leave_one_out"


@dataclass(frozen=True)
class LeaveOneOut:
    """Leave-one-out values ``v_full - v_without`` (float[t, n]) of each player for each task."""

    values: PlayerVector  # float[t, n]
    v_full: np.ndarray  # float[t]
    v_without: PlayerVector  # float[t, n]: the value with player i removed
    player_names: tuple[str, ...]
    task_names: tuple[str, ...]

    @classmethod
    def from_values(cls, values: Values, player_names: tuple[str, ...], task_names: tuple[str, ...]) -> LeaveOneOut:
        """Leave-one-out from the values float[n + 1, t] of :func:`leave_one_out_coalitions`."""
        n, t = len(player_names), len(task_names)
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (n + 1, t):
            raise ConfigError(
                f"values have shape {values.shape}, expected ({n + 1}, {t}): evaluate leave_one_out_coalitions({n})"
            )
        v_full, v_without = values[0], values[1:].T  # [t], [t, n]
        return cls(v_full[:, None] - v_without, v_full, v_without, player_names, task_names)

    def rankings(
        self,
        granularity: Granularity | str,
        model_fingerprint: str,
        value_fingerprint: str,
        metadata: Mapping[str, str | int | float] | None = None,
    ) -> list[Ranking]:
        """One :class:`Ranking` per task (method ``leave_one_out``), with ``v_full`` in its metadata."""
        granularity = Granularity.parse(granularity)
        return [
            Ranking(
                players=self.player_names,
                granularity=granularity.value,
                scores=self.values[task].tolist(),
                method=METHOD,
                task=task_name,
                model_fingerprint=model_fingerprint,
                value_fingerprint=value_fingerprint,
                metadata={**(metadata or {}), "v_full": float(self.v_full[task])},
            )
            for task, task_name in enumerate(self.task_names)
        ]


def leave_one_out_coalitions(n_players: int) -> Coalitions:
    """bool[n + 1, n]: all players (row 0), then all but player ``i`` (row ``i + 1``)."""
    if isinstance(n_players, bool) or not isinstance(n_players, int) or n_players < 1:
        raise ConfigError(f"n_players must be a positive integer, got {n_players!r}")
    return np.vstack([np.ones((1, n_players), dtype=bool), ~np.eye(n_players, dtype=bool)])


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
