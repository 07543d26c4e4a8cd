"""Running the simulator on a socket: :class:`SimulatorServer` and :func:`run_simulator`.

``port=0`` binds a free port (read it back from :attr:`SimulatorServer.port`). The request
line limit is raised to 64 KiB so that over-long query strings reach the application and get
Binance's JSON error (``-1101``) instead of the HTTP parser's plain-text 400; beyond 64 KiB the
parser's own 400 answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from qmtl.runtime.sdk.clock import Clock
from qmtl.services.exchange_sim.app import create_app, state_of
from qmtl.services.exchange_sim.request_log import RequestLog
from qmtl.services.exchange_sim.scenario import Scenario
from qmtl.services.exchange_sim.state import SimState

__all__ = ["SimulatorServer", "run_simulator"]

_MAX_LINE = 64 * 1024


class SimulatorServer:
    """One simulator bound to ``host:port``; :meth:`start` then :meth:`stop` (idempotent)."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        self.host = host
        self.app = create_app(scenario, clock=clock)
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def state(self) -> SimState:
        return state_of(self.app)

    @property
    def scenario(self) -> Scenario:
        return self.state.scenario

    @property
    def request_log(self) -> RequestLog:
        return self.state.log

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """REST root, e.g. ``http://127.0.0.1:8080`` (pass as ``urls={"rest": ...}``)."""
        return f"http://{self._url_host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Websocket root, e.g. ``ws://127.0.0.1:8080`` (streams live under ``/stream/ws``)."""
        return f"ws://{self._url_host}:{self.port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def set_scenario(self, scenario: Scenario) -> None:
        """Swap the scenario; resets weights, bans, fault counters and cache, keeps the log."""
        self.state.set_scenario(scenario)

    def drop_websockets(self, symbol: str | None = None) -> int:
        """Cut open kline websockets like a network failure (``POST /_sim/ws/drop``); only
        those subscribed to ``symbol`` (``BTCUSDT`` or ``BTC/USDT``) when given. How many."""
        return self.state.drop_websockets(symbol)

    def pause_websockets(self, seconds: float) -> None:
        """Push nothing for ``seconds`` of wall time (``POST /_sim/ws/pause``); 0 resumes."""
        self.state.pause_websockets(seconds)

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self.app,
            access_log=None,
            max_line_size=_MAX_LINE,
            max_field_size=_MAX_LINE,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None


@asynccontextmanager
async def run_simulator(
    scenario: Scenario | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock | None = None,
) -> AsyncIterator[SimulatorServer]:
    """Serve the simulator for the duration of the ``async with`` block."""
    server = SimulatorServer(scenario, host=host, port=port, clock=clock)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
