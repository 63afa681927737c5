"""`shapley-svc job` wall time of this checkout against another revision, side by side on the same spec.

Each repeat runs the spec once with each version, in alternating order, each from the same cache state
(``--cache cold``: an empty store; ``warm``: a store that already holds every value of the spec, computed by
that version beforehand), in a fresh process. The baseline runs from a ``git worktree`` of ``--baseline`` on
this interpreter and its installed packages. Prints the median wall seconds of each and their ratio, JSON on
the last line (``current_over_baseline`` <= 1: the current version is no slower).

    python benchmarks/job_wall_time.py --baseline b82f18a --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("benchmarks.job_wall_time")


def spec_with_store(spec: Path, store: Path, folder: Path) -> Path:
    """A copy of ``spec`` whose results store is ``store`` (nothing else changes, so both versions read it)."""
    data = yaml.safe_load(spec.read_text(encoding="utf-8"))
    data["store"] = {"path": str(store)}
    copy = folder / f"{store.stem}.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return copy


def run_job(source: Path, spec: Path) -> float:
    """Wall seconds of ``shapley-svc job spec`` with the package imported from ``source``."""
    env = os.environ | {"PYTHONPATH": str(source)}
    command = [sys.executable, "-c", "from shapley_svc.cli import main; main()", "job", str(spec), "--no-progress"]
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, cwd=source, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"job failed from {source}:\n{completed.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--spec", type=Path, default=ROOT / "cluster" / "example-job.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", choices=("cold", "warm"), default="cold")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folder = Path(tempfile.mkdtemp(prefix="job-wall-time-"))
    baseline = folder / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline], check=True)
    sources = {"baseline": baseline, "current": ROOT}
    seconds: dict[str, list[float]] = {name: [] for name in sources}
    try:
        warm = {name: folder / f"{name}-warm.sqlite" for name in sources}
        if args.cache == "warm":
            for name, source in sources.items():
                run_job(source, spec_with_store(args.spec, warm[name], folder))
        for repeat in range(args.repeats):
            order = list(sources) if repeat % 2 == 0 else list(reversed(sources))
            for name in order:
                store = folder / f"{name}-{repeat}.sqlite"
                if args.cache == "warm":
                    shutil.copy(warm[name], store)
                seconds[name].append(run_job(sources[name], spec_with_store(args.spec, store, folder)))
                logger.info("repeat %d %s: %.1f s", repeat, name, seconds[name][-1])
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)
        shutil.rmtree(folder, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    summary: dict[str, object] = {
        "spec": str(args.spec.relative_to(ROOT) if args.spec.is_relative_to(ROOT) else args.spec),
        "baseline": args.baseline,
        "cache": args.cache,
        "repeats": args.repeats,
        "seconds": {name: [round(value, 2) for value in values] for name, values in seconds.items()},
        "median_seconds": {name: round(value, 2) for name, value in medians.items()},
        "current_over_baseline": round(medians["current"] / medians["baseline"], 3),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
