"""`shapley-svc cancel JOB`: cancel a queued or running job on a server."""

from __future__ import annotations

import argparse
from typing import Any

from shapley_svc.cli.remote import add_connection_arguments, connect


def register(subparsers: Any) -> None:
    """Add the ``cancel`` subcommand."""
    parser = subparsers.add_parser("cancel", help="cancel a queued or running job on a server")
    parser.add_argument("job", help="the job id")
    add_connection_arguments(parser)
    parser.set_defaults(handler=cancel)


def cancel(args: argparse.Namespace) -> int:
    """Cancel and print the job's new status."""
    with connect(args) as client:
        job = client.cancel(args.job)
    print(f"job {job.id}: {job.status.value}")
    return 0
