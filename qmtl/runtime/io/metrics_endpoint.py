"""``GET /metrics`` on a port of its own: what ``--metrics-port`` serves while a long-running
command (``coordinator serve``, ``simulator serve``, ``worker``, ``backfill``) runs.

The exposition is prometheus-client's text format of one registry, rendered in a thread
(collecting reads ``/proc`` for the process metrics: blocking file I/O, kept off the event
loop). Only ``GET /metrics`` is served: any other path is 404, any other method 405.

**Bind address.** All interfaces (``0.0.0.0``). Nothing is served unless a port is given, and
giving one is an explicit request to be scraped, which in a cluster comes from another host; a
laptop user who never passes ``--metrics-port`` opens no port. The announced URL names
``127.0.0.1`` so that it works (and is clickable) on the machine itself.

**Errors.** A port outside 0..65535 is a ``ValueError``; a port that cannot be bound (in use,
or privileged) is an ``OSError`` that keeps the bind's ``errno`` (``EADDRINUSE``, ``EACCES``)
with a one-line message: the CLI maps both to exit 2, the user's mistake
(:func:`qmtl.cli.main.exit_code`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["BIND_HOST", "serve_metrics"]

#: Every interface: see the module docstring for why.
BIND_HOST: Final = "0.0.0.0"
_SHOWN_HOST: Final = "127.0.0.1"
_REGISTRY: Final = web.AppKey("registry", CollectorRegistry)
_SHUTDOWN_TIMEOUT_S: Final = 0.5  # a scrape is short; stopping the command stays prompt


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port must be within 0..65535 (0 picks a free one), got {port}")


async def _metrics(request: web.Request) -> web.Response:
    payload = await asyncio.to_thread(generate_latest, request.app[_REGISTRY])
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _app(registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[_REGISTRY] = registry
    app.router.add_get("/metrics", _metrics, allow_head=False)  # anything else: 404 / 405
    return app


async def _start(runner: web.AppRunner, port: int) -> int:
    """Bind ``port`` (0: a free one) and return the bound port; an ``OSError`` with the
    bind's errno and one clear line when the port cannot be had."""
    await runner.setup()
    try:
        await web.TCPSite(runner, BIND_HOST, port).start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        error = OSError(f"metrics port {port}: cannot listen on {BIND_HOST}:{port}: {reason}")
        error.errno = exc.errno  # the exit code's meaning; kept out of the message's text
        raise error from exc
    return int(runner.addresses[0][1])


@asynccontextmanager
async def serve_metrics(port: int | None, registry: CollectorRegistry) -> AsyncIterator[str | None]:
    """Serve ``registry`` at ``GET /metrics`` on ``port`` for the duration of the block and
    yield the URL (``http://127.0.0.1:PORT/metrics``), also printed as one line on stderr,
    ``metrics: URL``, once listening. ``port`` 0 picks a free port; ``None`` serves nothing
    and yields ``None``. Call it in the event loop's thread."""
    if port is None:
        yield None
        return
    _check_port(port)
    runner = web.AppRunner(_app(registry), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    try:
        bound = await _start(runner, port)
        url = f"http://{_SHOWN_HOST}:{bound}/metrics"
        print(f"metrics: {url}", file=sys.stderr, flush=True)
        yield url
    finally:
        await runner.cleanup()
