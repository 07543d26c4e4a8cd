"""What every simulated kline websocket shares, whatever its wire format: a subscription's
bars as they form and close, and one connection's life (pushes, faults, shutdown).

A :class:`BarStream` is one subscription: every ``ws_push_interval_ms`` (wall time, so a
client sees a live stream even when the tests' clock is fake), and right as its bar closes,
it yields the bar containing "now" (forming, values as at "now"); when that bar has closed
since the previous push, its final values come first, marked closed — so a bar's final
values go out as it closes, as the exchanges send them. Bars that do not exist (before
listing, in a halt) are not pushed. Bars are the venue's REST bars: the same market entry
(:meth:`~qmtl.services.exchange_sim.scenario.Scenario.market` of that venue) and the same
generator, so websocket and REST agree bar for bar.

A :class:`WsSession` is one connection, a :class:`~qmtl.services.exchange_sim.state.WsConnection`
for the debug routes: a dropped connection has its TCP transport aborted (the client sees a
reset, not a close frame); while pushes are paused nothing is sent, and afterwards each
subscription resumes with the bar that was forming when the pause began (now closed) and the
current one — the bars in between are never pushed, as after a real stall. Subclasses speak
the wire format (:mod:`~.ws` Binance, :mod:`~.ws_okx` OKX).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from qmtl.runtime.sdk.bars import bar_open_at
from qmtl.services.exchange_sim.bars import Bars
from qmtl.services.exchange_sim.klines import build_page, select_open_times
from qmtl.services.exchange_sim.scenario import MarketScenario
from qmtl.services.exchange_sim.state import STATE_KEY, SimState

__all__ = ["MAX_MESSAGE_BYTES", "BarStream", "Render", "WsSession", "serve"]

MAX_MESSAGE_BYTES = 64 * 1024
#: A subscription's wire message for one bar: ``(bar, closed, now_ms)`` → JSON object.
Render = Callable[[Bars, bool, int], dict[str, Any]]


@dataclass
class BarStream:
    """One subscription: ``market``'s bars of ``interval_s``, in the venue's ``render``."""

    market: MarketScenario
    interval_s: int
    render: Render
    last_open: int | None = None

    def _exists(self, open_ms: int, now_ms: int) -> bool:
        found = select_open_times(
            self.market,
            self.interval_s,
            start_time=open_ms,
            end_time=open_ms,
            limit=1,
            now_ms=now_ms,
        )
        return len(found) == 1

    def messages(self, state: SimState, now_ms: int) -> list[dict[str, Any]]:
        """What to push at ``now_ms``: the bar closed since the last push, then the current."""
        # bars open on whole seconds: the bar holding now_ms holds its whole second too
        current = bar_open_at(now_ms // 1000, self.interval_s) * 1000
        due: list[tuple[int, bool]] = []
        if self.last_open is not None and self.last_open < current:
            due.append((self.last_open, True))
        due.append((current, False))
        self.last_open = current
        out = []
        for open_ms, closed in due:
            if self._exists(open_ms, now_ms):
                times = np.array([open_ms], np.int64)
                bars = build_page(
                    state.scenario.seed, self.market.symbol, self.interval_s, times, now_ms
                )
                out.append(self.render(bars, closed, now_ms))
        return out


class WsSession(ABC):
    """One connection; subclasses parse requests and keep ``subs`` (name → stream)."""

    def __init__(
        self, state: SimState, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None
    ) -> None:
        self.state = state
        self.ws = ws
        self.transport = transport
        self.subs: dict[str, BarStream] = {}

    def symbols(self) -> set[str]:
        """Every spelling of the subscribed markets: ``BTCUSDT``, ``BTC-USDT``, ``BTC/USDT``."""
        markets = [sub.market for sub in self.subs.values()]
        return {s for m in markets for s in (m.exchange_symbol, m.inst_id, m.symbol)}

    def drop(self) -> None:
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()

    async def send(self, payload: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(payload, separators=(",", ":")))

    @abstractmethod
    async def on_text(self, text: str) -> None:
        """Answer one text frame."""

    @abstractmethod
    async def on_binary(self) -> None:
        """Answer one binary frame (no simulated venue takes them)."""

    def _next_wake_s(self) -> float:
        """Seconds to the next push: every ``ws_push_interval_ms``, and at the close of a
        subscribed bar (exchanges send a bar's final values as it closes)."""
        wait_ms = float(self.state.scenario.ws_push_interval_ms)
        now_ms = self.state.now_ms()
        for sub in self.subs.values():
            interval_ms = sub.interval_s * 1000
            wait_ms = min(wait_ms, interval_ms - now_ms % interval_ms + 1)
        return wait_ms / 1000

    async def push_forever(self) -> None:
        while not self.ws.closed:
            await asyncio.sleep(self._next_wake_s())
            if self.state.websockets_paused():
                continue
            now_ms = self.state.now_ms()
            for sub in list(self.subs.values()):
                for message in sub.messages(self.state, now_ms):
                    await self.send(message)


async def serve(
    request: web.Request,
    session_type: Callable[
        [SimState, web.WebSocketResponse, asyncio.BaseTransport | None], WsSession
    ],
) -> web.WebSocketResponse:
    """Serve one websocket connection until the client (or the server's shutdown) closes it."""
    state = request.app[STATE_KEY]
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    state.websockets.add(ws)
    session = session_type(state, ws, request.transport)
    state.ws_connections.add(session)
    pusher = asyncio.create_task(session.push_forever())
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await session.on_text(message.data)
            elif message.type == WSMsgType.BINARY:
                await session.on_binary()
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await pusher
        state.websockets.discard(ws)
        state.ws_connections.discard(session)
    return ws
