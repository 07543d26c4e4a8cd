"""OKX v5's candlestick channels on the business websocket (``/ws/v5/business``), enough for
``ccxt.pro``'s ``okx`` (which connects to ``<ws root>/ws/v5/business`` for every ``candle*``
channel).

Protocol (OKX's): ``{"op": "subscribe", "args": [{"channel": "candle1m", "instId":
"BTC-USDT"}]}`` is answered, per argument, ``{"event": "subscribe", "arg": {...}, "connId":
...}``; ``unsubscribe`` likewise; a bad request gets ``{"event": "error", "code": "60012",
"msg": ..., "connId": ...}`` (``60018`` for a channel or instrument that does not exist) and
subscribes nothing. The text frame ``ping`` is answered ``pong`` (OKX has no protocol-level
ping; ccxt sends ``ping`` every 18 s and drops a socket that misses two ``pong``). Pushes are
``{"arg": {...}, "data": [[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]]}``, the row of
:func:`~qmtl.services.exchange_sim.okx_wire.candle_rows` (``confirm`` ``"1"`` on a bar's
final values, sent as it closes) — the same values ``market/candles`` serves for that bar.

Only UTC-aligned bars are simulated here (``candle1s`` … ``candle4H`` and the ``…utc``
variants); the Hong Kong-aligned channels (``candle6H``, ``candle12H``, ``candle1D``,
``candle1W`` — ccxt's ``1d`` is ``candle1D``) answer ``60018``. Spot instruments only, as
the REST side.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from aiohttp import web

from qmtl.services.exchange_sim.bars import Bars
from qmtl.services.exchange_sim.okx_params import OKX_BARS
from qmtl.services.exchange_sim.okx_wire import candle_rows
from qmtl.services.exchange_sim.ws_core import BarStream, WsSession, serve

__all__ = ["okx_business_handler"]

_MAX_ARGS = 100


def _parse(text: str) -> tuple[str, list[tuple[str, str]]] | None:
    """``(op, [(channel, instId), ...])`` of a (un)subscribe request; ``None`` if invalid."""
    try:
        request = json.loads(text)
    except ValueError:
        return None
    if not isinstance(request, dict):
        return None
    op, args = request.get("op"), request.get("args")
    if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
        return None
    if not 0 < len(args) <= _MAX_ARGS or not all(isinstance(a, dict) for a in args):
        return None
    pairs = [(a.get("channel"), a.get("instId")) for a in args]
    if not all(isinstance(c, str) and isinstance(i, str) for c, i in pairs):
        return None
    return str(op), [(str(c), str(i)) for c, i in pairs]


class _OkxSession(WsSession):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.conn_id = secrets.token_hex(4)

    async def _error(self, code: str, msg: str) -> None:
        await self.send({"event": "error", "code": code, "msg": msg, "connId": self.conn_id})

    def _stream(self, channel: str, inst_id: str) -> BarStream | tuple[str, str]:
        bar = channel.removeprefix("candle")
        known = channel.startswith("candle") and bar in OKX_BARS
        market = self.state.scenario.market(inst_id, "okx")
        if not known or OKX_BARS[bar][1] or market is None:
            return (
                "60018",
                f"Wrong URL or channel:{channel[:32]},instId:{inst_id[:32]} doesn't exist.",
            )
        arg = {"channel": channel, "instId": inst_id}

        def render(bars: Bars, closed: bool, now_ms: int) -> dict[str, Any]:
            return {"arg": arg, "data": candle_rows(bars, now_ms)}

        return BarStream(market, OKX_BARS[bar][0], render)

    async def on_binary(self) -> None:
        await self._error("60012", "Invalid request: binary frames are not accepted")

    async def on_text(self, text: str) -> None:
        if text == "ping":
            await self.ws.send_str("pong")
            return
        parsed = _parse(text)
        if parsed is None:
            await self._error("60012", f"Invalid request: {text[:64]}")
            return
        op, pairs = parsed
        if op == "unsubscribe":
            for channel, inst_id in pairs:
                self.subs.pop(f"{channel}:{inst_id}", None)
                await self._ack(op, channel, inst_id)
            return
        streams = [(c, i, self._stream(c, i)) for c, i in pairs]
        for _, _, found in streams:
            if isinstance(found, tuple):
                await self._error(*found)
                return
        for channel, inst_id, found in streams:
            if isinstance(found, BarStream):
                self.subs.setdefault(f"{channel}:{inst_id}", found)
            await self._ack(op, channel, inst_id)

    async def _ack(self, op: str, channel: str, inst_id: str) -> None:
        arg = {"channel": channel, "instId": inst_id}
        await self.send({"event": op, "arg": arg, "connId": self.conn_id})


async def okx_business_handler(request: web.Request) -> web.WebSocketResponse:
    """OKX's business websocket (candlestick channels)."""
    return await serve(request, _OkxSession)
