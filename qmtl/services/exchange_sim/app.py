"""The aiohttp application: Binance spot and USD-M, OKX v5, their kline websockets,
Binance's public-data archive (``/data/``), debug routes.

Every request outside ``/_sim/``, the websocket and the archive belongs to one venue, chosen
by path (:func:`~qmtl.services.exchange_sim.venue_gates.venue_of`), and passes one
middleware that, in order: waits the venue's latency (wall time), charges the request
against the venue's budget (Binance weight, OKX request counts; the venue's 429/418 when over
it), runs the handler, turns a :class:`~qmtl.services.exchange_sim.venue_errors.VenueError`
into the venue's error JSON, adds the venue's headers (``X-MBX-USED-WEIGHT-1m`` on Binance)
and records the request. An unexpected exception becomes a 500 in the venue's format (and is
logged): the simulator's own bugs must show up in tests as 500s, which hostile input never
causes. Archive requests skip that middleware: their handler
(:mod:`~qmtl.services.exchange_sim.archive_routes`) charges no budget and answers and logs
them the way S3 and the archive do.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.services.exchange_sim.archive_routes import add_archive_routes
from qmtl.services.exchange_sim.binance_routes import SPOT, USDM, add_binance_routes
from qmtl.services.exchange_sim.okx_routes import add_okx_routes
from qmtl.services.exchange_sim.params import MAX_QUERY_BYTES
from qmtl.services.exchange_sim.request_log import RequestRecord
from qmtl.services.exchange_sim.scenario import Scenario
from qmtl.services.exchange_sim.state import STATE_KEY, SimState
from qmtl.services.exchange_sim.venue_errors import VenueError
from qmtl.services.exchange_sim.venue_gates import venue_of
from qmtl.services.exchange_sim.ws import binance_handler, stream_handler
from qmtl.services.exchange_sim.ws_okx import okx_business_handler

__all__ = ["create_app", "state_of"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_UNKNOWN_ERROR = "An unknown error occurred while processing the request."
_LOGGED_QUERY_CHARS = 1024  # hostile queries can be 64 KiB; the log keeps their start
#: Websocket paths (no venue budget): Binance spot, Binance USD-M, OKX business.
_WS_PREFIXES = ("/stream/ws", "/market/ws", "/ws/v5/")


@web.middleware
async def _exchange_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    venue = None if path.startswith(_WS_PREFIXES) else venue_of(path)
    if venue is None:
        return await handler(request)
    state = request.app[STATE_KEY]
    gate = state.gates[venue]
    if gate.latency_ms:
        await asyncio.sleep(gate.latency_ms / 1000)
    cost = gate.cost(request)
    query_string = request.query_string
    query = query_string[:_LOGGED_QUERY_CHARS]
    now = state.clock.now()
    at_ms = int(now * 1000)
    if cost:
        rejection = gate.admit(request, cost, now)
        if rejection is not None:
            state.log.record(RequestRecord(path, rejection.status, 0, at_ms, venue, query))
            refused = gate.candles_record(request, rejection.status, "rate_limit")
            if refused is not None:
                state.log.record_klines(refused)
            return rejection
    response: web.StreamResponse
    try:
        if len(query_string) > MAX_QUERY_BYTES:
            raise gate.query_too_long()
        response = await handler(request)
    except VenueError as err:
        response = err.response()
        refused = gate.candles_record(request, err.status, err.fault)
        if refused is not None:
            state.log.record_klines(refused)
    except web.HTTPException as exc:
        response = gate.error(exc.status, exc.reason)
    except Exception:
        logger.exception("exchange simulator: unexpected error on %s", path)
        response = gate.error(500, _UNKNOWN_ERROR)
    gate.decorate(response, now)  # the window the request was charged to
    state.log.record(RequestRecord(path, response.status, cost, at_ms, venue, query))
    return response


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


async def _not_found(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    gate = state.gate_for(request.path) or state.gates["binance"]
    return gate.error(404, f"Not found: {request.method} {request.path[:200]}")


async def _sim_requests(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY].log.to_json())


async def _sim_reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.log.reset()
    state.set_scenario(state.scenario)
    return _json({"reset": True})


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object (an empty body is ``{}``); ``None`` for anything else."""
    text = await request.text()
    try:
        body = json.loads(text) if text.strip() else {}
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _sim_ws_drop(request: web.Request) -> web.Response:
    """Cut every kline websocket (every venue's), or those subscribed to ``{"symbol":
    "BTCUSDT"}`` (any spelling: ``BTCUSDT``, ``BTC-USDT``, ``BTC/USDT``, ``BTC/USDT:USDT``)."""
    body = await _json_body(request)
    symbol = None if body is None else body.get("symbol")
    if body is None or (symbol is not None and not isinstance(symbol, str)):
        return _json({"error": 'expected {} or {"symbol": "BTCUSDT"}'}, 400)
    return _json({"dropped": request.app[STATE_KEY].drop_websockets(symbol)})


async def _sim_ws_pause(request: web.Request) -> web.Response:
    """Stall every websocket push for ``{"seconds": N}`` of wall time (0 resumes)."""
    body = await _json_body(request)
    seconds = None if body is None else body.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return _json({"error": 'expected {"seconds": N}'}, 400)
    try:
        request.app[STATE_KEY].pause_websockets(float(seconds))
    except ValueError as exc:
        return _json({"error": str(exc)}, 400)
    return _json({"paused_s": seconds})


async def _close_websockets(app: web.Application) -> None:
    for ws in list(app[STATE_KEY].websockets):
        await ws.close(code=1001, message=b"server shutdown")


def create_app(scenario: Scenario | None = None, *, clock: Clock | None = None) -> web.Application:
    """The simulator as an aiohttp application (serve it with any aiohttp runner).

    ``clock`` (default: the system clock) drives weight windows, bans, wall-time outages and
    "now" unless the scenario pins ``now``.
    """
    app = web.Application(middlewares=[_exchange_middleware], client_max_size=64 * 1024)
    app[STATE_KEY] = SimState(scenario or Scenario(), clock or SystemClock())
    add_binance_routes(app, SPOT)
    add_binance_routes(app, USDM)
    add_okx_routes(app)
    app.router.add_get("/stream/ws", stream_handler)
    app.router.add_get("/stream/ws/{tail:.*}", stream_handler)
    usdm_ws = binance_handler("binanceusdm")
    app.router.add_get("/market/ws", usdm_ws)
    app.router.add_get("/market/ws/{tail:.*}", usdm_ws)
    app.router.add_get("/ws/v5/business", okx_business_handler)
    app.router.add_get("/_sim/requests", _sim_requests)
    app.router.add_post("/_sim/reset", _sim_reset)
    app.router.add_post("/_sim/ws/drop", _sim_ws_drop)
    app.router.add_post("/_sim/ws/pause", _sim_ws_pause)
    add_archive_routes(app)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    app.on_shutdown.append(_close_websockets)
    return app


def state_of(app: web.Application) -> SimState:
    """The :class:`SimState` behind an application made by :func:`create_app`."""
    return app[STATE_KEY]
