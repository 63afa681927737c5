"""`ray start --head` + `ray job submit -- python -m shapley_svc.runner.entrypoint spec.yaml`, result read back."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.model.loading import tiny_model
from shapley_svc.spec import dump_spec, parse_spec
from shapley_svc.store import JobStatus, SQLiteStore

pytest.importorskip("ray")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not hasattr(__import__("shapley_svc.estimators", fromlist=["_"]), "make_estimator"),
        reason="the entrypoint builds estimators by name: needs the estimators registry (make_estimator)",
    ),
]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """A local Ray head (2 CPUs, its own temp dir, free ports); its dashboard address; stopped at the end."""
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    command = [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp_dir}"]
    command += ["--include-dashboard=true", f"--dashboard-port={dashboard}", "--disable-usage-stats"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def test_ray_job_submit_runs_a_spec_and_writes_the_store(head: str, tmp_path: Path) -> None:
    loaded = tiny_model("llama", num_layers=4, seed=0)
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    task = {"corpus": "wikitext2", "data_dir": str(default_data_dir()), "window": 32, "windows": 2}
    spec = parse_spec(
        {
            "model": {"name": str(tmp_path / "model"), "dtype": "float32"},
            "tasks": [{"name": "lm_loss", "params": task}],
            "estimators": [{"name": "exact"}],
            "budget": {"evaluations": 16},
            "executor": {"kind": "ray", "num_workers": 2, "chunk_size": 4},
            "store": {"path": str(tmp_path / "results.sqlite")},
        }
    )
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    dump_spec(spec, job_dir / "spec.yaml")
    submitted = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            f"--address={head}",
            f"--working-dir={job_dir}",
            "--",
            sys.executable,
            "-m",
            "shapley_svc.runner.entrypoint",
            "spec.yaml",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    summary = json.loads([line for line in submitted.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["status"] == "succeeded"
    with SQLiteStore(spec.store.path) as store:
        assert store.get_job(summary["job_id"]).status is JobStatus.SUCCEEDED
        (result,) = store.get_results(summary["job_id"])
    assert json.loads(result.result_json)["evaluations_used"] == 16
