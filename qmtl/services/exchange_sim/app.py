"""The aiohttp application: Binance spot REST routes, the kline websocket, debug routes.

Every request outside ``/_sim/`` and the websocket passes one middleware that, in order:
waits the scenario's latency (wall time), charges the weight of ``/api/`` paths (429/418 when
over budget — see :mod:`~qmtl.services.exchange_sim.weights`), runs the handler, turns
:class:`~qmtl.services.exchange_sim.params.BinanceError` into Binance's error JSON, echoes
``X-MBX-USED-WEIGHT-1m`` and records the request. An unexpected exception becomes Binance's
``500 {"code": -1000}`` (and is logged): the simulator's own bugs must show up in tests as 500s,
which hostile input never causes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.services.exchange_sim.exchange_info import exchange_info
from qmtl.services.exchange_sim.klines import select_open_times
from qmtl.services.exchange_sim.params import (
    MAX_QUERY_BYTES,
    BinanceError,
    parse_exchange_info_params,
    parse_klines_params,
)
from qmtl.services.exchange_sim.request_log import KlinesRecord, RequestRecord
from qmtl.services.exchange_sim.scenario import Outage, Scenario
from qmtl.services.exchange_sim.state import STATE_KEY, SimState
from qmtl.services.exchange_sim.weights import ENDPOINT_WEIGHTS, Admission
from qmtl.services.exchange_sim.ws import stream_handler

__all__ = ["USED_WEIGHT_HEADER", "create_app", "state_of"]

logger = logging.getLogger(__name__)

USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1m"
_KLINES = "/api/v3/klines"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _error(err: BinanceError) -> web.Response:
    return web.Response(body=err.body(), status=err.status, content_type="application/json")


def _rejection(admission: Admission, remote: str, limit: int) -> web.Response:
    if admission.status == 418:
        until = int((admission.banned_until or 0) * 1000)
        msg = (
            f"Way too much request weight used; IP({remote}) banned until {until}. "
            "Please use WebSocket Streams for live updates to avoid bans."
        )
    else:
        msg = (
            f"Too much request weight used; current limit is {limit} request weight per "
            "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
        )
    response = _error(BinanceError(admission.status, -1003, msg))
    response.headers["Retry-After"] = str(admission.retry_after_s)
    return response


def _optional_int(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    return int(text)


def _klines_record(request: web.Request, status: int, fault: str | None) -> KlinesRecord:
    """Best-effort record of a klines request that was refused before it was parsed."""
    q = request.query
    return KlinesRecord(
        symbol=q.get("symbol"),
        interval=q.get("interval"),
        start_time=_optional_int(q.get("startTime")),
        end_time=_optional_int(q.get("endTime")),
        limit=_optional_int(q.get("limit")),
        status=status,
        fault=fault,
    )


@web.middleware
async def _exchange_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path.startswith(("/_sim/", "/stream")):
        return await handler(request)
    state = request.app[STATE_KEY]
    if state.scenario.latency_ms:
        await asyncio.sleep(state.scenario.latency_ms / 1000)
    weight = ENDPOINT_WEIGHTS.get(path, 1) if path.startswith("/api/") else 0
    now = state.clock.now()
    at_ms = int(now * 1000)
    response: web.StreamResponse
    if weight:
        admission = state.limiter.admit(weight, now)
        if not admission.allowed:
            response = _rejection(
                admission, request.remote or "unknown", state.limiter.limit_per_minute
            )
            response.headers[USED_WEIGHT_HEADER] = str(admission.used_weight)
            state.log.record(RequestRecord(path, admission.status, 0, at_ms))
            if path == _KLINES:
                state.log.record_klines(_klines_record(request, admission.status, "rate_limit"))
            return response
    try:
        if len(request.query_string) > MAX_QUERY_BYTES:
            raise BinanceError(
                400,
                -1101,
                f"Too many parameters; the query string is longer than {MAX_QUERY_BYTES} bytes.",
            )
        response = await handler(request)
    except BinanceError as err:
        response = _error(err)
        if path == _KLINES:
            state.log.record_klines(_klines_record(request, err.status, f"code {err.code}"))
    except web.HTTPException as exc:
        response = _json({"code": -1000, "msg": exc.reason}, status=exc.status)
    except Exception:
        logger.exception("exchange simulator: unexpected error on %s", path)
        response = _json(
            {"code": -1000, "msg": "An unknown error occurred while processing the request."},
            status=500,
        )
    response.headers[USED_WEIGHT_HEADER] = str(state.limiter.used(state.clock.now()))
    state.log.record(RequestRecord(path, response.status, weight, at_ms))
    return response


async def _ping(request: web.Request) -> web.Response:
    return _json({})


async def _time(request: web.Request) -> web.Response:
    return _json({"serverTime": request.app[STATE_KEY].now_ms()})


async def _exchange_info(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    wanted = parse_exchange_info_params(request.query.items())
    markets = list(state.scenario.markets)
    if wanted is not None:
        found = [state.scenario.market(s) for s in wanted]
        if any(m is None for m in found):
            raise BinanceError(400, -1121, "Invalid symbol.")
        markets = [m for m in found if m is not None]
    return _json(exchange_info(state.scenario, state.now_ms(), state.limiter, markets))


def _outage_response(outage: Outage) -> web.Response:
    if outage.body == "json":
        msg = "Internal error; unable to process your request. Please try again."
        return _json({"code": -1001, "msg": msg}, status=outage.status)
    reason = {
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }.get(outage.status, "Server Error")
    html = f"<html><body><h1>{outage.status} {reason}</h1></body></html>"
    return web.Response(text=html, status=outage.status, content_type="text/html")


async def _klines(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    params = parse_klines_params(request.query.items())
    market = state.scenario.market(params.symbol)
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
            )
        )

    outage = state.take_outage(market)
    if outage is not None:
        record(outage.status, fault="outage")
        return _outage_response(outage)
    if state.take_empty_page(market, params) is not None:
        record(200, fault="empty_page")
        return web.Response(body=b"[]", content_type="application/json")
    open_times = select_open_times(
        market,
        params.interval_s,
        start_time=params.start_time,
        end_time=params.end_time,
        limit=params.limit,
        now_ms=state.now_ms(),
    )
    page = await state.page(market, params.interval_s, open_times, params.limit)
    served = page.open_times
    if len(served):
        record(200, len(served), int(served[0]), int(served[-1]), page.fault)
    else:
        record(200, fault=page.fault)
    return web.Response(body=page.body, content_type="application/json")


async def _not_found(request: web.Request) -> web.Response:
    return _json(
        {"code": -1000, "msg": f"Not found: {request.method} {request.path[:200]}"}, status=404
    )


async def _sim_requests(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY].log.to_json())


async def _sim_reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.log.reset()
    state.set_scenario(state.scenario)
    return _json({"reset": True})


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
    app.router.add_get("/api/v3/ping", _ping)
    app.router.add_get("/api/v3/time", _time)
    app.router.add_get("/api/v3/exchangeInfo", _exchange_info)
    app.router.add_get(_KLINES, _klines)
    app.router.add_get("/stream/ws", stream_handler)
    app.router.add_get("/stream/ws/{tail:.*}", stream_handler)
    app.router.add_get("/_sim/requests", _sim_requests)
    app.router.add_post("/_sim/reset", _sim_reset)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    app.on_shutdown.append(_close_websockets)
    return app


def state_of(app: web.Application) -> SimState:
    """The :class:`SimState` behind an application made by :func:`create_app`."""
    return app[STATE_KEY]
