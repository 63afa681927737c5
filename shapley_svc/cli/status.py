"""`shapley-svc status [JOB]`: the server's jobs (or one job) as a table with status and progress."""

from __future__ import annotations

import argparse
from typing import Any

from shapley_svc.cli.remote import add_connection_arguments, connect, format_table, job_rows


def register(subparsers: Any) -> None:
    """Add the ``status`` subcommand."""
    parser = subparsers.add_parser("status", help="list a server's jobs, or show one")
    parser.add_argument("job", nargs="?", default=None, help="a job id (default: every job, newest first)")
    parser.add_argument("--limit", type=int, default=50, help="jobs listed at most (default 50)")
    add_connection_arguments(parser)
    parser.set_defaults(handler=status)


def status(args: argparse.Namespace) -> int:
    """Print the job table; for one job also its full error."""
    with connect(args) as client:
        if args.job is None:
            jobs = client.jobs(limit=args.limit)
            print(format_table(*job_rows(jobs)) if jobs else "no jobs")
            return 0
        job = client.get_job(args.job)
    print(format_table(*job_rows([job])))
    if job.error:
        print(f"\nerror: {job.error}")
    return 0
