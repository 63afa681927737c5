"""Module entrypoint for ``ray job submit -- python -m shapley_svc.runner.entrypoint SPEC.yaml``.

Validates the spec (YAML or JSON) with pydantic, runs it through the driver on the Ray cluster the job was
submitted to (``executor.kind: ray``; ``address`` is not needed inside a Ray job), writes the results to
the spec's store and prints a JSON summary on its last line. Exit code 2 on an expected failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from shapley_svc.errors import ConfigError, ShapleySvcError
from shapley_svc.runner.driver import run_job
from shapley_svc.spec import load_spec


def connect_to_cluster(address: str | None) -> None:
    """Join the Ray cluster this job was submitted to (``RAY_ADDRESS``, set by ``ray job submit``) or ``address``."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address or "auto", logging_level=logging.WARNING)
    except ConnectionError as error:
        raise ConfigError(
            f"no Ray cluster at {address or 'auto'}: submit with `ray job submit`, start one with `ray start --head`, "
            "or set executor.address"
        ) from error


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job spec given on the command line; print its JSON summary last."""
    parser = argparse.ArgumentParser(prog="python -m shapley_svc.runner.entrypoint", description=__doc__)
    parser.add_argument("spec", help="job spec file (.yaml, .yml or .json)")
    parser.add_argument("--resume", action="store_true", help="continue the latest unfinished job of this spec")
    parser.add_argument("--job-id", default=None, help="store the job under this id")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        spec = load_spec(args.spec)
        if spec.executor.kind == "ray":
            connect_to_cluster(spec.executor.address)
        outcome = run_job(spec, job_id=args.job_id, resume=args.resume, progress_bar=not args.no_progress)
    except ShapleySvcError as error:
        print(json.dumps({"status": "failed", "error": str(error)}))
        return 2
    print(json.dumps(outcome.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
