"""Running the coordinator on a socket: :class:`CoordinatorServer` and
:func:`run_coordinator`.

The server owns its store: :meth:`CoordinatorServer.start` opens it (creating the schema) and
:meth:`CoordinatorServer.stop` closes it. ``port=0`` binds a free port (read it back from
:attr:`CoordinatorServer.port`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.services.coordinator.app import create_app
from qmtl.services.coordinator.lease_rows import LeaseStore

__all__ = ["CoordinatorServer", "run_coordinator"]


class CoordinatorServer:
    """One coordinator bound to ``host:port``; :meth:`start` then :meth:`stop` (idempotent)."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        metrics: SeamlessMetrics,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        coordinator_id: str | None = None,
    ) -> None:
        self.host = host
        self.store = store
        self.app = create_app(store, metrics=metrics, token=token, coordinator_id=coordinator_id)
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the coordinator is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """e.g. ``http://127.0.0.1:8787`` (what ``QMTL_SEAMLESS_COORDINATOR_URL`` takes)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        await self.store.open()
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)  # Ctrl-C is prompt
        try:
            await runner.setup()
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self.store.close()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            await self.store.close()
        self._port = None


@asynccontextmanager
async def run_coordinator(
    store: LeaseStore,
    *,
    metrics: SeamlessMetrics,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    coordinator_id: str | None = None,
) -> AsyncIterator[CoordinatorServer]:
    """Serve the coordinator for the duration of the ``async with`` block."""
    server = CoordinatorServer(
        store, metrics=metrics, host=host, port=port, token=token, coordinator_id=coordinator_id
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
