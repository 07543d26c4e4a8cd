"""OKX v5 REST routes: ``public/time``, ``public/instruments``, ``market/candles`` and
``market/history-candles``.

Candles semantics (OKX's): ``after`` returns bars opening before it, ``before`` bars opening
after it (both exclusive); the page is the newest ``limit`` such bars, newest first — with
``before`` alone, the newest bars overall, cut at ``before``. ``market/candles`` serves only
the newest ``recent_candles`` bar slots (1440; older windows answer empty, as on OKX);
``market/history-candles`` serves all history, at most ``history_candles_max_limit`` (100)
rows a page — ccxt asks it for 300 and gets the newest 100 of its window.

Scenario knobs apply as on Binance, in OKX's representation: an outage is the gateway's
HTML page (or OKX's ``50001`` envelope), an empty page ``data: []``, a malformed page a
truncated envelope or broken rows. Hong Kong-aligned bars (``1D``, ``6H`` …) are the UTC
series' machinery run 8 hours ahead: the market's bar-time spans move with it, so listing,
halts and fault windows keep their meaning in real time.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import numpy as np
from aiohttp import web

from qmtl.services.exchange_sim.binance_routes import outage_html
from qmtl.services.exchange_sim.klines import (
    asked_window,
    build_page,
    fault_bars,
    select_open_times,
)
from qmtl.services.exchange_sim.okx_params import (
    CandlesParams,
    OkxError,
    envelope,
    instrument_type,
    json_response,
    parse_candles_params,
)
from qmtl.services.exchange_sim.okx_wire import candles_body, instrument
from qmtl.services.exchange_sim.request_log import KlinesRecord
from qmtl.services.exchange_sim.scenario import MarketScenario, Outage, PageFault, TimeSpan
from qmtl.services.exchange_sim.scenario_venues import VenueId
from qmtl.services.exchange_sim.state import STATE_KEY, SimState

__all__ = ["add_okx_routes"]

CANDLES = "/api/v5/market/candles"
HISTORY_CANDLES = "/api/v5/market/history-candles"
F = TypeVar("F", bound=PageFault)
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _move(span: TimeSpan, seconds: int) -> TimeSpan:
    return TimeSpan(start=span.start + seconds, end=span.end + seconds)


def _moved(faults: tuple[F, ...], seconds: int) -> tuple[F, ...]:
    return tuple(replace(f, span=_move(f.span, seconds)) for f in faults)


@functools.lru_cache(maxsize=256)
def _shifted(market: MarketScenario, shift_ms: int) -> MarketScenario:
    """``market`` with its bar-time spans ``shift_ms`` later (outages are wall time)."""
    if not shift_ms:
        return market
    s = shift_ms // 1000
    return replace(
        market,
        listing=None if market.listing is None else market.listing + s,
        halts=tuple(_move(h, s) for h in market.halts),
        malformed=_moved(market.malformed, s),
        short_pages=_moved(market.short_pages, s),
        empty_pages=_moved(market.empty_pages, s),
        duplicates=_moved(market.duplicates, s),
    )


def _outage_response(outage: Outage) -> web.Response:
    if outage.body == "json":
        body = envelope([], "50001", "Service temporarily unavailable")
        return json_response(body, outage.status)
    return outage_html(outage.status)


async def _time(request: web.Request) -> web.Response:
    return json_response(envelope([{"ts": str(request.app[STATE_KEY].now_ms())}]))


async def _instruments(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if instrument_type(request.query) != "SPOT":
        return json_response(envelope([]))  # only spot instruments are simulated
    markets = state.scenario.venue_markets("okx")
    wanted = request.query.get("instId")
    if wanted:
        markets = tuple(m for m in markets if m.inst_id == wanted)
        if not markets:
            raise OkxError.no_instrument()
    now_ms, seed = state.now_ms(), state.scenario.seed
    every = state.scenario.venue_markets("okx")
    data = [instrument(seed, m, every.index(m) + 1, now_ms) for m in markets]
    return json_response(envelope(data))


def _window(
    params: CandlesParams, end_time: int | None, before: int | None, now_ms: int
) -> tuple[int, int] | None:
    """The bar slots (ms, half-open) the request asks about, for ``empty_pages``."""
    window = asked_window(
        params.interval_s, start_time=None, end_time=end_time, limit=params.limit, now_ms=now_ms
    )
    if window is None or before is None:
        return window
    interval_ms = params.interval_s * 1000
    first = window[0]
    if first <= before:
        first += ((before - first) // interval_ms + 1) * interval_ms
    return (first, window[1]) if first < window[1] else None


def _candles(
    state: SimState,
    params: CandlesParams,
    market: MarketScenario,
    path: str,
    recent: int | None,
) -> web.Response:
    """The answer to an admitted candles request of ``market``; ``recent`` is the
    ``market/candles`` window (``None`` on history-candles)."""
    venue: VenueId = "okx"

    def record(
        status: int, rows: int = 0, bounds: tuple[int, int] | None = None, fault: str | None = None
    ) -> None:
        first, last = bounds if bounds is not None else (None, None)
        state.log.record_klines(
            KlinesRecord(
                params.inst_id,
                params.bar,
                params.before,
                params.after,
                params.asked_limit,
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
    shift = params.offset_ms
    moved = _shifted(market, shift)
    now_ms = state.now_ms()
    end_time = None if params.after is None else params.after + shift - 1
    before = None if params.before is None else params.before + shift
    if moved.empty_pages:
        window = _window(params, end_time, before, now_ms + shift)
        if state.take_empty_page(moved, window, venue) is not None:
            record(200, fault="empty_page")
            return json_response(envelope([]))
    open_times = select_open_times(
        moved,
        params.interval_s,
        start_time=None,
        end_time=end_time,
        limit=params.limit,
        now_ms=now_ms + shift,
        recent_bars=recent,
    )
    if before is not None:
        open_times = open_times[open_times > before]
    seed = state.scenario.seed
    bars = build_page(seed, market.symbol, params.interval_s, open_times, now_ms + shift)
    faulted = fault_bars(moved, bars, limit=params.limit, counters=state.faults[venue])
    served = faulted.bars
    if shift:
        served = replace(served, open_time=served.open_time - np.int64(shift))
    times = served.open_time
    bounds = (int(times[0]), int(times[-1])) if len(times) else None
    record(200, len(times), bounds, faulted.fault)
    return json_response(candles_body(served, now_ms, faulted.broken))


def _candles_handler(path: str, history: bool) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE_KEY]
        okx = state.scenario.venues.okx
        max_limit = okx.history_candles_max_limit if history else okx.candles_max_limit
        params = parse_candles_params(request.query, max_limit=max_limit)
        market = state.scenario.market(params.inst_id, "okx")
        if market is None:
            raise OkxError.no_instrument()
        if market.latency_ms:
            await asyncio.sleep(market.latency_ms / 1000)
        return _candles(state, params, market, path, None if history else okx.recent_candles)

    return handler


def add_okx_routes(app: web.Application) -> None:
    """Register OKX's time, instruments, candles and history-candles routes."""
    app.router.add_get("/api/v5/public/time", _time)
    app.router.add_get("/api/v5/public/instruments", _instruments)
    app.router.add_get(CANDLES, _candles_handler(CANDLES, history=False))
    app.router.add_get(HISTORY_CANDLES, _candles_handler(HISTORY_CANDLES, history=True))
