"""Binance REST routes, spot (``/api/v3``) and USD-M futures (``/fapi/v1``): ping, time,
exchangeInfo and klines.

Both venues speak the same wire format and differ in what :class:`BinanceFlavor` holds: the
path prefix, the page size cap (spot 1000, futures 1500; above is Binance's ``-1130``), the
exchangeInfo document and which of the scenario's market lists they serve. Their budgets,
headers and 429/418 answers are the venue gates' (:mod:`~.venue_gates`); here is only what a
request returns once admitted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from qmtl.services.exchange_sim.exchange_info import exchange_info, futures_exchange_info
from qmtl.services.exchange_sim.klines import asked_window, select_open_times
from qmtl.services.exchange_sim.params import (
    BinanceError,
    parse_exchange_info_params,
    parse_klines_params,
)
from qmtl.services.exchange_sim.request_log import KlinesRecord
from qmtl.services.exchange_sim.scenario import MarketScenario, Outage, Scenario
from qmtl.services.exchange_sim.scenario_venues import VenueId
from qmtl.services.exchange_sim.state import STATE_KEY
from qmtl.services.exchange_sim.weights import WeightLimiter

__all__ = ["SPOT", "USDM", "BinanceFlavor", "add_binance_routes", "outage_html"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
InfoDocument = Callable[[Scenario, int, WeightLimiter, list[MarketScenario]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class BinanceFlavor:
    """What tells Binance spot and USD-M futures apart once a request is admitted."""

    venue: VenueId
    prefix: str
    max_limit: int
    info: InfoDocument

    @property
    def klines_path(self) -> str:
        return f"{self.prefix}/klines"


SPOT = BinanceFlavor("binance", "/api/v3", 1000, exchange_info)
USDM = BinanceFlavor("binanceusdm", "/fapi/v1", 1500, futures_exchange_info)
_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def outage_html(status: int) -> web.Response:
    """A gateway's error page: what every venue's outage looks like with ``body: html``."""
    reason = _REASONS.get(status, "Server Error")
    html = f"<html><body><h1>{status} {reason}</h1></body></html>"
    return web.Response(text=html, status=status, content_type="text/html")


def _outage_response(outage: Outage) -> web.Response:
    if outage.body == "json":
        msg = "Internal error; unable to process your request. Please try again."
        return _json({"code": -1001, "msg": msg}, status=outage.status)
    return outage_html(outage.status)


async def _ping(request: web.Request) -> web.Response:
    return _json({})


async def _time(request: web.Request) -> web.Response:
    return _json({"serverTime": request.app[STATE_KEY].now_ms()})


def _exchange_info(flavor: BinanceFlavor) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE_KEY]
        wanted = parse_exchange_info_params(request.query.items())
        markets = list(state.scenario.venue_markets(flavor.venue))
        if wanted is not None:
            found = [state.scenario.market(s, flavor.venue) for s in wanted]
            if any(m is None for m in found):
                raise BinanceError(400, -1121, "Invalid symbol.")
            markets = [m for m in found if m is not None]
        limiter = state.weight_limiter(flavor.venue)
        return _json(flavor.info(state.scenario, state.now_ms(), limiter, markets))

    return handler


def _klines(flavor: BinanceFlavor) -> Handler:
    venue, path = flavor.venue, flavor.klines_path

    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE_KEY]
        params = parse_klines_params(request.query.items(), max_limit=flavor.max_limit)
        market = state.scenario.market(params.symbol, venue)
        if market is None:
            raise BinanceError(400, -1121, "Invalid symbol.")
        if market.latency_ms:
            await asyncio.sleep(market.latency_ms / 1000)

        def record(
            status: int,
            rows: int = 0,
            first: int | None = None,
            last: int | None = None,
            fault: str | None = None,
        ) -> None:
            state.log.record_klines(
                KlinesRecord(
                    params.symbol,
                    params.interval,
                    params.start_time,
                    params.end_time,
                    params.limit,
                    status,
                    rows,
                    first,
                    last,
                    fault,
                    venue,
                    path,
                )
            )

        outage = state.take_outage(market, venue)
        if outage is not None:
            record(outage.status, fault="outage")
            return _outage_response(outage)
        now_ms = state.now_ms()
        interval_s = params.interval_s
        if market.empty_pages:
            window = asked_window(
                interval_s,
                start_time=params.start_time,
                end_time=params.end_time,
                limit=params.limit,
                now_ms=now_ms,
            )
            if state.take_empty_page(market, window, venue) is not None:
                record(200, fault="empty_page")
                return web.Response(body=b"[]", content_type="application/json")
        open_times = select_open_times(
            market,
            interval_s,
            start_time=params.start_time,
            end_time=params.end_time,
            limit=params.limit,
            now_ms=now_ms,
        )
        page = await state.page(market, interval_s, open_times, params.limit, venue, now_ms)
        served = page.open_times
        if len(served):
            record(200, len(served), int(served[0]), int(served[-1]), page.fault)
        else:
            record(200, fault=page.fault)
        return web.Response(body=page.body, content_type="application/json")

    return handler


def add_binance_routes(app: web.Application, flavor: BinanceFlavor) -> None:
    """Register ``flavor``'s ping, time, exchangeInfo and klines routes."""
    app.router.add_get(f"{flavor.prefix}/ping", _ping)
    app.router.add_get(f"{flavor.prefix}/time", _time)
    app.router.add_get(f"{flavor.prefix}/exchangeInfo", _exchange_info(flavor))
    app.router.add_get(flavor.klines_path, _klines(flavor))
