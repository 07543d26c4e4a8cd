"""``qmtl-seamless coordinator serve``: run the backfill coordinator until Ctrl-C; the
group's ``inspect`` and ``release`` (an operator's view of the leases, and the hand release
of a stuck one) live in :mod:`qmtl.cli.coordinator_admin`.

Lease state lives in the store named by ``--dsn``: ``sqlite:///path`` for one machine (the
default ``sqlite:///.qmtl/leases.db``) or ``postgresql://...`` for restarts and several
replicas on one database. The bearer token is ``environment.coordinator_token``
(``QMTL_SEAMLESS_COORDINATOR_TOKEN``), as the configuration loader resolves it; without one
the service answers anyone. Prints ``coordinator: http://host:port`` once listening. The
service answers ``/metrics`` on its own port; ``--metrics-port`` serves them on another one too
(all interfaces: :mod:`~qmtl.runtime.io.metrics_endpoint`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from qmtl.cli import coordinator_admin
from qmtl.cli._common import add_metrics_option, serve_until_stopped, settings, usage_handler
from qmtl.runtime.sdk.metrics import default_metrics
from qmtl.services.coordinator.server import CoordinatorServer
from qmtl.services.coordinator.store import DEFAULT_DSN, open_lease_store

__all__ = ["register", "serve"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``coordinator`` command group (``serve``, ``inspect``, ``release``)."""
    parser = subparsers.add_parser(
        "coordinator", help="run the backfill coordinator; inspect and release its leases"
    )
    commands = parser.add_subparsers(dest="coordinator_command", metavar="SUBCOMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="serve backfill leases over HTTP until interrupted",
        description=(
            "Hand out backfill leases over HTTP/JSON so that no two workers fill one window "
            "at once. Auth: set QMTL_SEAMLESS_COORDINATOR_TOKEN (clients send "
            "'Authorization: Bearer <token>')."
        ),
    )
    serve_parser.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
        help=f"lease store: sqlite:///path or postgresql://... (default {DEFAULT_DSN})",
    )
    serve_parser.add_argument("--config", metavar="FILE", help="YAML configuration")
    serve_parser.add_argument("--host", default="127.0.0.1", help="bind address")
    serve_parser.add_argument(
        "--port", type=int, default=8787, help="TCP port (0 picks a free one)"
    )
    add_metrics_option(serve_parser)
    serve_parser.set_defaults(handler=_serve)
    coordinator_admin.register(commands)
    parser.set_defaults(handler=usage_handler(parser))


async def serve(
    dsn: str,
    *,
    host: str,
    port: int,
    token: str | None,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    metrics_port: int | None = None,
) -> None:
    """Serve until ``stop`` is set, or SIGINT / SIGTERM arrives (``stop_signals``: leases
    in flight are answered, then the store is closed); ``started`` is set once bound.
    ``metrics_port`` also serves the metrics there (``None``: only on the service's port)."""
    server = CoordinatorServer(
        open_lease_store(dsn), metrics=default_metrics(), host=host, port=port, token=token
    )
    await serve_until_stopped(
        server,
        lambda: [f"coordinator: {server.base_url}"],
        metrics_port=metrics_port,
        started=started,
        stop=stop,
    )


def _serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be within 0..65535, got {args.port}")
    open_lease_store(args.dsn)  # a bad DSN is a one-line usage error before anything starts
    token = settings(args).environment.coordinator_token
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during shutdown
        asyncio.run(
            serve(
                args.dsn,
                host=args.host,
                port=args.port,
                token=token,
                metrics_port=args.metrics_port,
            )
        )
    print("coordinator stopped", file=sys.stderr)
    return 0
