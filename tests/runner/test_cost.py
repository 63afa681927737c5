"""`shapley-svc job SPEC --dry-run`: one worker timed in process, scaled to the spec's budget and workers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shapley_svc.cli import main
from shapley_svc.data.corpus import default_data_dir
from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import tiny_model
from shapley_svc.runner.cost import NoiseTargets, items_needed
from shapley_svc.spec import dump_spec, parse_spec


def test_dry_run_prints_seconds_per_evaluation_wall_time_and_gpu_hours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = tiny_model("llama", num_layers=4, seed=0)
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    task = {"corpus": "wikitext2", "data_dir": str(default_data_dir()), "window": 32, "windows": 2}
    spec = parse_spec(
        {
            "model": {"name": str(tmp_path / "model"), "dtype": "float32"},
            "players": {"granularities": ["block", "sublayer"]},
            "tasks": [{"name": "lm_loss", "params": task}],
            "estimators": [{"name": "permutation"}, {"name": "kernelshap"}],
            "budget": {"evaluations": 500},
            "executor": {"kind": "ray", "num_workers": 4, "num_gpus_per_worker": 2},
            "store": {"path": str(tmp_path / "s.sqlite")},
        }
    )
    dump_spec(spec, tmp_path / "job.yaml")
    assert main(["job", str(tmp_path / "job.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("block: ") and "ms per evaluation x 1000 evaluations" in lines[0]
    assert lines[1].startswith("sublayer: ")
    assert "expected wall time on 4 worker(s)" in lines[2] and "GPU-hours" in lines[2]
    cost = json.loads(lines[-1])
    assert cost["evaluations"] == {"block": 1000, "sublayer": 1000} and cost["workers"] == 4
    seconds = cost["seconds_per_evaluation"]
    assert all(value > 0 for value in seconds.values())
    assert cost["wall_seconds"] == pytest.approx(1000 * (seconds["block"] + seconds["sublayer"]) / 4)
    assert cost["gpu_hours"] == pytest.approx(cost["wall_seconds"] * 4 * 2 / 3600)
    assert not (tmp_path / "s.sqlite").exists(), "a dry run runs nothing and stores nothing"


def test_dry_run_reports_each_task_s_items_stderr_and_the_items_and_cost_a_noise_target_needs(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(default_data_dir())
    spec = parse_spec(
        {
            "model": {"name": str(tiny_checkpoint), "dtype": "float32"},
            "players": {"granularities": ["block", "sublayer"]},
            "tasks": [
                {"name": "lm_loss", "params": {"data_dir": data, "window": 32, "windows": 8}},
                {"name": "arc_easy", "params": {"data_dir": data, "limit": 6}},
            ],
            "estimators": [{"name": "permutation"}],
            "budget": {"evaluations": 40},
            "executor": {"kind": "ray", "num_workers": 2},
            "store": {"path": str(tmp_path / "s.sqlite")},
        }
    )
    dump_spec(spec, tmp_path / "job.yaml")
    noise = ["--noise", "0.01", "--noise", "arc_easy=0.1"]
    args = ["job", str(tmp_path / "job.yaml"), "--dry-run", "--no-progress", *noise]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "items needed" in out and "wikitext2.neg_loss" in out
    rows = json.loads(out.strip().splitlines()[-1])["tasks"]
    expected_columns = ["wikitext2.neg_loss", "arc_easy.acc", "arc_easy.acc_norm"]
    assert [(row["granularity"], row["task"]) for row in rows] == [
        (granularity, column) for granularity in ("block", "sublayer") for column in expected_columns
    ]
    for row in rows:
        assert row["items"] == (8 if row["task"].startswith("wikitext2") else 6)
        assert row["noise"] == (0.1 if row["task"].startswith("arc_easy") else 0.01)
        assert row["seconds_per_evaluation"] > 0 and row["stderr"] is not None
        if row["stderr"] == 0:  # a 0/1 metric every item agrees on: nothing to resample
            assert row["items_needed"] == 2
            continue
        assert row["items_needed"] == max(2, math.ceil(row["items"] * (row["stderr"] / row["noise"]) ** 2))
        needed = row["seconds_per_evaluation"] * row["items_needed"] / row["items"]
        assert row["seconds_per_evaluation_needed"] == pytest.approx(needed)
        assert row["job_seconds_needed"] == pytest.approx(needed * 40)
        assert row["wall_seconds_needed"] == pytest.approx(needed * 40 / 2)
    loss = rows[0]
    assert loss["stderr"] > 0 and loss["value"] < 0  # minus a loss; a random model's windows differ
    assert not (tmp_path / "s.sqlite").exists(), "a dry run runs nothing and stores nothing"


def test_noise_targets_parse_and_match_columns_then_tasks() -> None:
    targets = NoiseTargets.parse(["0.02", "mmlu=0.05", "mmlu.accuracy=0.01", "lm_loss=0.3"])
    assert targets.target("mmlu.accuracy", "mmlu") == 0.01
    assert targets.target("mmlu.p_correct", "mmlu") == 0.05
    assert targets.target("wikitext2.neg_loss", "lm_loss") == 0.3
    assert targets.target("arc_easy.acc", "arc_easy") == 0.02
    assert NoiseTargets.parse(None).target("arc_easy.acc", "arc_easy") is None
    assert items_needed(100, 0.02, 0.01) == 400 and items_needed(100, 0.01, 0.02) == 25
    for bad in ("x", "mmlu=", "-0.1", "mmlu=0"):
        with pytest.raises(ConfigError):
            NoiseTargets.parse([bad])
    with pytest.raises(ConfigError, match="no task of this job: hellaswag"):
        NoiseTargets.parse(["hellaswag=0.1", "mmlu=0.1"]).check({"mmlu", "mmlu.accuracy", "lm_loss"})
