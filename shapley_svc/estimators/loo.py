"""Leave-one-out: score_i = v(N) - v(N \\ {i}) (not a Shapley value; the classic pruning baseline).

Costs n + 2 evaluations (the empty coalition too, so results carry v(empty)). The score is computed
exactly, so its stderr is zero; as an estimate of the Shapley value it is biased by design.
"""

from __future__ import annotations

import numpy as np

from shapley_svc.estimators.base import Estimator, full_and_empty
from shapley_svc.types import Coalitions


class LeaveOneOutEstimator(Estimator):
    """v(N) - v(N minus i) for every player i."""

    name = "leave_one_out"

    def _plan_round(self) -> Coalitions | None:
        if self.rounds_started > 0:
            return None
        rows = np.vstack([full_and_empty(self.n_players), ~np.eye(self.n_players, dtype=bool)])
        return rows[: self.budget]

    def _estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v_full = self.value(np.ones(self.n_players, dtype=bool))
        scores = np.zeros((len(v_full), self.n_players))
        counts = np.zeros(self.n_players, dtype=np.int64)
        for player, row in enumerate(~np.eye(self.n_players, dtype=bool)):
            if self.is_cached(row):
                scores[:, player] = v_full - self.value(row)
                counts[player] = 1
        return scores, np.zeros_like(scores), counts
