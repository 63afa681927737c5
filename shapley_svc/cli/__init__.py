"""`shapley-svc` command line: one module per subcommand, each exposing ``register(subparsers)``.

Every expected failure (a subclass of :class:`ShapleySvcError`) is printed as one line on stderr with
exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from shapley_svc import __version__
from shapley_svc.errors import ShapleySvcError

# Subcommand modules, imported lazily so that `shapley-svc estimate` never imports torch.
SUBCOMMANDS: tuple[str, ...] = (
    "run",
    "estimate",
    "plan",
    "job",
    "prune",
    "serve",
    "submit",
    "status",
    "ranking",
    "cancel",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="shapley-svc",
        description="Shapley-value importance of an LLM's decoder blocks and sublayers, for depth pruning.",
    )
    parser.add_argument("--version", action="version", version=f"shapley-svc {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"shapley_svc.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ShapleySvcError as error:
        print(f"shapley-svc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shapley-svc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
