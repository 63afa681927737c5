"""`shapley-svc job SPEC --dry-run`: one worker timed in process, scaled to the spec's budget and workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shapley_svc.cli import main
from shapley_svc.data.corpus import default_data_dir
from shapley_svc.model.loading import tiny_model
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
