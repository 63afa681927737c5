"""Leave-one-out, in one place: score_i = v(S) - v(S \\ {i}), by default with S all players.

Not a Shapley value: the classic pruning baseline, blind to interactions (two redundant players both score
near zero; Shapley values average over coalitions to account for them). Here live the coalitions it needs,
the scores from their values (:class:`LeaveOneOut`) and the estimator a job runs
(:class:`LeaveOneOutEstimator`, ``n + 2`` evaluations: the empty coalition too, so results carry v(empty));
:func:`shapley_svc.metrics.leave_one_out` evaluates the coalitions on a model game in one engine pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shapley_svc.coalitions import full_and_empty
from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import Estimator
from shapley_svc.players import Granularity
from shapley_svc.ranking import Ranking
from shapley_svc.types import Coalitions, PlayerVector, Values

METHOD = "leave_one_out"


def leave_one_out_coalitions(n_players: int, base: np.ndarray | None = None) -> Coalitions:
    """bool[m + 1, n]: ``base`` (default: all players) in row 0, then ``base`` without each of its m players."""
    if isinstance(n_players, bool) or not isinstance(n_players, int) or n_players < 1:
        raise ConfigError(f"n_players must be a positive integer, got {n_players!r}")
    start = np.ones(n_players, dtype=bool) if base is None else np.asarray(base, dtype=bool)
    present = np.flatnonzero(start)
    coalitions = np.repeat(start[None], len(present) + 1, axis=0)
    coalitions[np.arange(1, len(present) + 1), present] = False
    return coalitions


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
                granularity=granularity,
                scores=self.values[task].tolist(),
                method=METHOD,
                task=task_name,
                model_fingerprint=model_fingerprint,
                value_fingerprint=value_fingerprint,
                metadata={**(metadata or {}), "v_full": float(self.v_full[task])},
            )
            for task, task_name in enumerate(self.task_names)
        ]


class LeaveOneOutEstimator(Estimator):
    """v(N) - v(N minus i) for every player i, as an estimator (exact, so its stderr is zero)."""

    name = METHOD

    def _plan_round(self) -> Coalitions | None:
        if self.rounds_started > 0:
            return None
        rows = np.vstack([full_and_empty(self.n_players), leave_one_out_coalitions(self.n_players)[1:]])
        return rows[: self.budget]

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = leave_one_out_coalitions(self.n_players)
        v_full = self.value(rows[0])
        told = np.array([self.is_observed(row) for row in rows[1:]])
        values = [v_full, *(self.value(row) if self.is_observed(row) else v_full for row in rows[1:])]  # unseen: 0
        scores = LeaveOneOut.from_values(np.vstack(values), self.settings.player_names, ("",) * len(v_full)).values
        return scores, np.zeros_like(scores), told.astype(np.int64)
