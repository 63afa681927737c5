"""`shapley-svc job SPEC.yaml [--dry-run] [--resume]`: run a job spec locally or on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from shapley_svc.runner.cost import estimate_cost
from shapley_svc.runner.driver import run_job
from shapley_svc.spec import REUSE_ACROSS_SETUPS_HELP, load_spec


def register(subparsers: Any) -> None:
    """Add the ``job`` subcommand."""
    parser = subparsers.add_parser("job", help="run a job spec (YAML/JSON) in process or on Ray")
    parser.add_argument("spec", help="job spec file (.yaml, .yml or .json)")
    parser.add_argument("--dry-run", action="store_true", help="time one worker and print the job's expected cost")
    parser.add_argument("--resume", action="store_true", help="continue the latest unfinished job of this spec")
    parser.add_argument("--job-id", default=None, help="store the job under this id")
    parser.add_argument("--reuse-across-setups", action="store_true", help=REUSE_ACROSS_SETUPS_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate the spec, then estimate its cost (``--dry-run``) or run it; print JSON on the last line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    spec = load_spec(args.spec)
    if args.reuse_across_setups:
        spec = spec.model_copy(update={"store": spec.store.model_copy(update={"reuse_across_setups": True})})
    if args.dry_run:
        cost = estimate_cost(spec)
        for key, seconds in cost.seconds_per_evaluation.items():
            print(f"{key}: {seconds * 1000:.1f} ms per evaluation x {cost.evaluations[key]} evaluations")
        print(
            f"expected wall time on {cost.workers} worker(s): {cost.wall_seconds / 60:.1f} min; "
            f"GPU-hours: {cost.gpu_hours:.2f}"
        )
        print(json.dumps(cost.as_dict()))
        return 0
    outcome = run_job(spec, job_id=args.job_id, resume=args.resume, progress_bar=not args.no_progress)
    print(json.dumps(outcome.summary()))
    return 0
