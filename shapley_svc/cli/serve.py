"""`shapley-svc serve --host H --port P [--dev] [--store PATH]`: run the HTTP API and its job workers.

Refuses to start without an API token (``SHAPLEY_SVC_TOKEN`` or the settings file) unless ``--dev``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from shapley_svc.cli.remote import missing_service_extra


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser("serve", help="run the HTTP API (jobs run in the server's background)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--dev", action="store_true", help="local development: start even without a token")
    parser.add_argument("--store", default=None, help="SQLite store file (default: settings, shapley-svc.sqlite)")
    parser.add_argument("--settings", default=None, metavar="FILE", help="settings file (YAML: token, store, ...)")
    parser.add_argument("--max-jobs", type=int, default=None, help="jobs running at the same time (default 2)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster for Ray jobs (default: a local Ray)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    """Check the settings, then serve until interrupted."""
    try:
        import uvicorn

        from shapley_svc.service.app import create_app
    except ImportError as error:
        raise missing_service_extra(error, "the server") from error
    from shapley_svc.service.settings import load_settings

    settings = load_settings(
        args.settings,
        overrides={
            "store": args.store,
            "max_concurrent_jobs": args.max_jobs,
            "ray_address": args.ray_address,
            "dev": args.dev or None,
        },
    )
    app = create_app(settings)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
