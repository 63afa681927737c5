"""The ranking format: JSON round trips, refusal of newer versions and malformed files, ordering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from shapley_svc.errors import ConfigError, DataError, ShapleySvcError
from shapley_svc.model.masked import Granularity
from shapley_svc.ranking import FORMAT_VERSION, Ranking, RankingSet


def block_ranking(
    scores: list[float], method: str = "leave_one_out", task: str | None = "wikitext2.neg_loss"
) -> Ranking:
    return Ranking(
        players=[f"layer{i}.block" for i in range(len(scores))],
        granularity=Granularity.BLOCK,
        scores=scores,
        stderr=[0.01 * i if i else None for i in range(len(scores))],
        method=method,
        task=task,
        model_fingerprint="model-fp",
        value_fingerprint="value-fp",
        metadata={"v_full": -3.59, "windows": 4},
    )


def test_json_round_trip_of_a_ranking_and_a_set(tmp_path: Path) -> None:
    ranking = block_ranking([0.3, 1 / 3, -0.25])
    assert ranking.granularity == "block"
    assert Ranking.from_json(ranking.to_json()) == ranking
    ranking.save(tmp_path / "one.json")
    assert Ranking.load(tmp_path / "one.json") == ranking
    sublayers = Ranking(
        players=["layer0.attn", "layer0.mlp"],
        granularity="sublayer",
        scores=[0.1, 0.2],
        method="block_influence",
        model_fingerprint="model-fp",
    )
    rankings = RankingSet(rankings=[ranking, sublayers])
    rankings.save(tmp_path / "nested" / "set.json")
    loaded = RankingSet.load(tmp_path / "nested" / "set.json")
    assert loaded == rankings and json.loads(rankings.to_json())["format_version"] == FORMAT_VERSION
    assert loaded.find("block_influence") == sublayers
    assert RankingSet.load(tmp_path / "one.json").rankings == (ranking,)
    with pytest.raises(ConfigError, match="available: leave_one_out"):
        loaded.find("shapley:permutation")


def test_newer_or_missing_versions_are_refused(tmp_path: Path) -> None:
    document = json.loads(block_ranking([1.0, 2.0]).to_json())
    with pytest.raises(DataError, match=r"format_version 2, newer .* upgrade shapley-svc"):
        Ranking.from_json(json.dumps({**document, "format_version": 2}))
    with pytest.raises(DataError, match="format_version 2"):
        RankingSet.from_json(json.dumps({"format_version": 1, "rankings": [{**document, "format_version": 2}]}))
    with pytest.raises(DataError, match="format_version None"):
        Ranking.from_json(json.dumps({key: value for key, value in document.items() if key != "format_version"}))
    with pytest.raises(ShapleySvcError, match="not valid JSON"):
        Ranking.from_json("{")
    with pytest.raises(DataError, match="cannot read ranking file"):
        Ranking.load(tmp_path / "missing.json")


def test_malformed_rankings_are_refused_with_the_reason() -> None:
    document = json.loads(block_ranking([1.0, 2.0]).to_json())
    with pytest.raises(DataError, match="1 scores for 2 players"):
        Ranking.from_json(json.dumps({**document, "scores": [1.0]}))
    with pytest.raises(DataError, match="not a sublayer player"):
        Ranking.from_json(json.dumps({**document, "granularity": "sublayer"}))
    with pytest.raises(DataError, match="surprise: Extra inputs are not permitted"):
        Ranking.from_json(json.dumps({**document, "surprise": 1}))
    with pytest.raises(ValidationError, match="non-finite scores"):
        block_ranking([1.0, float("nan")])


def test_order_puts_the_least_important_first_and_the_deeper_of_a_tie() -> None:
    ranking = block_ranking([0.5, 0.1, 0.9, 0.1])
    assert ranking.order() == [3, 1, 0, 2]
    assert ranking.order(ascending=False) == [2, 0, 1, 3]
    assert ranking.least_important(2) == ["layer3.block", "layer1.block"]
    assert ranking.least_important(0) == []
    with pytest.raises(ConfigError, match=r"k must be an integer in \[0, 4\], got 5"):
        ranking.least_important(5)
