"""What the commands talking to a shapley-svc server share: connection options, the client, plain tables.

Not a subcommand itself. The server URL comes from ``--url``, else ``SHAPLEY_SVC_URL``, else the settings
file, else http://127.0.0.1:8000; the token from ``SHAPLEY_SVC_TOKEN`` or the settings file (never from the
command line, where other users could read it).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shapley_svc.errors import ConfigError

if TYPE_CHECKING:  # the service extra (httpx) is imported when a command connects, not when the CLI starts
    from shapley_svc.service.client import Client
    from shapley_svc.service.schemas import JobInfo


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--url`` and ``--settings`` to a subcommand's parser."""
    parser.add_argument("--url", default=None, help="server URL (default: $SHAPLEY_SVC_URL, settings file, local)")
    parser.add_argument("--settings", default=None, metavar="FILE", help="settings file (YAML: url, token, ...)")


def missing_service_extra(error: ImportError, what: str) -> ConfigError:
    """The one-line error for a command that needs the service extra (httpx, fastapi, uvicorn) without it."""
    return ConfigError(f"{error}: {what} needs the service extra: pip install 'shapley-svc[service]'")


def connect(args: argparse.Namespace) -> Client:
    """A client for the server the arguments, environment and settings file name."""
    try:
        from shapley_svc.service.client import Client
    except ImportError as error:
        raise missing_service_extra(error, "talking to a server") from error
    from shapley_svc.service.settings import load_settings

    settings = load_settings(args.settings, overrides={"url": args.url})
    token = settings.token.get_secret_value() if settings.token is not None else None
    return Client(settings.url, token)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under a header, columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(cell) for cell in header], *[["-" if cell is None else str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    numeric = [all(_is_number(row[column]) for row in cells[1:]) and len(cells) > 1 for column in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in cells
    ]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return text == "-"
    return True


def job_rows(jobs: Sequence[JobInfo]) -> tuple[list[str], list[list[Any]]]:
    """The job table: id, name, status, progress, current run, created (UTC), error."""
    header = ["id", "name", "status", "progress", "run", "created", "error"]
    rows = []
    for job in jobs:
        fraction = job.progress.fraction
        error = (job.error or "").splitlines()[0][:60] if job.error else None
        rows.append(
            [
                job.id,
                job.name,
                job.status.value,
                None if fraction is None else f"{100 * fraction:.0f}%",
                job.progress.current_run,
                job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                error,
            ]
        )
    return header, rows
