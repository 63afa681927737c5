"""`shapley-svc submit SPEC [--wait]`: send a job spec to a server; print the job id (and, waiting, its end)."""

from __future__ import annotations

import argparse
from typing import Any

from shapley_svc.cli.remote import add_connection_arguments, connect, format_table, job_rows


def register(subparsers: Any) -> None:
    """Add the ``submit`` subcommand."""
    parser = subparsers.add_parser("submit", help="submit a job spec (YAML/JSON) to a shapley-svc server")
    parser.add_argument("spec", help="job spec file (.yaml, .yml or .json)")
    parser.add_argument("--wait", action="store_true", help="wait for the job to finish, with a progress bar")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while waiting")
    add_connection_arguments(parser)
    parser.set_defaults(handler=submit)


def submit(args: argparse.Namespace) -> int:
    """Submit; print the id on its own line; with ``--wait`` follow the job and print its final row."""
    with connect(args) as client:
        job = client.submit(args.spec)
        print(job.id, flush=True)
        if args.wait:
            print(format_table(*job_rows([job.wait(progress=not args.no_progress)])))
    return 0
