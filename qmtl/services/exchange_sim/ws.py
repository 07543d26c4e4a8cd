"""Binance's kline websocket stream (``/stream/ws/...``), enough for ``ccxt.pro``.

Protocol: ``{"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 1}`` is answered
``{"result": null, "id": 1}``; ``UNSUBSCRIBE`` and ``LIST_SUBSCRIPTIONS`` likewise; bad
requests get ``{"error": {"code": 2, "msg": ...}, "id": ...}`` (code 3 for invalid JSON).

Every ``ws_push_interval_ms`` (wall time, so ccxt sees a live stream even when the tests'
clock is fake), and right as a subscribed bar closes, each subscription pushes the bar
containing "now" (``x: false``, values as at "now"); when that bar has closed since the
previous push, its final values come first with ``x: true`` — so a bar's final kline goes out
as it closes, as Binance sends it. Bars that do not exist (before listing, in a halt) are
not pushed. The path must contain ``/stream``: ccxt's binance tells spot from futures sockets by it.

Faults on demand (:class:`~qmtl.services.exchange_sim.state.SimState`): a dropped connection
has its TCP transport aborted (the client sees a reset, not a close frame); while pushes are
paused nothing is sent, and afterwards each subscription resumes with the bar that was
forming when the pause began (now closed, ``x: true``) and the current one — the bars in
between are never pushed, as after a real stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from qmtl.runtime.sdk.bars import bar_open_at
from qmtl.services.exchange_sim.bars import Bars, format_e8
from qmtl.services.exchange_sim.klines import build_page, select_open_times
from qmtl.services.exchange_sim.params import INTERVALS
from qmtl.services.exchange_sim.scenario import MarketScenario
from qmtl.services.exchange_sim.state import STATE_KEY, SimState

__all__ = ["kline_event", "stream_handler"]

_STREAM_RE = re.compile(r"([a-z0-9]{1,20})@kline_([0-9]{1,2}[smhdw])")
_MAX_MESSAGE_BYTES = 64 * 1024


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


@dataclass
class _Subscription:
    market: MarketScenario
    interval: str
    last_open: int | None = None

    def _exists(self, open_ms: int, now_ms: int) -> bool:
        found = select_open_times(
            self.market,
            INTERVALS[self.interval],
            start_time=open_ms,
            end_time=open_ms,
            limit=1,
            now_ms=now_ms,
        )
        return len(found) == 1

    def events(self, state: SimState, now_ms: int) -> list[dict[str, Any]]:
        interval_s = INTERVALS[self.interval]
        # bars open on whole seconds: the bar holding now_ms holds its whole second too
        current = bar_open_at(now_ms // 1000, interval_s) * 1000
        due: list[tuple[int, bool]] = []
        if self.last_open is not None and self.last_open < current:
            due.append((self.last_open, True))
        due.append((current, False))
        self.last_open = current
        out = []
        for open_ms, closed in due:
            if self._exists(open_ms, now_ms):
                bars = build_page(
                    state.scenario.seed,
                    self.market.symbol,
                    interval_s,
                    np.array([open_ms], np.int64),
                    now_ms,
                )
                out.append(
                    kline_event(
                        bars,
                        self.market.exchange_symbol,
                        self.interval,
                        closed=closed,
                        now_ms=now_ms,
                    )
                )
        return out


class _Session:
    """One connection; a :class:`~qmtl.services.exchange_sim.state.WsConnection`."""

    def __init__(
        self, state: SimState, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None
    ) -> None:
        self.state = state
        self.ws = ws
        self.transport = transport
        self.subs: dict[str, _Subscription] = {}

    def symbols(self) -> set[str]:
        markets = [sub.market for sub in self.subs.values()]
        return {m.exchange_symbol for m in markets} | {m.symbol for m in markets}

    def drop(self) -> None:
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()

    async def send(self, payload: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(payload, separators=(",", ":")))

    def _next_wake_s(self) -> float:
        """Seconds to the next push: every ``ws_push_interval_ms``, and at the close of a
        subscribed bar (Binance sends a bar's final kline as it closes, not at the next tick)."""
        wait_ms = float(self.state.scenario.ws_push_interval_ms)
        now_ms = self.state.now_ms()
        for sub in self.subs.values():
            interval_ms = INTERVALS[sub.interval] * 1000
            wait_ms = min(wait_ms, interval_ms - now_ms % interval_ms + 1)
        return wait_ms / 1000

    async def push_forever(self) -> None:
        while not self.ws.closed:
            await asyncio.sleep(self._next_wake_s())
            if self.state.websockets_paused():
                continue
            now_ms = self.state.now_ms()
            for sub in list(self.subs.values()):
                for event in sub.events(self.state, now_ms):
                    await self.send(event)

    def _subscription(self, stream: object) -> _Subscription | str:
        if not isinstance(stream, str):
            return "Invalid request: stream names must be strings"
        match = _STREAM_RE.fullmatch(stream)
        if match is None or match.group(2) not in INTERVALS:
            return f"Invalid request: unknown stream {stream[:64]!r}"
        market = self.state.scenario.market(match.group(1).upper())
        if market is None:
            return f"Invalid request: unknown symbol in {stream[:64]!r}"
        return _Subscription(market, match.group(2))

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
            if isinstance(sub, _Subscription):
                self.subs.setdefault(str(stream), sub)
        await self.send({"result": None, "id": rid})


async def stream_handler(request: web.Request) -> web.WebSocketResponse:
    """Serve one websocket connection until the client (or the server's shutdown) closes it."""
    state = request.app[STATE_KEY]
    ws = web.WebSocketResponse(max_msg_size=_MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    state.websockets.add(ws)
    session = _Session(state, ws, request.transport)
    state.ws_connections.add(session)
    pusher = asyncio.create_task(session.push_forever())
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await session.on_text(message.data)
            elif message.type == WSMsgType.BINARY:
                await session.send({"error": {"code": 2, "msg": "Invalid request"}, "id": None})
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await pusher
        state.websockets.discard(ws)
        state.ws_connections.discard(session)
    return ws
