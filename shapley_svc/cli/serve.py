"""`shapley-svc serve --host H --port P [--dev] [--store PATH]`: run the HTTP API and its job workers.

Refuses to start without an API token (``SHAPLEY_SVC_TOKEN`` or the settings file) unless ``--dev``, which
listens on loopback only, needs no token and lets requests name any local path (it says so on start). Every
job spec arriving over HTTP passes the settings' policy (:mod:`shapley_svc.service.policy`). TLS: pass
``--ssl-certfile`` and ``--ssl-keyfile``, or serve on loopback behind a TLS proxy.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Any

from shapley_svc.cli.remote import missing_service_extra
from shapley_svc.errors import ConfigError

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser("serve", help="run the HTTP API (jobs run in the server's background)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--dev", action="store_true", help="local development on loopback: no token, requests may name any path"
    )
    parser.add_argument("--store", default=None, help="SQLite store file (default: settings, shapley-svc.sqlite)")
    parser.add_argument("--settings", default=None, metavar="FILE", help="settings file (YAML: token, policy, ...)")
    parser.add_argument("--max-jobs", type=int, default=None, help="jobs running at the same time (default 2)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster for Ray jobs (default: a local Ray)")
    parser.add_argument("--ssl-certfile", default=None, metavar="PEM", help="serve HTTPS with this certificate")
    parser.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="the certificate's private key")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=serve)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    """Check the settings, then serve until interrupted."""
    try:
        import uvicorn

        from shapley_svc.service.app import create_app
    except ImportError as error:
        raise missing_service_extra(error, "the server") from error
    from shapley_svc.service.settings import load_settings

    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise ConfigError("give --ssl-certfile and --ssl-keyfile together")
    settings = load_settings(
        args.settings,
        overrides={
            "store": args.store,
            "max_concurrent_jobs": args.max_jobs,
            "ray_address": args.ray_address,
            "dev": args.dev or None,
        },
    )
    if settings.dev and not is_loopback(args.host):
        raise ConfigError(f"--dev serves loopback only (127.0.0.1, ::1, localhost), not {args.host!r}; drop --dev")
    app = create_app(settings)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.dev:
        logger.warning(
            "event=development_mode host=%s note=no token needed, requests may name any local path this user can "
            "read; for one user on this machine only",
            args.host,
        )
    elif not is_loopback(args.host) and args.ssl_certfile is None:
        logger.warning("event=plain_http host=%s note=tokens cross the network in clear; use TLS", args.host)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    return 0
