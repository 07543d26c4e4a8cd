"""Binance's kline websocket streams, enough for ``ccxt.pro``: spot on ``/stream/ws/...`` and
USD-M futures on ``/market/ws/...`` (where ccxt's ``binanceusdm`` connects: its ``linear``
URL ``wss://fstream.binance.com/ws`` becomes ``<root>/market/ws/<n>`` for klines).

Protocol (both): ``{"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 1}`` is
answered ``{"result": null, "id": 1}``; ``UNSUBSCRIBE`` and ``LIST_SUBSCRIPTIONS`` likewise;
bad requests get ``{"error": {"code": 2, "msg": ...}, "id": ...}`` (code 3 for invalid JSON).
Each subscription pushes ``kline`` events as :class:`~.ws_core.BarStream` says (``x: true``
on a bar's final values, sent as it closes); faults and pauses are :mod:`~.ws_core`'s.

The spot path must contain ``/stream`` and the futures path must not: ccxt's binance tells
spot sockets from futures ones by ``'/stream' in url`` and parses ``BTCUSDT`` as the spot
market or the perpetual (``BTC/USDT:USDT``) accordingly. Each venue's streams are its own
markets (USD-M: the perpetuals, with their own bars).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from qmtl.services.exchange_sim.bars import Bars, format_e8
from qmtl.services.exchange_sim.params import INTERVALS
from qmtl.services.exchange_sim.scenario_venues import VenueId
from qmtl.services.exchange_sim.state import SimState
from qmtl.services.exchange_sim.ws_core import BarStream, WsSession, serve

__all__ = ["binance_handler", "kline_event", "stream_handler"]

_STREAM_RE = re.compile(r"([a-z0-9]{1,20})@kline_([0-9]{1,2}[smhdw])")


def kline_event(
    bars: Bars, symbol: str, interval: str, *, closed: bool, now_ms: int
) -> dict[str, Any]:
    """Binance's ``kline`` event for the single bar in ``bars``."""
    t = int(bars.open_time[0])
    trades = int(bars.trades[0])
    return {
        "e": "kline",
        "E": now_ms,
        "s": symbol,
        "k": {
            "t": t,
            "T": int(bars.close_time[0]),
            "s": symbol,
            "i": interval,
            "f": 0,
            "L": max(trades - 1, 0),
            "o": format_e8(int(bars.open[0])),
            "c": format_e8(int(bars.close[0])),
            "h": format_e8(int(bars.high[0])),
            "l": format_e8(int(bars.low[0])),
            "v": format_e8(int(bars.volume[0])),
            "n": trades,
            "x": closed,
            "q": format_e8(int(bars.quote_volume[0])),
            "V": format_e8(int(bars.taker_base[0])),
            "Q": format_e8(int(bars.taker_quote[0])),
            "B": "0",
        },
    }


class _BinanceSession(WsSession):
    venue: VenueId = "binance"

    def _subscription(self, stream: object) -> BarStream | str:
        if not isinstance(stream, str):
            return "Invalid request: stream names must be strings"
        match = _STREAM_RE.fullmatch(stream)
        if match is None or match.group(2) not in INTERVALS:
            return f"Invalid request: unknown stream {stream[:64]!r}"
        market = self.state.scenario.market(match.group(1).upper(), self.venue)
        if market is None:
            return f"Invalid request: unknown symbol in {stream[:64]!r}"
        interval = match.group(2)
        symbol = market.exchange_symbol

        def render(bars: Bars, closed: bool, now_ms: int) -> dict[str, Any]:
            return kline_event(bars, symbol, interval, closed=closed, now_ms=now_ms)

        return BarStream(market, INTERVALS[interval], render)

    async def on_binary(self) -> None:
        await self.send({"error": {"code": 2, "msg": "Invalid request"}, "id": None})

    async def on_text(self, text: str) -> None:
        try:
            request = json.loads(text)
        except ValueError:
            await self.send({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None})
            return
        if not isinstance(request, dict):
            await self.send({"error": {"code": 2, "msg": "Invalid request"}, "id": None})
            return
        rid = request.get("id")
        rid = rid if isinstance(rid, int | str) and not isinstance(rid, bool) else None
        method, params = request.get("method"), request.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            await self.send({"result": sorted(self.subs), "id": rid})
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list):
            await self.send({"error": {"code": 2, "msg": "Invalid request"}, "id": rid})
            return
        if method == "UNSUBSCRIBE":
            for stream in params:
                self.subs.pop(str(stream), None)
            await self.send({"result": None, "id": rid})
            return
        parsed = [(s, self._subscription(s)) for s in params]
        errors = [p for _, p in parsed if isinstance(p, str)]
        if errors:
            await self.send({"error": {"code": 2, "msg": errors[0]}, "id": rid})
            return
        for stream, sub in parsed:
            if isinstance(sub, BarStream):
                self.subs.setdefault(str(stream), sub)
        await self.send({"result": None, "id": rid})


class _UsdmSession(_BinanceSession):
    venue: VenueId = "binanceusdm"


def binance_handler(
    venue: VenueId,
) -> Callable[[web.Request], Awaitable[web.WebSocketResponse]]:
    """The websocket handler of Binance spot (``"binance"``) or USD-M (``"binanceusdm"``)."""
    if venue not in ("binance", "binanceusdm"):
        raise ValueError(f"venue: not a Binance venue: {venue!r}")
    session_type = _UsdmSession if venue == "binanceusdm" else _BinanceSession

    def make(
        state: SimState, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None
    ) -> WsSession:
        return session_type(state, ws, transport)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        return await serve(request, make)

    return handler


#: Binance spot's websocket handler (``/stream/ws``).
stream_handler = binance_handler("binance")
