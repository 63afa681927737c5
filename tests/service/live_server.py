"""Helpers of the service tests: real servers on free loopback ports, and job specs on a tiny model.

Two kinds of live server: :func:`start_thread_server` runs uvicorn in a thread of the test process (which has
torch and transformers imported already, so jobs start at once); :func:`start_server` runs
``shapley-svc serve`` in a subprocess, which can be killed like a crashing server. Both serve under a policy
whose roots are the tiny model's folder and the shared data folder (:func:`served_policy`), given to the
subprocess through the environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.service import Client
from shapley_svc.service.app import create_app
from shapley_svc.service.policy import ServicePolicy
from shapley_svc.service.settings import POLICY_ENV_PREFIX, ServiceSettings

TOKEN = "test-token-0123456789abcdef"
READ_TOKEN = "read-only-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_AUTH = {"Authorization": f"Bearer {READ_TOKEN}"}
WIKITEXT = "wikitext2.neg_loss"
ARC = "arc_easy.p_correct"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A ``shapley-svc serve`` subprocess and where it listens."""

    process: subprocess.Popen[bytes]
    url: str
    store: Path
    log: Path

    def client(self, token: str | None = TOKEN) -> Client:
        return Client(self.url, token)

    def stop(self, *, crash: bool = False) -> None:
        """SIGTERM (graceful shutdown) or SIGKILL (a crash), then wait for the process to end."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
            self.process.wait(timeout=30)


def served_policy(checkpoint: Path, **settings: Any) -> ServicePolicy:
    """The policy of the test servers: the tiny model's folder and the shared data folder as roots, and no
    lm-eval task (checking a name against lm-eval's bundled tasks first indexes them all: seconds)."""
    defaults: dict[str, Any] = {"lm_eval_tasks": ()}
    return ServicePolicy(model_roots=(str(checkpoint),), data_roots=(str(default_data_dir()),), **(defaults | settings))


def policy_environment(policy: ServicePolicy) -> dict[str, str]:
    """``policy``'s folders as ``SHAPLEY_SVC_POLICY_*`` variables (as an operator would set them)."""
    return {
        POLICY_ENV_PREFIX + name.upper(): os.pathsep.join(getattr(policy, name))
        for name in ("model_roots", "data_roots", "task_roots")
        if getattr(policy, name)
    }


def server_environment(tmp_path: Path, token: str | None) -> dict[str, str]:
    """The environment of a server or CLI run: one torch thread, the token, an empty settings file."""
    settings = tmp_path / "empty-settings.yaml"
    settings.touch()
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "SHAPLEY_SVC_SETTINGS": str(settings),
    }
    environment.pop("SHAPLEY_SVC_TOKEN", None)
    environment.pop("SHAPLEY_SVC_URL", None)
    if token is not None:
        environment["SHAPLEY_SVC_TOKEN"] = token
    return environment


@dataclass
class ThreadServer:
    """uvicorn serving the app in a thread of the test process."""

    server: uvicorn.Server
    thread: threading.Thread
    url: str
    store: Path

    def client(self, token: str | None = TOKEN) -> Client:
        return Client(self.url, token)

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        """A GET with the write token unless ``headers`` say otherwise."""
        return httpx.get(self.url + path, headers=AUTH if headers is None else headers, timeout=30)

    def stop(self) -> None:
        """Let running jobs end (a cancelled one stops within a second), then shut down gracefully: uvicorn
        exits its loop and runs the app's shutdown. A job thread still in torch when the test process exits
        would abort it."""
        manager = self.server.config.app.state.manager
        deadline = time.monotonic() + 60
        while manager.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_until_up(url: str, alive: Callable[[], bool], describe: Callable[[], str]) -> None:
    """Poll ``url``/v1/health until it answers 200; fail with ``describe()`` if the server dies or never answers."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server stopped before answering:\n{describe()}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not answer within 90 s:\n{describe()}")


def start_thread_server(
    store: Path,
    *,
    token: str | None = TOKEN,
    max_jobs: int = 2,
    policy: ServicePolicy | None = None,
    read_token: str | None = READ_TOKEN,
) -> ThreadServer:
    """Serve the app for ``store`` under ``policy`` in a background thread on a free loopback port; without a
    token it is a development server."""
    settings = ServiceSettings(
        token=token,
        read_token=read_token if token is not None else None,
        store=str(store),
        max_concurrent_jobs=max_jobs,
        dev=token is None,
        policy=policy or ServicePolicy(),
    )
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    running = ThreadServer(server, thread, f"http://127.0.0.1:{port}", store)
    wait_until_up(running.url, thread.is_alive, lambda: "see the captured log")
    return running


def start_server(
    store: Path,
    tmp_path: Path,
    *,
    token: str | None = TOKEN,
    max_jobs: int = 2,
    policy: ServicePolicy | None = None,
) -> Server:
    """Start ``shapley-svc serve`` on a free loopback port (``policy``'s folders from the environment) and wait
    until /v1/health answers."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    command = [sys.executable, "-c", "import sys; from shapley_svc.cli import main; sys.exit(main())", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--store", str(store), "--max-jobs", str(max_jobs)]
    with log.open("wb") as output:
        environment = server_environment(tmp_path, token) | policy_environment(policy or ServicePolicy())
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
    server = Server(process, f"http://127.0.0.1:{port}", store, log)
    try:
        wait_until_up(server.url, lambda: process.poll() is None, log.read_text)
    except RuntimeError:
        server.stop(crash=True)
        raise
    return server


def job_spec(
    checkpoint: Path,
    *,
    name: str,
    granularities: tuple[str, ...] = ("block",),
    arc: bool = True,
    windows: int = 2,
    first_window: int = 0,
    plans: bool = False,
) -> dict[str, Any]:
    """A job on the tiny model: exact Shapley values of WikiText-2 loss (and ARC-Easy p_correct); with ``plans``
    the best 2 blocks to remove, checked on the 3 WikiText-2 windows after the job's."""
    data_dir = str(default_data_dir())
    tasks: list[dict[str, Any]] = [
        {
            "name": "lm_loss",
            "params": {
                "corpus": "wikitext2",
                "data_dir": data_dir,
                "window": 32,
                "windows": windows,
                "first_window": first_window,
            },
        }
    ]
    if arc:
        tasks.append({"name": "arc_easy", "params": {"data_dir": data_dir, "limit": 2, "metrics": ["p_correct"]}})
    planned: dict[str, Any] = {}
    if plans:
        held_out = tasks[0]["params"] | {"first_window": first_window + windows, "windows": 3, "windows_per_batch": 1}
        planned["plans"] = [{"remove": 2, "budget": 12, "method": "greedy"}]
        planned["held_out"] = [{"name": "lm_loss", "params": held_out}]
    return planned | {
        "name": name,
        "model": {"name": str(checkpoint), "dtype": "float32"},
        "players": {"granularities": list(granularities)},
        "tasks": tasks,
        "estimators": [{"name": "exact", "seed": 0}],
        "budget": {"evaluations": 256},
        "executor": {"kind": "local", "chunk_size": 8},
        "store": {"path": "ignored-by-the-server.sqlite"},
    }
