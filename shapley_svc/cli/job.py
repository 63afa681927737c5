"""`shapley-svc job SPEC.yaml [--dry-run [--noise X] [--noise TASK=X]] [--resume]`: run a job spec locally or on a
Ray cluster, or estimate its cost and, per task, the items a noise level needs."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from shapley_svc.errors import ConfigError
from shapley_svc.runner.cost import NoiseTargets, estimate_cost, format_cost
from shapley_svc.runner.driver import run_job
from shapley_svc.spec import REUSE_ACROSS_SETUPS_HELP, load_spec


def register(subparsers: Any) -> None:
    """Add the ``job`` subcommand."""
    parser = subparsers.add_parser("job", help="run a job spec (YAML/JSON) in process or on Ray")
    parser.add_argument("spec", help="job spec file (.yaml, .yml or .json)")
    parser.add_argument("--dry-run", action="store_true", help="time one worker and print the job's expected cost")
    add_noise_option(parser)
    parser.add_argument("--resume", action="store_true", help="continue the latest unfinished job of this spec")
    parser.add_argument("--job-id", default=None, help="store the job under this id")
    parser.add_argument("--reuse-across-setups", action="store_true", help=REUSE_ACROSS_SETUPS_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


NOISE_HELP = (
    "with --dry-run: the target standard error of each task value, in the task's units (X for every task, "
    "TASK=X for one task or column; repeat); the dry run shows the items each task needs and what they cost"
)


def add_noise_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--noise X`` / ``--noise TASK=X`` (repeatable) for dry runs."""
    parser.add_argument("--noise", action="append", default=None, metavar="[TASK=]X", help=NOISE_HELP)


def print_cost(spec: Any, args: argparse.Namespace) -> int:
    """Estimate the spec's cost (nothing evaluated into the store), print the tables and the JSON last."""
    noise = NoiseTargets.parse(args.noise)
    cost = estimate_cost(spec, noise=noise, progress_bar=not args.no_progress)
    print(format_cost(cost))
    print(json.dumps(cost.as_dict()))
    return 0


def run(args: argparse.Namespace) -> int:
    """Validate the spec, then estimate its cost (``--dry-run``) or run it; print JSON on the last line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    spec = load_spec(args.spec)
    if args.reuse_across_setups:
        spec = spec.model_copy(update={"store": spec.store.model_copy(update={"reuse_across_setups": True})})
    if args.dry_run:
        return print_cost(spec, args)
    if args.noise:
        raise ConfigError("--noise sets the target of a dry run: add --dry-run")
    outcome = run_job(spec, job_id=args.job_id, resume=args.resume, progress_bar=not args.no_progress)
    print(json.dumps(outcome.summary()))
    return 0
