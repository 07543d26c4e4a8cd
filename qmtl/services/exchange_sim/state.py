"""The simulator's mutable state: scenario, clock, weight budget, fault counters, page bodies.

One instance per application, used from one event loop (not thread-safe). Replacing the
scenario (:meth:`SimState.set_scenario`) resets the weight budget, ban, fault counters and
page cache, and keeps the request log (call ``log.reset()`` for a clean slate).
"""

from __future__ import annotations

import numpy as np
from aiohttp import web
from numpy.typing import NDArray

from qmtl.runtime.sdk.clock import Clock
from qmtl.services.exchange_sim.klines import (
    FaultCounters,
    Page,
    apply_page_faults,
    asked_window,
    build_page,
    take_empty_page,
)
from qmtl.services.exchange_sim.pages import PageBodies
from qmtl.services.exchange_sim.params import KlinesParams
from qmtl.services.exchange_sim.request_log import RequestLog
from qmtl.services.exchange_sim.scenario import MarketScenario, Outage, PageFault, Scenario
from qmtl.services.exchange_sim.weights import WeightLimiter

__all__ = ["STATE_KEY", "SimState"]


class SimState:
    """Everything a request handler needs besides the request."""

    def __init__(self, scenario: Scenario, clock: Clock) -> None:
        self.clock = clock
        self.log = RequestLog()
        self.scenario = scenario
        self.limiter = self._limiter(scenario)
        self.faults = FaultCounters()
        self.websockets: set[web.WebSocketResponse] = set()
        self.bodies = PageBodies()

    @staticmethod
    def _limiter(scenario: Scenario) -> WeightLimiter:
        return WeightLimiter(
            limit_per_minute=scenario.weight_limit_per_minute,
            ban_after_violations=scenario.ban_after_violations,
            ban_seconds=scenario.ban_seconds,
            retry_after_s=scenario.retry_after_s,
        )

    def set_scenario(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.limiter = self._limiter(scenario)
        self.faults = FaultCounters()
        self.bodies = PageBodies()

    def now_ms(self) -> int:
        """The exchange's current time: the scenario's pinned ``now`` or the clock."""
        if self.scenario.now_ms is not None:
            return self.scenario.now_ms
        return int(self.clock.now() * 1000)

    def take_outage(self, market: MarketScenario) -> Outage | None:
        """The outage this klines request falls into (counting ``next_requests`` ones)."""
        wall = self.clock.now()
        for i, outage in enumerate(market.outages):
            if outage.span is not None:
                if outage.span.contains(wall):
                    return outage
            elif self.faults.take((market.exchange_symbol, "outage", i), outage.next_requests):
                return outage
        return None

    def take_empty_page(self, market: MarketScenario, params: KlinesParams) -> PageFault | None:
        """The ``empty_pages`` fault answering this klines request with ``[]``, if any."""
        if not market.empty_pages:
            return None
        window = asked_window(
            params.interval_s,
            start_time=params.start_time,
            end_time=params.end_time,
            limit=params.limit,
            now_ms=self.now_ms(),
        )
        return take_empty_page(market, window, self.faults)

    async def page(
        self, market: MarketScenario, interval_s: int, open_times: NDArray[np.int64], limit: int
    ) -> Page:
        """The klines answer for ``open_times``; closed, fault-free pages come from
        :class:`~qmtl.services.exchange_sim.pages.PageBodies` (batched, cached)."""
        now_ms = self.now_ms()
        seed, symbol = self.scenario.seed, market.symbol
        has_faults = bool(market.malformed or market.short_pages or market.duplicates)
        closed = not len(open_times) or int(open_times[-1]) + interval_s * 1000 <= now_ms
        if has_faults or not closed or not len(open_times):
            bars = build_page(seed, symbol, interval_s, open_times, now_ms)
            return apply_page_faults(market, bars, limit=limit, counters=self.faults)
        return Page(await self.bodies.body(seed, symbol, interval_s, open_times), open_times)


STATE_KEY = web.AppKey("qmtl_exchange_sim_state", SimState)
