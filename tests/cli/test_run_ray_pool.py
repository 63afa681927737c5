"""`shapley-svc run` end to end on its default executor, a local Ray pool, against the in-process executor:
the same rankings and the same recommended plans.

Both runs are the installed ``shapley-svc`` command in a fresh process, on a tiny saved model, each with its own
store and rankings file; with the same seed the values must not depend on where they were computed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shapley_svc.ranking import RankingSet
from shapley_svc.store.sqlite import SQLiteStore

pytest.importorskip("ray")
pytestmark = pytest.mark.integration
CLI = next(
    (str(path) for path in (Path(sys.executable).with_name("shapley-svc"),) if path.is_file()),
    shutil.which("shapley-svc") or "shapley-svc",
)  # the console script beside this interpreter (a venv), else the one on PATH


def run(tiny_checkpoint: Path, folder: Path, *options: str) -> dict[str, Any]:
    """``shapley-svc run`` with the defaults but for the model, corpus, size and budget; its JSON summary."""
    folder.mkdir()
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(
        [CLI, "run", "--model", str(tiny_checkpoint), "--corpus", "lambada", "--windows", "2", "--window", "32",
         "--budget", "16", "--no-progress", *options],
        capture_output=True, text=True, timeout=420, cwd=folder, env=os.environ | threads,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "+-stderr" in done.stdout, "the ranking table is printed"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_run_on_its_default_local_ray_pool_gives_the_in_process_values(tiny_checkpoint: Path, tmp_path: Path) -> None:
    on_ray = run(tiny_checkpoint, tmp_path / "ray")
    in_process = run(tiny_checkpoint, tmp_path / "local", "--executor", "local")

    with SQLiteStore(tmp_path / "ray" / "runs" / "shapley-svc.sqlite") as store:
        executor = store.get_job(on_ray["job_id"]).spec["executor"]
    assert executor["kind"] == "ray" and executor["address"] is None  # a private local Ray, not a cluster
    assert executor["num_workers"] == min(4, os.cpu_count() or 1)
    assert [run["evaluated"] for run in on_ray["runs"]] == [run["evaluated"] for run in in_process["runs"]]
    assert on_ray["runs"][0]["evaluated"] > 0, "the Shapley run evaluates on the pool (leave-one-out may all be cached)"
    assert [plan["name"] for plan in on_ray["plans"]] == ["block-block-2"]  # the default plans below 4 players
    for ray_plan, local_plan in zip(on_ray["plans"], in_process["plans"], strict=True):
        assert ray_plan["removed"] == local_plan["removed"]
        assert ray_plan["evaluations_used"] == local_plan["evaluations_used"]
        np.testing.assert_allclose(ray_plan["value"], local_plan["value"], rtol=1e-6)
        ray_check, local_check = ray_plan["held_out"][0], local_plan["held_out"][0]
        np.testing.assert_allclose(ray_check["difference"], local_check["difference"], rtol=1e-5, atol=1e-9)

    rankings = {
        where: RankingSet.load(Path(summary["rankings"]) if Path(summary["rankings"]).is_absolute()
                               else tmp_path / where / summary["rankings"])
        for where, summary in (("ray", on_ray), ("local", in_process))
    }  # fmt: skip
    methods = [ranking.method for ranking in rankings["local"].rankings]
    assert methods == [ranking.method for ranking in rankings["ray"].rankings] and methods[0].startswith("shapley:")
    for method in methods:
        expected, got = rankings["local"].find(method), rankings["ray"].find(method)
        assert got.players == expected.players == tuple(f"layer{i}.block" for i in range(4))
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6, atol=1e-9, err_msg=method)
        if expected.stderr is not None:
            np.testing.assert_allclose(got.stderr, expected.stderr, rtol=1e-6, atol=1e-9, err_msg=method)
