"""`shapley-svc prune` end to end on a tiny model saved to disk: explicit lists, ranking files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import shapley_svc.cli as cli
from shapley_svc.ranking import Ranking, RankingSet
from shapley_svc.store.sqlite import SQLiteStore

FAST = ["--window", "32", "--calibration-windows", "4:2", "--judge-windows", "8:2", "--latency-repeats", "1"]


@pytest.fixture(autouse=True)
def only_prune(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register only the prune subcommand, so this test does not depend on the others' modules."""
    monkeypatch.setattr(cli, "SUBCOMMANDS", ("prune",))


def test_explicit_lists_with_recovery(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned"
    code = cli.main(
        [
            "prune",
            "--model",
            str(tiny_checkpoint),
            "--blocks",
            "2",
            "--attn",
            "1",
            "--out",
            str(out),
            "--recovery",
            "lowrank",
            "--rank",
            "4",
            *FAST,
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "layer1.attn, layer2.block" in printed and "held out: unknown" in printed
    assert "wikitext2 windows 8-9 of 32 tokens" in printed and "KV bytes/token" in printed
    summary = json.loads((out / "pruning-summary.json").read_text())
    assert summary["calibration_after"] <= summary["calibration_before"]
    assert summary["after"]["kv_bytes_per_token"] == 2 * summary["before"]["kv_bytes_per_token"] // 4
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 3
    reloaded.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False, pad_token_id=2)


def test_ranking_file_with_method_and_protection(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    players = tuple(f"layer{i}.block" for i in range(4))
    meta = {"corpus": "wikitext2", "window": 32, "first_window": 0, "windows": 4}
    rankings = RankingSet(
        rankings=(
            Ranking(
                players=players,
                granularity="block",
                scores=(4.0, 3.0, 2.0, 1.0),
                method="leave_one_out",
                task="wikitext2.neg_loss",
                model_fingerprint="x",
                metadata=meta,
            ),
            Ranking(
                players=players,
                granularity="block",
                scores=(1.0, 2.0, 3.0, 4.0),
                method="block_influence",
                model_fingerprint="x",
            ),
        )
    )
    rankings.save(tmp_path / "rankings.json")
    code = cli.main(
        [
            "prune",
            "--model",
            str(tiny_checkpoint),
            "--ranking",
            str(tmp_path / "rankings.json"),
            "--method",
            "leave_one_out",
            "--count",
            "1",
            "--protect-last",
            "1",
            "--out",
            str(tmp_path / "pruned"),
            *FAST,
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "removed 1 player(s): layer2.block" in printed
    assert "(estimated on: wikitext2 windows 0-3 of 32 tokens)" in printed and "held out: yes" in printed

    code = cli.main(
        [
            "prune",
            "--model",
            str(tiny_checkpoint),
            "--ranking",
            str(tmp_path / "rankings.json"),
            "--count",
            "1",
            "--out",
            str(tmp_path / "other"),
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and "pick one with --method (block_influence, leave_one_out)" in error
    assert error.strip().splitlines()[-1].startswith("shapley-svc prune: error:")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--blocks", "1", "--ranking", "r.json"], "either --ranking"),
        (["--blocks", "9"], "layers 0 to 3"),
        (["--blocks", "1", "--count", "2"], "select from a --ranking"),
        (["--blocks", "0,1,2,3"], "every decoder block"),
    ],
)
def test_bad_input_is_one_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    code = cli.main(["prune", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o"), *arguments, *FAST])
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]
    assert code == 2 and message in last and last.startswith("shapley-svc prune: error:")


def test_a_plan_file_removes_exactly_its_players_and_reloads_in_plain_transformers(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shapley_svc.planning import RemovalPlan

    plan = RemovalPlan(
        method="greedy", seed=0, params={}, k=2, budget=10, removed=("layer1.attn", "layer3.block"),
        objective={"value": 1.0}, value=-1.0, task_values={"value": -1.0}, evaluations_used=9,
        evaluations_computed=9, path=(),
    )  # fmt: skip
    (tmp_path / "plan.json").write_text(plan.to_json())
    with SQLiteStore(tmp_path / "s.sqlite") as store:
        store.create_job({}, job_id="j1")
        store.put_plan("j1", name="mixed-2", granularity="sublayer", plan_json=plan.to_json())
    stored = ["prune", "--model", str(tiny_checkpoint), "--store", str(tmp_path / "s.sqlite"), "--out"]
    assert cli.main([*stored, str(tmp_path / "from-store"), "--plan", "j1:mixed-2", *FAST]) == 0
    assert "plan mixed-2 of job j1" in capsys.readouterr().out
    from_store = json.loads((tmp_path / "from-store" / "shapley-svc-pruning.json").read_text())
    assert sorted(from_store["removed"]) == ["layer1.attn", "layer3.block"]
    assert cli.main([*stored, str(tmp_path / "none"), "--plan", "j1:no-such-plan", *FAST]) == 2
    assert "its plans: ['mixed-2']" in capsys.readouterr().err
    out = tmp_path / "pruned"
    arguments = ["prune", "--model", str(tiny_checkpoint), "--plan", str(tmp_path / "plan.json"), "--out", str(out)]
    assert cli.main([*arguments, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "layer1.attn, layer3.block" in printed and "plan of greedy" in printed
    manifest = json.loads((out / "shapley-svc-pruning.json").read_text())
    assert sorted(manifest["removed"]) == ["layer1.attn", "layer3.block"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 3
    assert (
        cli.main(
            ["prune", "--model", str(tiny_checkpoint), "--plan", "p.json", "--count", "1", "--out", str(tmp_path / "x")]
        )
        == 2
    )
