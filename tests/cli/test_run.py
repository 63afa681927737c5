"""`shapley-svc run` end to end on a tiny saved model, in process: rankings table, RankingSet file, cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shapley_svc.cli import main
from shapley_svc.ranking import RankingSet
from shapley_svc.store.sqlite import SQLiteStore


def run_cli(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    code = main(
        [
            "run", "--model", str(tiny_checkpoint), "--dtype", "float32", "--executor", "local", "--corpus", "lambada",
            "--windows", "2", "--window", "32", "--budget", "12", "--store", str(tmp_path / "store.sqlite"),
            "--out", str(tmp_path / "rankings.json"), "--no-progress", *extra,
        ]
    )  # fmt: skip
    assert code == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_run_writes_every_ranking_and_caches_values(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = run_cli(tiny_checkpoint, tmp_path, capsys)
    rankings = RankingSet.load(tmp_path / "rankings.json")
    methods = {ranking.method for ranking in rankings.rankings}
    assert {"leave_one_out", "block_influence", "angular_distance", "relative_update_norm"} <= methods
    shapley = next(r for r in rankings.rankings if r.method.startswith("shapley:"))
    assert shapley.players == tuple(f"layer{i}.block" for i in range(4))
    assert shapley.stderr is not None and len(shapley.stderr) == 4
    assert {run["estimator"] for run in summary["runs"]} == {"shapley", "leave_one_out"}
    with SQLiteStore(tmp_path / "store.sqlite") as store:
        assert len(store.get_results(summary["job_id"])) == 2

    again = run_cli(tiny_checkpoint, tmp_path, capsys)
    assert again["job_id"] != summary["job_id"]
    assert all(run["evaluated"] == 0 for run in again["runs"]), "a repeated run must be served by the value cache"
    assert (
        RankingSet.load(tmp_path / "rankings.json").find("leave_one_out").scores
        == rankings.find("leave_one_out").scores
    )


def test_run_prints_the_recommended_plan_checked_on_held_out_windows_and_reruns_it_from_cache(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "run", "--model", str(tiny_checkpoint), "--dtype", "float32", "--executor", "local", "--corpus", "lambada",
        "--windows", "2", "--window", "32", "--budget", "12", "--store", str(tmp_path / "s.sqlite"),
        "--out", str(tmp_path / "r.json"), "--no-progress", "--plans", "1,2,4", "--held-out-windows", "3",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert [plan["name"] for plan in summary["plans"]] == ["block-block-1", "block-block-2"], "k < players only"
    for plan in summary["plans"]:
        (check,) = plan["held_out"]
        assert check["items"] == 3 and check["task"] == "lambada.neg_loss"
        assert f"k={len(plan['removed'])}: {', '.join(plan['removed'])}" in out
    assert "recommended plans" in out and "held-out" in out
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [plan["removed"] for plan in again["plans"]] == [plan["removed"] for plan in summary["plans"]]
    assert all(plan["evaluations_computed"] == 0 for plan in again["plans"])
    with pytest.raises(SystemExit):
        main([*args[:-4], "--plans", "two"])


def test_run_refuses_an_unknown_estimator_in_one_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--model", str(tiny_checkpoint), "--executor", "local", "--estimator", "permutaton",
                 "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "permutation" in error and "Traceback" not in error


def test_run_dry_run_estimates_the_spec_run_would_build_and_runs_nothing(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shapley_svc.runner.driver as driver

    def no_job(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run must not start a job")

    monkeypatch.setattr(driver, "run_job", no_job)
    args = [
        "run", "--model", str(tiny_checkpoint), "--dtype", "float32", "--executor", "local", "--corpus", "lambada",
        "--windows", "4", "--window", "32", "--budget", "12", "--store", str(tmp_path / "s.sqlite"),
        "--out", str(tmp_path / "r.json"), "--no-progress", "--plans", "none", "--dry-run", "--noise", "0.05",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    cost = json.loads(out.strip().splitlines()[-1])
    assert cost["evaluations"] == {"block": 24}, "the spec run builds: its budget x (Shapley + leave-one-out)"
    (row,) = cost["tasks"]
    assert row["task"] == "lambada.neg_loss" and row["items"] == 4 and row["noise"] == 0.05
    assert row["items_needed"] == max(2, math.ceil(4 * (row["stderr"] / 0.05) ** 2))
    assert row["stderr"] > 0 and row["job_seconds_needed"] > 0
    assert not (tmp_path / "s.sqlite").exists() and not (tmp_path / "r.json").exists(), "nothing stored or written"
    assert main([*args[:-3], "--noise", "0.05"]) == 2, "--noise without --dry-run is refused"
