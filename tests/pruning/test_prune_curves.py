"""Pruning curves as data and plot; the summary states the ranking and judging splits and flags overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shapley_svc.model.masked import Player
from shapley_svc.pruning.curves import (
    CurveSet,
    PruningSummary,
    Split,
    describe_split,
    plot_curves,
    pruning_curves,
    removal_order,
)
from shapley_svc.pruning.savings import Footprint
from shapley_svc.pruning.select import PruningPlan
from shapley_svc.values.lm_loss import LanguageModelingLoss


class AdditiveGame:
    """Sublayer game whose value is minus the summed weight of the missing players (two tasks)."""

    player_names = tuple(f"layer{i}.{kind}" for i in range(3) for kind in ("attn", "mlp"))
    task_names = ("toy.neg_loss", "toy.accuracy")
    n_players = 6
    weights = np.array([0.5, 3.0, 0.1, 2.0, 0.2, 1.0])

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        missing = (~np.atleast_2d(coalitions)) @ self.weights
        return np.stack([-1.0 - missing, 1.0 - missing / 10], axis=1)


def test_curves_follow_each_ranking_and_round_trip(tmp_path: Path) -> None:
    scores = dict(zip(AdditiveGame.player_names, AdditiveGame.weights.tolist(), strict=True))
    orders = {
        "attn-only": removal_order(scores, 3, target="attn"),
        "mlp-only": removal_order(scores, 3, target="mlp"),
    }
    assert orders["attn-only"] == [Player(1, "attn"), Player(2, "attn"), Player(0, "attn")]

    def cost(plan: PruningPlan) -> Footprint:
        return Footprint(100 - len(plan.removed), 100, 10 * len(plan.kept_layers), 0)

    curves = pruning_curves(orders, {"toy": AdditiveGame()}, 3, max_removed=2, cost=cost, splits={"judge": "toy"})
    first = curves.series[0]
    assert (first["ranking"], first["task"]) == ("attn-only", "toy.neg_loss")
    np.testing.assert_allclose(first["values"], [-1.0, -1.1, -1.3])
    assert [f["parameters"] for f in first["footprints"]] == [100, 99, 98]
    curves.save(tmp_path / "curves.json")
    assert CurveSet.load(tmp_path / "curves.json").to_dict() == curves.to_dict()
    assert plot_curves(curves, tmp_path / "curves.png").stat().st_size > 1000


def test_summary_states_splits_and_flags_overlap() -> None:
    ranking = describe_split(LanguageModelingLoss(window=128, windows=4, first_window=0))
    judge = describe_split(LanguageModelingLoss(window=128, windows=8, first_window=8))
    assert judge.description == "wikitext2 windows 8-15 of 128 tokens"
    footprint = Footprint(10, 10, 4, 4, 0.5)
    summary = PruningSummary(
        "m", ["layer1.block"], "leave_one_out", ranking, judge, footprint, footprint, "loss", 3.0, 3.5
    )
    assert summary.held_out is True
    text = summary.format()
    assert "(estimated on: wikitext2 windows 0-3 of 128 tokens)" in text and "held out: yes" in text
    overlapping = describe_split(LanguageModelingLoss(window=128, windows=4, first_window=6))
    summary.calibration_split = overlapping
    assert summary.held_out is False and "NO - the judging data overlaps" in summary.format()
    assert Split("mmlu validation").overlaps(judge) is None
