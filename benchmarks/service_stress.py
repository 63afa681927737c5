"""Stress of the HTTP service on loopback: many submissions from concurrent clients, valid and malformed mixed.

A tiny random Llama (4 layers) is saved to a temporary folder, which is the server's only model root; the
shared data folder is its data root. First each valid variant runs alone on a fresh server (one job at a
time): those are the reference values. Then a second fresh server takes ``--submissions`` requests from
``--clients`` threads: valid jobs (four variants, exact block Shapley values of WikiText-2 loss, one with
ARC-Easy too) and malformed ones of ten kinds (bad JSON, schema errors, policy refusals such as a split
escaping the data folder or a task YAML path, no token, the read-only token, an oversized body). A 429
(the token's job quota) is retried after a short pause and counted.

Checks (each a line of the summary, all must hold): no 5xx; every malformed request got its expected
status (and policy rule); every accepted job is listed once and ends ``succeeded`` with the reference values
of its variant, exactly; nothing ran past ``--timeout``. JSON on the last line; exit status 1 if a check fails.

    python benchmarks/service_stress.py                          # 200 submissions, 8 clients
    python benchmarks/service_stress.py --submissions 40 --clients 4 --timeout 180
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.model.loading import tiny_model
from shapley_svc.service.app import create_app
from shapley_svc.service.policy import ServicePolicy
from shapley_svc.service.settings import ServiceSettings

TOKEN = "stress-write-token-0123456789"
READ_TOKEN = "stress-read-token-0123456789"
VALID_SHARE = 0.4
QUOTA_PAUSE_SECONDS = 0.2


def valid_spec(checkpoint: Path, variant: int) -> dict[str, Any]:
    """Variant 0-3 of a tiny job: exact block values of WikiText-2 loss at window ``variant`` (3: and ARC)."""
    data = str(default_data_dir())
    lm_loss = {"window": 32, "windows": 1, "first_window": variant, "data_dir": data}
    tasks: list[dict[str, Any]] = [{"name": "lm_loss", "params": lm_loss}]
    if variant == 3:
        tasks.append({"name": "arc_easy", "params": {"data_dir": data, "limit": 2, "metrics": ["p_correct"]}})
    return {
        "name": f"variant {variant}",
        "model": {"name": str(checkpoint), "dtype": "float32"},
        "tasks": tasks,
        "estimators": [{"name": "exact", "seed": 0}],
        "budget": {"evaluations": 16},
        "executor": {"kind": "local", "chunk_size": 8},
    }


@dataclass(frozen=True)
class Submission:
    """One request: what kind, its body and headers, the status expected (None: a valid job, 201)."""

    kind: str
    body: bytes
    headers: dict[str, str]
    expected: int | None = None
    rule: str | None = None
    variant: int | None = None


def malformed(checkpoint: Path, kind: str) -> Submission:
    """A request of malformed ``kind`` and the status (and policy rule) it must get."""
    write = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    good = valid_spec(checkpoint, 0)
    escape = "../" * 12 + "etc/passwd"
    bodies: dict[str, tuple[Any, int, str | None, dict[str, str]]] = {
        "bad json": (b"{not json", 422, None, write),
        "schema": (good | {"budget": {"evaluations": 0}, "colour": "blue"}, 422, None, write),
        "split escape": (
            good | {"tasks": [{"name": "arc_easy", "params": {"split": escape}}]},
            422,
            "known_names",
            write,
        ),
        "task yaml path": (good | {"tasks": [{"name": "lm_eval:/tmp/x/task.yaml"}]}, 422, "task_roots", write),
        "model outside": (good | {"model": {"name": "/etc"}}, 422, "model_roots", write),
        "workers": (good | {"executor": {"kind": "local", "num_workers": 100_000}}, 422, "max_workers", write),
        "zero cpus": (good | {"executor": {"kind": "local", "num_cpus_per_worker": 0}}, 422, "cpus_above_zero", write),
        "no token": (good, 401, None, {"Content-Type": "application/json"}),
        "read-only token": (good, 403, None, write | {"Authorization": f"Bearer {READ_TOKEN}"}),
        "oversized": (good | {"name": "x" * 1_100_000}, 413, None, write),
    }
    body, status, rule, headers = bodies[kind]
    encoded = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Submission(kind, encoded, headers, status, rule)


MALFORMED_KINDS = (
    "bad json",
    "schema",
    "split escape",
    "task yaml path",
    "model outside",
    "workers",
    "zero cpus",
    "no token",
    "read-only token",
    "oversized",
)


def plan_submissions(checkpoint: Path, count: int, seed: int) -> list[Submission]:
    """``count`` requests, a seeded mix: about VALID_SHARE valid (variants in turn), the rest malformed."""
    rng = random.Random(seed)
    variants, kinds = itertools.cycle(range(4)), itertools.cycle(MALFORMED_KINDS)
    write = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    planned = []
    for _ in range(count):
        if rng.random() < VALID_SHARE:
            variant = next(variants)
            body = json.dumps(valid_spec(checkpoint, variant)).encode()
            planned.append(Submission("valid", body, write, variant=variant))
        else:
            planned.append(malformed(checkpoint, next(kinds)))
    return planned


@dataclass
class LoopbackServer:
    """The app served by uvicorn in a thread of this process, on a free loopback port."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @classmethod
    def start(cls, store: Path, policy: ServicePolicy, max_jobs: int = 2) -> LoopbackServer:
        settings = ServiceSettings(
            token=TOKEN, read_token=READ_TOKEN, store=str(store), max_concurrent_jobs=max_jobs, policy=policy
        )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        running = cls(f"http://127.0.0.1:{port}", server, thread)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{running.url}/v1/health", timeout=2).status_code == 200:
                    return running
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the server did not answer within 60 s")

    def stop(self) -> None:
        manager = self.server.config.app.state.manager
        deadline = time.monotonic() + 60
        while manager.running() and time.monotonic() < deadline:  # a job thread in torch at exit aborts
            time.sleep(0.05)
        self.server.should_exit = True
        self.thread.join(timeout=30)


def values_of(client: httpx.Client, job_id: str) -> dict[tuple[str, str], list[float | None]]:
    """Every stored result of a job: (granularity, task) -> values then stderr."""
    results = client.get(f"/v1/jobs/{job_id}/results").raise_for_status().json()["results"]
    return {(entry["granularity"], entry["task"]): entry["values"] + entry["stderr"] for entry in results}


def wait_finished(client: httpx.Client, job_ids: set[str], deadline: float) -> dict[str, str]:
    """Poll the job list until every job of ``job_ids`` has finished (or ``deadline``); id -> status."""
    statuses: dict[str, str] = {}
    while True:
        listed = client.get("/v1/jobs", params={"limit": 1000}).raise_for_status().json()["jobs"]
        statuses = {job["id"]: job["status"] for job in listed}
        pending = [job for job in job_ids if statuses.get(job) in ("queued", "running")]
        if not pending or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)


def references(checkpoint: Path, policy: ServicePolicy, folder: Path, deadline: float) -> dict[int, Any]:
    """The values of each valid variant run alone: a fresh server, one job at a time."""
    server = LoopbackServer.start(folder / "alone.sqlite", policy, max_jobs=1)
    found = {}
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            for variant in range(4):
                job = client.post("/v1/jobs", json=valid_spec(checkpoint, variant)).raise_for_status().json()
                status = wait_finished(client, {job["id"]}, deadline)[job["id"]]
                if status != "succeeded":
                    raise RuntimeError(f"variant {variant} run alone ended {status}")
                found[variant] = values_of(client, job["id"])
    finally:
        server.stop()
    return found


@dataclass
class Times:
    """Monotonic clock readings: start, submissions begin, submissions end, every job finished."""

    started: float
    submitting: float = 0.0
    submitted: float = 0.0
    finished: float = 0.0


@dataclass
class Outcome:
    """What the clients saw, shared by their threads (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: dict[str, int] = field(default_factory=dict)  # job id -> variant
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    throttled: int = 0
    latencies: list[float] = field(default_factory=list)


def send(client: httpx.Client, submission: Submission, outcome: Outcome, deadline: float) -> None:
    """POST one submission (retrying a 429 until ``deadline``) and record what came back."""
    while True:
        started = time.perf_counter()
        response = client.post("/v1/jobs", content=submission.body, headers=submission.headers)
        with outcome.lock:
            outcome.latencies.append(time.perf_counter() - started)
            outcome.statuses[response.status_code] += 1
        if response.status_code == 429 and submission.expected is None and time.monotonic() < deadline:
            with outcome.lock:
                outcome.throttled += 1
            time.sleep(QUOTA_PAUSE_SECONDS)
            continue
        break
    with outcome.lock:
        if submission.expected is None and response.status_code == 201:
            outcome.accepted[response.json()["id"]] = int(submission.variant or 0)
        elif response.status_code != (submission.expected or 201) or not _has_rule(response, submission.rule):
            outcome.unexpected.append(f"{submission.kind}: {response.status_code} {response.text[:200]}")


def _has_rule(response: httpx.Response, rule: str | None) -> bool:
    if rule is None:
        return True
    detail = response.json().get("detail")
    return isinstance(detail, list) and any(item.get("type") == f"policy.{rule}" for item in detail)


def submit_all(url: str, planned: list[Submission], clients: int, deadline: float) -> Outcome:
    """Send ``planned`` from ``clients`` threads, each taking the next submission in turn."""
    outcome, queue = Outcome(), iter(planned)
    queue_lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while time.monotonic() < deadline:
                with queue_lock:
                    submission = next(queue, None)
                if submission is None:
                    return
                send(client, submission, outcome, deadline)

    threads = [threading.Thread(target=client_loop, name=f"client-{index}") for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


def run_stress(
    submissions: int = 200,
    clients: int = 8,
    timeout: float = 600,
    *,
    checkpoint: Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The stress run and its summary (see the module docstring); ``checkpoint``: a saved tiny model."""
    times = Times(time.monotonic())
    deadline = times.started + timeout
    with tempfile.TemporaryDirectory(prefix="service-stress-") as scratch:
        folder = Path(scratch)
        if checkpoint is None:
            checkpoint = folder / "tiny-llama"
            tiny = tiny_model("llama", num_layers=4, seed=0)
            tiny.model.save_pretrained(checkpoint)
            tiny.tokenizer.save_pretrained(checkpoint)
        policy = ServicePolicy(
            model_roots=(str(checkpoint),),
            data_roots=(str(default_data_dir()),),
            lm_eval_tasks=(),
            max_jobs_per_token=16,
        )
        reference = references(checkpoint, policy, folder, deadline)
        log(f"references of {len(reference)} variants in {time.monotonic() - times.started:.1f} s")
        planned = plan_submissions(checkpoint, submissions, seed)
        server = LoopbackServer.start(folder / "stress.sqlite", policy)
        try:
            times.submitting = time.monotonic()
            outcome = submit_all(server.url, planned, clients, deadline)
            times.submitted = time.monotonic()
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
                final = wait_finished(client, set(outcome.accepted), deadline)
                mismatched = [
                    job for job, variant in outcome.accepted.items()
                    if final.get(job) == "succeeded" and values_of(client, job) != reference[variant]
                ]  # fmt: skip
        finally:
            server.stop()
        times.finished = time.monotonic()
    summary = summarise(planned, outcome, final, mismatched, times, timeout)
    return {"clients": clients, **summary}


def summarise(
    planned: list[Submission],
    outcome: Outcome,
    final: dict[str, str],
    mismatched: list[str],
    times: Times,
    timeout: float,
) -> dict[str, Any]:
    """The summary: counts, timings and each check."""
    valid = sum(submission.expected is None for submission in planned)
    server_errors = sum(count for status, count in outcome.statuses.items() if status >= 500)
    lost = sorted(set(outcome.accepted) - set(final)) + sorted(
        j for j in outcome.accepted if final.get(j) != "succeeded"
    )
    latencies = sorted(outcome.latencies)
    checks = {
        "no_5xx": server_errors == 0,
        "every_malformed_got_its_status": not outcome.unexpected,
        "every_valid_accepted": len(outcome.accepted) == valid,
        "nothing_lost_every_job_succeeded": not lost and set(final) == set(outcome.accepted),
        "same_values_as_alone": not mismatched,
        "within_timeout": times.finished - times.started <= timeout,
    }
    return {
        "submissions": len(planned),
        "valid": valid,
        "malformed": len(planned) - valid,
        "accepted": len(outcome.accepted),
        "statuses": {str(status): count for status, count in sorted(outcome.statuses.items())},
        "throttled_429_retries": outcome.throttled,
        "unexpected": outcome.unexpected[:10],
        "lost_or_failed": lost[:10],
        "mismatched": mismatched[:10],
        "submit_seconds": round(times.submitted - times.submitting, 2),
        "drain_seconds": round(times.finished - times.submitted, 2),
        "total_seconds": round(times.finished - times.started, 2),
        "post_latency_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "post_latency_p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
        "jobs_per_second": round(len(outcome.accepted) / max(times.finished - times.submitting, 1e-9), 2),
        "checks": checks,
        "ok": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run (default 600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    summary = run_stress(args.submissions, args.clients, args.timeout, seed=args.seed)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    raise SystemExit(0 if main()["ok"] else 1)
