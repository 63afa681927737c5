"""benchmarks/planning.py on the shipped exact table, one seed, no model rows: every row's regret is measured
against enumeration and the verdicts and objective rows are there."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_planning_benchmark_runs_on_the_shipped_table(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("planning_benchmark", BENCHMARKS / "planning.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not module.SHIPPED_TABLE.is_file():
        pytest.skip("no ../shared/games beside the checkout")
    summary = module.main(["--seeds", "1", "--objective-seeds", "1", "--no-model-rows", "--no-static"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["goal_met"] == summary["goal_met"]
    assert [verdict["k"] for verdict in summary["tables"]] == list(module.TABLE_KS)
    rows = summary["table_rows"]
    assert all(row["regret"] >= -1e-9 for row in rows), "no plan beats the enumerated best"
    shapley = [row["regret"] for row in rows if row["method"] == "ranking:shapley"]
    assert min(shapley) > 1.0, "the exact Shapley ranking's k lowest cost over a nat on the shipped table"
    assert {"ranking:exact_pruning_semivalue", "ranking:exact_beta_shapley_1_16"} <= {row["method"] for row in rows}
    (most,) = summary["objectives"]
    assert most["objective"] == "most" and most["k_found"] == [most["k"]]
