"""`ray start --head` + `ray job submit -- python -m shapley_svc.runner.entrypoint spec.yaml`, result read back.

The head runs in the foreground (``--block``) with its own temp dir, free ports and authentication token
(given to the head and to ``ray job submit`` alike, as on a secured cluster), and is stopped by signalling
that one process: ``ray stop`` would stop every Ray on the machine.

The cluster tests submit the CPU twin of ``cluster/gpu-job.yaml`` (same players, tasks, estimators; a tiny
model, local data, a small budget) with the runtime environments the manifests use: ``cluster/runtime_env.yaml``
(a directory ``working_dir``) and the KubeRay RayJob's (a zip ``working_dir``, its ``pip`` list left to the
image). Neither installs anything on this head: its environment already has the dependencies, and a ``pip``
field would clone this whole virtual environment, torch included, for the job.
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
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.model.loading import tiny_model
from shapley_svc.planning.plan import RemovalPlan
from shapley_svc.runner.driver import run_job
from shapley_svc.spec import JobSpec, dump_spec, load_spec, parse_spec
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
REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
CONFIGMAP_LIMIT_BYTES = 1024 * 1024  # a Kubernetes ConfigMap holds at most 1 MiB


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


@dataclass(frozen=True)
class Head:
    """A running head: its dashboard (job API) address and its temp dir (session logs, runtime resources)."""

    address: str
    temp_dir: Path


@pytest.fixture(scope="module")
def head(ray_env: dict[str, str]) -> Iterator[Head]:
    """A Ray head of our own (2 CPUs, its own temp dir and ports); stopped at the end."""
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    command = [RAY, "start", "--head", "--block", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    command += ["--include-dashboard=true", *(f"--{option}={port}" for option, port in ports.items())]
    log = open(Path(temp_dir) / "head.log", "wb")  # noqa: SIM115 - closed after the head stops
    started = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ray_env, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        wait_until_serving(f"{address}/api/version", started, seconds=180)
        yield Head(address, Path(temp_dir))
    finally:
        started.send_signal(signal.SIGTERM)  # ray start --block stops its own processes on SIGTERM
        try:
            started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(started.pid, signal.SIGKILL)  # the session this fixture started, nothing else
            started.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_spec_and_writes_the_store(head: Head, ray_env: dict[str, str], tmp_path: Path) -> None:
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
        [RAY, "job", "submit", f"--address={head.address}", f"--working-dir={job_dir}", "--", *entrypoint],
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


def cpu_twin(gpu: JobSpec, model_dir: Path, store: Path) -> JobSpec:
    """``gpu`` with only what a GPU cluster has swapped out: a tiny model on CPU actors, local data, a small budget.

    Players, task names, estimators (with their seeds), stopping rules and plans (their sizes and budgets cut to
    the tiny model) stay as the GPU spec has them.
    """
    data_dir = str(default_data_dir())
    local_data = {
        "mmlu": {"source": "local", "data_dir": data_dir, "subjects": ["marketing"], "per_subject": 2},
        "lm_loss": {"data_dir": data_dir, "windows": 2, "window": 32},
    }
    raw = gpu.model_dump(mode="json")
    for task in raw["tasks"]:
        if task["name"] not in local_data:
            raise AssertionError(f"cluster/gpu-job.yaml has a task {task['name']!r} its CPU twin has no data for")
        task["params"] |= local_data[task["name"]]
    for task in raw["held_out"]:
        task["params"] |= local_data[task["name"]] | {"first_window": 2, "windows": 2}
    for plan in raw["plans"]:  # the tiny model has 4 blocks and 8 sublayers
        plan["budget"] = min(plan["budget"], 24)
        if plan["remove"] is not None:
            plan["remove"] = min(plan["remove"], 2)
    raw["model"] = {"name": str(model_dir), "dtype": "float32", "device": "cpu"}
    raw["executor"] |= {"num_workers": 2, "num_gpus_per_worker": 0, "num_cpus_per_worker": 1, "threads_per_worker": 1}
    raw["executor"]["chunk_size"] = 8
    raw["budget"]["evaluations"] = 24
    raw["store"]["path"] = str(store)
    return parse_spec(raw, source="the CPU twin of cluster/gpu-job.yaml")


def submit(head: Head, ray_env: dict[str, str], runtime_env: Path, command: str, cwd: Path) -> str:
    """``ray job submit --runtime-env FILE -- bash -c COMMAND`` from ``cwd``; its output (it must succeed).

    ``bash -c``: ``ray job submit`` quotes each word after ``--``, so a shell ``&&`` has to be inside one.
    """
    submitted = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            f"--address={head.address}",
            f"--runtime-env={runtime_env}",
            "--",
            "bash",
            "-c",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=420,
        env=ray_env,
        cwd=cwd,
    )
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-3000:]
    return submitted.stdout


def stored_values(path: Path, job_id: str) -> dict[tuple[str, str, str], np.ndarray]:
    """Every result of ``job_id`` in the store at ``path``: (granularity, estimator, task) -> values."""
    with SQLiteStore(path) as store:
        assert store.get_job(job_id).status is JobStatus.SUCCEEDED
        records = store.get_results(job_id)
    return {
        (record.granularity, record.estimator, record.task): np.asarray(json.loads(record.result_json)["values"])
        for record in records
    }


def runtime_resources(head: Head) -> set[str]:
    """What Ray's runtime-env agent holds on this head (working_dir_files, pip, ...): its non-empty folders."""
    folder = head.temp_dir / "session_latest" / "runtime_resources"
    return {entry.name for entry in folder.iterdir() if entry.is_dir() and any(entry.iterdir())}


def test_the_gpu_specs_cpu_twin_runs_with_the_shipped_runtime_env_as_in_process(
    head: Head, ray_env: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    runtime_env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert not {"pip", "conda", "uv"} & set(runtime_env), "the manifests' runtime env must not install packages"
    gpu = load_spec(CLUSTER / "gpu-job.yaml")
    twin = cpu_twin(gpu, tiny_checkpoint, tmp_path / "cluster.sqlite")
    assert [task.name for task in twin.tasks] == [task.name for task in gpu.tasks] == ["mmlu", "lm_loss"]
    dump_spec(twin, tmp_path / "twin.yaml")

    # submitted from the repository root as cluster/README.md says: working_dir "." is this checkout
    probe = "import shapley_svc; print('IMPORTED', shapley_svc.__file__)"
    command = f'{sys.executable} -c "{probe}" && {sys.executable} -m shapley_svc.runner.entrypoint'
    command += f" {tmp_path / 'twin.yaml'} --no-progress"
    output = submit(head, ray_env, CLUSTER / "runtime_env.yaml", command, REPO)
    imported = next(line for line in output.splitlines() if line.startswith("IMPORTED"))
    assert "working_dir_files" in imported, f"the job imported an installed copy, not the shipped one: {imported}"
    assert runtime_resources(head) == {"working_dir_files"}, "the job installed something on the head"
    summary = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    assert summary["status"] == "succeeded", summary
    on_ray = stored_values(twin.store.path, summary["job_id"])

    in_process = twin.model_copy(
        update={
            "executor": twin.executor.model_copy(update={"kind": "local"}),
            "store": twin.store.model_copy(update={"path": str(tmp_path / "local.sqlite")}),
        }
    )
    local = run_job(in_process, progress_bar=False)
    expected = stored_values(Path(in_process.store.path), local.job_id)
    assert set(on_ray) == set(expected) and len(expected) == 2 * 2  # (block, sublayer) x (mmlu, lm_loss)
    for key, values in expected.items():
        np.testing.assert_allclose(on_ray[key], values, rtol=1e-6, atol=1e-9, err_msg=str(key))
    with SQLiteStore(twin.store.path) as store:
        ray_plans = {
            record.name: RemovalPlan.from_json(record.plan_json) for record in store.get_plans(summary["job_id"])
        }
    assert sorted(ray_plans) == sorted(done.name for done in local.plans) == ["block-block-2", "sublayer-attn-most"]
    for done in local.plans:
        on_pool = ray_plans[done.name]
        assert on_pool.removed == done.plan.removed and on_pool.evaluations_used == done.plan.evaluations_used
        np.testing.assert_allclose(on_pool.value, done.plan.value, rtol=1e-6, atol=1e-9)
        assert on_pool.held_out[0].items == 2


def source_zip(path: Path) -> Path:
    """What cluster/README.md puts in the KubeRay ConfigMap (`git archive` of shapley_svc/ and cluster/)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in ("shapley_svc", "cluster"):
            for file in sorted((REPO / folder).rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    archive.write(file, file.relative_to(REPO).as_posix())
    return path


def test_the_rayjobs_zipped_working_dir_ships_the_package_and_the_specs(
    head: Head, ray_env: dict[str, str], tmp_path: Path
) -> None:
    manifest = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    runtime_env: dict[str, Any] = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
    packed = source_zip(tmp_path / "shapley-svc.zip")
    assert packed.stat().st_size < CONFIGMAP_LIMIT_BYTES / 2, "the source no longer fits a ConfigMap comfortably"
    runtime_env.pop("pip")  # the head's environment has these already; pip would clone it, torch included
    runtime_env["working_dir"] = str(packed)
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))
    entrypoint = manifest["spec"]["entrypoint"]
    files = [word.strip('"') for word in entrypoint.split() if word.strip('"').endswith((".py", ".yaml"))]
    assert files == ["cluster/fetch_data.py", "cluster/gpu-job.yaml"], entrypoint
    probe = "import os, shapley_svc.runner.entrypoint as e; print('IMPORTED', e.__file__); print(sorted(os.listdir()))"
    checks = " && ".join(f"test -f {file}" for file in files)
    command = f'{checks} && {sys.executable} -c "{probe}"'
    output = submit(head, ray_env, tmp_path / "runtime_env.yaml", command, tmp_path)
    assert "working_dir_files" in next(line for line in output.splitlines() if line.startswith("IMPORTED"))
    assert "'cluster', 'shapley_svc'" in output
