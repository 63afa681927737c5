"""`shapley-svc ranking JOB --level L --task T --top-k K`: one result's players by importance, as a table."""

from __future__ import annotations

import argparse
from typing import Any

from shapley_svc.cli.remote import add_connection_arguments, connect, format_table


def register(subparsers: Any) -> None:
    """Add the ``ranking`` subcommand."""
    parser = subparsers.add_parser("ranking", help="print a job's ranking of blocks or sublayers")
    parser.add_argument("job", help="the job id")
    parser.add_argument("--level", choices=["block", "sublayer"], default="block", help="player granularity")
    parser.add_argument("--task", default=None, help="task name (needed when the job has several)")
    parser.add_argument("--estimator", default=None, help="estimator key (needed when the job has several)")
    parser.add_argument("--top-k", type=int, default=None, help="list only the first K players")
    parser.add_argument(
        "--order", choices=["desc", "asc"], default="desc", help="desc: most important first; asc: least first"
    )
    add_connection_arguments(parser)
    parser.set_defaults(handler=ranking)


def ranking(args: argparse.Namespace) -> int:
    """Print a header line and the table rank, player, value, stderr."""
    with connect(args) as client:
        view = client.ranking(
            args.job, level=args.level, task=args.task, estimator=args.estimator, order=args.order, top_k=args.top_k
        )
    print(
        f"job {view.job_id}  level {view.level}  task {view.task}  estimator {view.estimator}  "
        f"({view.n_players} players, {view.evaluations_used} evaluations)"
    )
    rows = [[entry.rank, entry.player, _number(entry.value), _number(entry.stderr)] for entry in view.players]
    print(format_table(["rank", "player", "value", "stderr"], rows))
    return 0


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.4g}"
