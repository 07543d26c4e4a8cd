"""``qmtl-seamless simulator serve``: run the exchange simulator until Ctrl-C (scenario
format: ``docs/simulator.md``).

Prints the REST and websocket roots on one line each, e.g. ``rest: http://127.0.0.1:8080``,
so users can point ``exchanges.binance.urls`` at it. A bad scenario file is a one-line error
(exit 2, from ``main``); a port in use is too (``OSError``). The simulator records no metrics
of its own: ``--metrics-port`` serves the process-wide registry (process and catalog
metrics; :mod:`~qmtl.runtime.io.metrics_endpoint`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from qmtl.cli._common import add_metrics_option, serve_until_stopped, usage_handler
from qmtl.services.exchange_sim.scenario import Scenario
from qmtl.services.exchange_sim.server import SimulatorServer

__all__ = ["register", "serve"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``simulator`` command group (``simulator serve``)."""
    parser = subparsers.add_parser("simulator", help="run the Binance-compatible simulator")
    commands = parser.add_subparsers(dest="simulator_command", metavar="SUBCOMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="serve the exchange simulator until interrupted",
        description=(
            "Serve deterministic bars in Binance spot (REST + kline websocket), Binance USD-M "
            "futures (/fapi/v1) and OKX v5 (/api/v5) wire formats on one port."
        ),
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="bind address")
    serve_parser.add_argument(
        "--port", type=int, default=8080, help="TCP port (0 picks a free one)"
    )
    serve_parser.add_argument(
        "--scenario", metavar="FILE", default=None, help="scenario YAML (default: built-in)"
    )
    add_metrics_option(serve_parser)
    serve_parser.set_defaults(handler=_serve)

    parser.set_defaults(handler=usage_handler(parser))


async def serve(
    scenario: Scenario,
    *,
    host: str,
    port: int,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    metrics_port: int | None = None,
) -> SimulatorServer:
    """Serve until ``stop`` is set, or SIGINT / SIGTERM arrives (``stop_signals``);
    ``started`` is set once bound. ``metrics_port`` serves ``/metrics`` there too."""
    server = SimulatorServer(scenario, host=host, port=port)

    def banner() -> list[str]:  # read once the server is bound
        return [
            f"rest: {server.base_url}",
            f"ws: {server.ws_url}/stream/ws",
            f"symbols: {', '.join(scenario.symbols)}",
        ]

    await serve_until_stopped(server, banner, metrics_port=metrics_port, started=started, stop=stop)
    return server


def _serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be within 0..65535, got {args.port}")
    scenario = Scenario.from_yaml(Path(args.scenario)) if args.scenario else Scenario()
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during shutdown
        asyncio.run(serve(scenario, host=args.host, port=args.port, metrics_port=args.metrics_port))
    print("simulator stopped", file=sys.stderr)
    return 0
