"""`ray start --head` + `ray job submit -- python -m shapley_svc.runner.entrypoint spec.yaml`, result read back.

The head runs in the foreground (``--block``) with its own temp dir, free ports and authentication token
(given to the head and to ``ray job submit`` alike, as on a secured cluster), and is stopped by signalling
that one process: ``ray stop`` would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.model.loading import tiny_model
from shapley_svc.spec import dump_spec, parse_spec
from shapley_svc.store import JobStatus, SQLiteStore

pytest.importorskip("ray")
pytestmark = pytest.mark.integration
RAY = next(
    (str(path) for path in (Path(sys.executable).with_name("ray"),) if path.is_file()), shutil.which("ray") or "ray"
)  # the ray CLI beside this interpreter (a venv), else the one on PATH
PORT_OPTIONS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "node-manager-port",
    "object-manager-port",
)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free right now (bound together, so none repeats)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def wait_until_serving(url: str, head: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:  # it answers (401: no token given here): the dashboard is up
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited with {head.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray dashboard did not answer at {url} within {seconds:.0f} s") from None
            time.sleep(0.5)


@pytest.fixture(scope="module")
def ray_env() -> dict[str, str]:
    """The environment of the head and of the job client: one torch thread, token authentication."""
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return os.environ | threads | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def head(ray_env: dict[str, str]) -> Iterator[str]:
    """A Ray head of our own (2 CPUs, its own temp dir and ports); its dashboard address; stopped at the end."""
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    command = [RAY, "start", "--head", "--block", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    command += ["--include-dashboard=true", *(f"--{option}={port}" for option, port in ports.items())]
    log = open(Path(temp_dir) / "head.log", "wb")  # noqa: SIM115 - closed after the head stops
    started = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ray_env, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        wait_until_serving(f"{address}/api/version", started, seconds=180)
        yield address
    finally:
        started.send_signal(signal.SIGTERM)  # ray start --block stops its own processes on SIGTERM
        try:
            started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(started.pid, signal.SIGKILL)  # the session this fixture started, nothing else
            started.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_spec_and_writes_the_store(head: str, ray_env: dict[str, str], tmp_path: Path) -> None:
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
            "executor": {"kind": "ray", "num_workers": 1, "chunk_size": 4},
            "store": {"path": str(tmp_path / "results.sqlite")},
        }
    )
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    dump_spec(spec, job_dir / "spec.yaml")
    entrypoint = [sys.executable, "-m", "shapley_svc.runner.entrypoint", "spec.yaml", "--no-progress"]
    submitted = subprocess.run(
        [RAY, "job", "submit", f"--address={head}", f"--working-dir={job_dir}", "--", *entrypoint],
        capture_output=True,
        text=True,
        timeout=300,
        env=ray_env,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    summary = json.loads([line for line in submitted.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["status"] == "succeeded" and summary["runs"][0]["evaluated"] == 16
    with SQLiteStore(spec.store.path) as store:
        assert store.get_job(summary["job_id"]).status is JobStatus.SUCCEEDED
        (result,) = store.get_results(summary["job_id"])
    stored = json.loads(result.result_json)
    assert stored["evaluations_used"] == 16 and stored["task_names"] == ["wikitext2.neg_loss"]
    assert len(stored["values"][0]) == 4
