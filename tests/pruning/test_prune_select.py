"""Selection rules: lowest score first, protected layers, target kinds, fraction rounding, iterative mode."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from shapley_svc.errors import ConfigError
from shapley_svc.model.masked import Player
from shapley_svc.pruning.select import (
    PruningPlan,
    conditional_leave_one_out,
    iterative_order,
    removal_count,
    select,
    select_iteratively,
)


@dataclass
class FakeRanking:
    players: tuple[str, ...]
    scores: np.ndarray
    granularity: str


def block_ranking(scores: list[float]) -> FakeRanking:
    return FakeRanking(tuple(f"layer{i}.block" for i in range(len(scores))), np.array(scores), "block")


def sublayer_ranking(attn: list[float], mlp: list[float]) -> FakeRanking:
    names = tuple(f"layer{i}.{kind}" for i in range(len(attn)) for kind in ("attn", "mlp"))
    return FakeRanking(names, np.array([s for pair in zip(attn, mlp, strict=True) for s in pair]), "sublayer")


def test_lowest_scores_go_and_protected_layers_stay() -> None:
    ranking = block_ranking([0.0, 5.0, 1.0, 4.0, 2.0, 0.5])
    assert select(ranking, 6, count=2).names == ("layer0.block", "layer5.block")
    plan = select(ranking, 6, count=2, protect_first=1, protect_last=1)
    assert plan.names == ("layer2.block", "layer4.block")
    with pytest.raises(ConfigError, match="only 4 may go"):
        select(ranking, 6, count=5, protect_first=1, protect_last=1)


def test_attention_only_and_mlp_only_targets() -> None:
    ranking = sublayer_ranking(attn=[3.0, 0.1, 0.2, 9.0], mlp=[0.0, 8.0, 7.0, 0.05])
    assert select(ranking, 4, target="attn", count=2).names == ("layer1.attn", "layer2.attn")
    assert select(ranking, 4, target="mlp", count=2).names == ("layer0.mlp", "layer3.mlp")
    assert select(ranking, 4, target="sublayer", count=3).names == ("layer0.mlp", "layer1.attn", "layer3.mlp")
    both = select(sublayer_ranking([0.0, 1, 1, 1], [0.0, 1, 1, 1]), 4, target="sublayer", count=2)
    assert both.removed == (Player(0, "block"),)
    with pytest.raises(ConfigError, match="sublayer-granularity"):
        select(block_ranking([1.0, 2.0]), 2, target="attn", count=1)
    with pytest.raises(ConfigError, match="block-granularity"):
        select(ranking, 4, target="block", count=1)


def test_fraction_rounds_down_and_ties_go_to_later_layers() -> None:
    assert removal_count(30, None, 0.25) == 7  # 7.5 -> 7: never more than the fraction asked for
    assert removal_count(10, None, 0.3) == 3  # 0.3 * 10 = 2.9999999999999996 in floating point
    assert removal_count(60, None, 0.1) == 6
    with pytest.raises(ConfigError, match="exactly one"):
        removal_count(10, 2, 0.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        removal_count(10, None, 1.0)
    assert select(block_ranking([1.0] * 5), 5, fraction=0.5).names == ("layer3.block", "layer4.block")


class PairGame:
    """Blocks 0 and 1 are substitutes (either one gives the value 1); blocks 2 and 3 add 0.3 and 0.4."""

    player_names = tuple(f"layer{i}.block" for i in range(4))
    task_names = ("toy",)
    n_players = 4

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.atleast_2d(coalitions)
        value = (coalitions[:, 0] | coalitions[:, 1]) + 0.3 * coalitions[:, 2] + 0.4 * coalitions[:, 3]
        return value[:, None].astype(float)


def test_iterative_mode_rescores_after_each_removal() -> None:
    game = PairGame()
    rescore = conditional_leave_one_out(game)
    assert rescore(PruningPlan(4, ())) == {
        "layer0.block": 0.0,
        "layer1.block": 0.0,
        "layer2.block": pytest.approx(0.3),
        "layer3.block": pytest.approx(0.4),
    }
    # One shot on leave-one-out scores drops both substitutes (each looks useless alone) and loses 1.0;
    # re-scoring after the first removal sees the other one become essential.
    one_shot = select(rescore(PruningPlan(4, ())), 4, count=2)
    assert one_shot.names == ("layer0.block", "layer1.block")
    iterative = select_iteratively(rescore, 4, count=2)
    assert iterative.names == ("layer1.block", "layer2.block")
    assert iterative_order(rescore, 4, count=3) == [Player(1, "block"), Player(2, "block"), Player(3, "block")]
    calls: list[tuple[str, ...]] = []

    def recording(plan: PruningPlan) -> dict[str, float]:
        calls.append(plan.names)
        return rescore(plan)

    select_iteratively(recording, 4, count=2, protect_last=1)
    assert calls == [(), ("layer1.block",)]
