"""The simulator's mutable state: scenario, clock, per-venue gates and fault counters, page
bodies.

One instance per application, used from one event loop (not thread-safe). Replacing the
scenario (:meth:`SimState.set_scenario`) resets every venue's budget, ban and fault counters,
the page cache and a websocket pause, and keeps the request log (call ``log.reset()`` for a
clean slate) and the cache of built archive files (its keys name everything a file's bytes
depend on, scenario faults included).

Websocket faults on demand (the ``/_sim/ws/...`` debug routes): :meth:`SimState.drop_websockets`
cuts connections like a network failure (the TCP transport is aborted: no close frame), and
:meth:`SimState.pause_websockets` stalls every push for a while (connections stay open and
answer pings; the bars of the pause are simply never pushed, as on a stalled exchange feed).
The pause runs on wall time (``time.monotonic``), like the pushes themselves.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Protocol

import numpy as np
from aiohttp import web
from numpy.typing import NDArray

from qmtl.runtime.sdk.clock import Clock
from qmtl.services.exchange_sim.archive_cache import ArchiveCache
from qmtl.services.exchange_sim.klines import (
    FaultCounters,
    Page,
    apply_page_faults,
    build_page,
    take_empty_page,
)
from qmtl.services.exchange_sim.pages import PageBodies
from qmtl.services.exchange_sim.request_log import RequestLog
from qmtl.services.exchange_sim.request_rate import RequestRateLimiter
from qmtl.services.exchange_sim.scenario import MarketScenario, Outage, PageFault, Scenario
from qmtl.services.exchange_sim.scenario_venues import VENUE_IDS, VenueId
from qmtl.services.exchange_sim.venue_gates import BinanceGate, OkxGate, VenueGate, venue_of
from qmtl.services.exchange_sim.weights import (
    ENDPOINT_WEIGHTS,
    FUTURES_ENDPOINT_WEIGHTS,
    FUTURES_KLINES_PATH,
    WeightLimiter,
    futures_klines_weight_of,
)

__all__ = ["STATE_KEY", "SimState", "WsConnection"]


class WsConnection(Protocol):
    """One open kline websocket, as the debug routes see it."""

    def symbols(self) -> set[str]:
        """Exchange symbols (``BTCUSDT``) and unified ones (``BTC/USDT``) it is subscribed to."""
        ...

    def drop(self) -> None:
        """Cut the connection abruptly (no close frame), like a network failure."""
        ...


def _gates(scenario: Scenario) -> dict[VenueId, VenueGate]:
    usdm = scenario.venues.binanceusdm
    spot = BinanceGate(
        "binance",
        WeightLimiter(
            limit_per_minute=scenario.weight_limit_per_minute,
            ban_after_violations=scenario.ban_after_violations,
            ban_seconds=scenario.ban_seconds,
            retry_after_s=scenario.retry_after_s,
        ),
        prefix="/api/",
        weights=ENDPOINT_WEIGHTS,
        klines_path="/api/v3/klines",
        latency_ms=scenario.venue_latency_ms("binance"),
    )
    futures = BinanceGate(
        "binanceusdm",
        WeightLimiter(
            limit_per_minute=usdm.weight_limit_per_minute,
            ban_after_violations=usdm.ban_after_violations,
            ban_seconds=usdm.ban_seconds,
            retry_after_s=usdm.retry_after_s,
        ),
        prefix="/fapi/",
        weights=FUTURES_ENDPOINT_WEIGHTS,
        klines_path=FUTURES_KLINES_PATH,
        klines_weight=futures_klines_weight_of,
        latency_ms=scenario.venue_latency_ms("binanceusdm"),
    )
    okx = OkxGate(
        RequestRateLimiter(asdict(scenario.venues.okx.rate_limits)),
        latency_ms=scenario.venue_latency_ms("okx"),
    )
    return {"binance": spot, "binanceusdm": futures, "okx": okx}


class SimState:
    """Everything a request handler needs besides the request."""

    scenario: Scenario
    gates: dict[VenueId, VenueGate]
    faults: dict[VenueId, FaultCounters]
    bodies: PageBodies

    def __init__(self, scenario: Scenario, clock: Clock) -> None:
        self.clock = clock
        self.log = RequestLog()
        self.archives = ArchiveCache()  # keyed by content: survives scenario swaps
        self.websockets: set[web.WebSocketResponse] = set()
        self.ws_connections: set[WsConnection] = set()
        self.set_scenario(scenario)

    def set_scenario(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.gates = _gates(scenario)
        self.faults = {venue: FaultCounters() for venue in VENUE_IDS}
        self.bodies = PageBodies()
        self._ws_paused_until = 0.0

    def drop_websockets(self, symbol: str | None = None) -> int:
        """Cut every open kline websocket (only those subscribed to ``symbol``, exchange or
        unified spelling, when given); how many were cut."""
        cut = [c for c in self.ws_connections if symbol is None or symbol in c.symbols()]
        for connection in cut:
            connection.drop()
        return len(cut)

    def pause_websockets(self, seconds: float) -> None:
        """Push nothing on any websocket for ``seconds`` of wall time from now (0: resume)."""
        if not 0 <= seconds <= 3600:
            raise ValueError(f"seconds: must be between 0 and 3600, got {seconds!r}")
        self._ws_paused_until = time.monotonic() + seconds

    def websockets_paused(self) -> bool:
        """Whether pushes are paused (:meth:`pause_websockets`) right now."""
        return time.monotonic() < self._ws_paused_until

    @property
    def limiter(self) -> WeightLimiter:
        """Binance spot's weight budget."""
        return self.weight_limiter("binance")

    def weight_limiter(self, venue: VenueId) -> WeightLimiter:
        """The weight budget of a Binance venue (``binance`` or ``binanceusdm``)."""
        gate = self.gates[venue]
        if not isinstance(gate, BinanceGate):
            raise ValueError(f"{venue} has no weight budget")
        return gate.limiter

    def gate_for(self, path: str) -> VenueGate | None:
        """The gate of the venue answering ``path`` (``None``: debug route or websocket)."""
        venue = venue_of(path)
        return None if venue is None else self.gates[venue]

    def now_ms(self) -> int:
        """The exchange's current time: the scenario's pinned ``now`` or the clock."""
        if self.scenario.now_ms is not None:
            return self.scenario.now_ms
        return int(self.clock.now() * 1000)

    def take_outage(self, market: MarketScenario, venue: VenueId) -> Outage | None:
        """The outage this candles request falls into (counting ``next_requests`` ones)."""
        wall = self.clock.now()
        for i, outage in enumerate(market.outages):
            if outage.span is not None:
                if outage.span.contains(wall):
                    return outage
            elif self.faults[venue].take(
                (market.exchange_symbol, "outage", i), outage.next_requests
            ):
                return outage
        return None

    def take_empty_page(
        self, market: MarketScenario, window: tuple[int, int] | None, venue: VenueId
    ) -> PageFault | None:
        """The ``empty_pages`` fault answering this request (asking ``window``, from
        :func:`~qmtl.services.exchange_sim.klines.asked_window`) with no rows, if any."""
        if not market.empty_pages:
            return None
        return take_empty_page(market, window, self.faults[venue])

    async def page(
        self,
        market: MarketScenario,
        interval_s: int,
        open_times: NDArray[np.int64],
        limit: int,
        venue: VenueId,
        now_ms: int,
    ) -> Page:
        """The Binance klines answer for ``open_times`` as of ``now_ms``; closed, fault-free
        pages come from :class:`~qmtl.services.exchange_sim.pages.PageBodies` (batched,
        cached)."""
        seed, symbol = self.scenario.seed, market.symbol
        has_faults = bool(market.malformed or market.short_pages or market.duplicates)
        closed = not len(open_times) or int(open_times[-1]) + interval_s * 1000 <= now_ms
        if has_faults or not closed or not len(open_times):
            bars = build_page(seed, symbol, interval_s, open_times, now_ms)
            return apply_page_faults(market, bars, limit=limit, counters=self.faults[venue])
        return Page(await self.bodies.body(seed, symbol, interval_s, open_times), open_times)


STATE_KEY = web.AppKey("qmtl_exchange_sim_state", SimState)
