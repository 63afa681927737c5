"""`shapley-svc plan` on the shipped table and on a tiny saved model (in process, held-out windows), and the
plan's versioned JSON."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from planning_games import SHIPPED_TABLE

from shapley_svc.cli import main
from shapley_svc.errors import DataError
from shapley_svc.estimators.table import TableGame
from shapley_svc.planning import RemovalPlan


def plan_json(capsys: pytest.CaptureFixture[str], *arguments: str) -> dict:
    assert main(["plan", *arguments, "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_plan_on_the_shipped_table_prints_the_plan_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_json(capsys, "--table", str(SHIPPED_TABLE), "--remove", "3", "--budget", "16", "--seed", "0")
    assert plan["removed"] == ["layer18.block", "layer19.block", "layer26.block"]
    assert plan["evaluations_used"] == plan["evaluations_computed"] == 16
    assert plan["value"] == pytest.approx(-4.1615, abs=1e-4) and plan["method"] == "model_based"
    greedy = plan_json(capsys, "--table", str(SHIPPED_TABLE), "--remove", "3", "--budget", "33", "--method", "greedy")
    assert greedy["removed"] == plan["removed"] and greedy["evaluations_used"] == 33
    assert main(["plan", "--table", str(SHIPPED_TABLE), "--remove", "3", "--budget", "2", "--method", "greedy"]) == 2
    assert "too small" in capsys.readouterr().err


def test_plan_most_removes_as_many_as_the_limit_allows_on_the_shipped_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = TableGame.from_npz(SHIPPED_TABLE)
    n, full = table.n_players, float(table(np.ones((1, 12), dtype=bool))[0, 0])
    losses = {}
    for k in (1, 2, 3, 4):
        sets = list(itertools.combinations(range(n), k))
        coalitions = np.ones((len(sets), n), dtype=bool)
        for row, removal in enumerate(sets):
            coalitions[row, list(removal)] = False
        losses[k] = full - float(table(coalitions)[:, 0].max())
    limit = (losses[2] + losses[3]) / 2  # the best 2-removal keeps it, no 3-removal does
    task = table.task_names[0]
    plan = plan_json(capsys, "--table", str(SHIPPED_TABLE), "--most", "--max-loss", f"{task}={limit}", "--budget", "60")
    assert plan["k"] == 2 and losses[2] <= full - plan["value"] <= limit and plan["limits"] == {task: limit}
    assert plan["evaluations_used"] <= 60
    assert main(["plan", "--table", str(SHIPPED_TABLE), "--most", "--budget", "40", "--no-progress"]) == 2
    assert "--most needs --max-loss" in capsys.readouterr().err


def test_plan_on_a_model_checks_the_plan_on_held_out_windows(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "s.sqlite"
    common = ["--model", str(tiny_checkpoint), "--dtype", "float32", "--executor", "local", "--corpus", "lambada"]
    common += ["--windows", "2", "--window", "32", "--store", str(store), "--granularity", "sublayer"]
    plan = plan_json(capsys, *common, "--remove", "2", "--budget", "12", "--target", "attn", "--held-out-windows", "3")
    assert len(plan["removed"]) == 2 and all(name.endswith(".attn") for name in plan["removed"])
    assert plan["evaluations_used"] <= 12 and len(plan["params"]["rankings"]) == 3, "seeded with the static metrics"
    finalists = dict((tuple(names), value) for names, value in plan["selection"])
    assert len(finalists) >= 2 and finalists[tuple(plan["removed"])] == max(finalists.values())
    (held_out,) = plan["held_out"]
    assert held_out["task"] == "lambada.neg_loss" and held_out["items"] == 3
    assert held_out["difference"] == pytest.approx(held_out["plan"] - held_out["full"])
    assert held_out["low"] <= held_out["difference"] <= held_out["high"]
    again = plan_json(capsys, *common, "--remove", "2", "--budget", "12", "--target", "attn", "--held-out-windows", "3")
    assert again["removed"] == plan["removed"] and again["evaluations_computed"] == 0, "the second run is cached"


def test_the_model_s_windows_are_calibration_then_selection_then_held_out() -> None:
    from shapley_svc.cli import build_parser
    from shapley_svc.cli.plan import _worker_setup

    args = build_parser().parse_args(["plan", "--model", "demo", "--remove", "2", "--budget", "40", "--windows", "3"])
    args.corpus, args.dtype, args.selection_windows = "wikitext2", "float32", 6
    setup = _worker_setup(args)
    (calibration,), (selection,), (held_out,) = setup.tasks, setup.selection, setup.held_out
    assert calibration.params["windows"] == 3 and calibration.params.get("first_window", 0) == 0
    assert (selection.params["first_window"], selection.params["windows"]) == (3, 6)
    assert (held_out.params["first_window"], held_out.params["windows"]) == (9, 3)
    args.selection_windows = 0
    assert _worker_setup(args).selection == () and _worker_setup(args).held_out[0].params["first_window"] == 3


def test_plan_json_round_trips_and_refuses_other_versions() -> None:
    text = json.dumps(
        {
            "format": "shapley_svc.RemovalPlan", "version": 1, "method": "greedy", "seed": 0, "params": {}, "k": 1,
            "budget": 3, "removed": ["layer1.block"], "objective": {"value": 1.0}, "value": -1.0,
            "task_values": {"value": -1.0}, "evaluations_used": 2, "evaluations_computed": 2,
            "path": [[["layer0.block"], -2.0], [["layer1.block"], -1.0]],
            "held_out": [
                {"task": "value", "full": 0.0, "plan": -1.0, "difference": -1.0, "low": -2.0, "high": 0.0, "items": 4}
            ],
        }
    )  # fmt: skip
    plan = RemovalPlan.from_json(text)
    assert plan.removed == ("layer1.block",) and plan.held_out[0].items == 4
    assert RemovalPlan.from_json(plan.to_json()) == plan
    with pytest.raises(DataError, match="version 2, newer"):
        RemovalPlan.from_json(text.replace('"version": 1', '"version": 2'))
    with pytest.raises(DataError, match="evaluations_used"):
        RemovalPlan.from_json(text.replace('"evaluations_used": 2', '"evaluations_used": "two"'))
