"""What differs between venues at the HTTP layer: budgets, rejections, headers, error shape.

The application's middleware is venue-agnostic: it asks the request's :class:`VenueGate`
(chosen by path, :func:`venue_of`) what the request costs, whether it is admitted, how an
error looks and which headers every answer carries. Binance spot and USD-M share
:class:`BinanceGate` — the same :class:`~qmtl.services.exchange_sim.weights.WeightLimiter`
rules (429 with ``Retry-After``, then 418 bans) and ``X-MBX-USED-WEIGHT-1m`` on every answer,
each venue with its own budget and weights. :class:`OkxGate` counts requests per endpoint
(:class:`~qmtl.services.exchange_sim.request_rate.RequestRateLimiter`) and answers 429 with
OKX's ``50011`` envelope, without usage or ``Retry-After`` headers (OKX sends neither).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

from aiohttp import web

from qmtl.services.exchange_sim.okx_params import OkxError, envelope
from qmtl.services.exchange_sim.params import MAX_QUERY_BYTES, BinanceError
from qmtl.services.exchange_sim.request_log import KlinesRecord
from qmtl.services.exchange_sim.request_rate import RequestRateLimiter
from qmtl.services.exchange_sim.scenario_venues import VenueId
from qmtl.services.exchange_sim.venue_errors import VenueError
from qmtl.services.exchange_sim.weights import WeightLimiter

__all__ = [
    "OKX_ENDPOINTS",
    "USED_WEIGHT_HEADER",
    "BinanceGate",
    "OkxGate",
    "VenueGate",
    "venue_of",
]

USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1m"
#: OKX paths with a request limit → their name in ``OkxRateLimits``.
OKX_ENDPOINTS: dict[str, str] = {
    "/api/v5/market/candles": "candles",
    "/api/v5/market/history-candles": "history_candles",
    "/api/v5/public/instruments": "instruments",
    "/api/v5/public/time": "time",
}
OKX_CANDLES_PATHS = ("/api/v5/market/candles", "/api/v5/market/history-candles")


def venue_of(path: str) -> VenueId | None:
    """The venue answering ``path``; ``None`` for the debug routes, the websocket and the
    public-data archive (``/data/``: static files outside every REST budget, answered and
    logged by :mod:`~qmtl.services.exchange_sim.archive_routes`). Paths of no venue (``/``,
    ``/nope``) are Binance spot's, which answers them 404."""
    if path.startswith("/api/v3/"):  # the hot path first
        return "binance"
    if path.startswith("/api/v5/"):
        return "okx"
    if path.startswith("/fapi/"):
        return "binanceusdm"
    if path.startswith(("/_sim/", "/stream", "/data/")):
        return None
    return "binance"


def _optional_int(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    return int(text)


class VenueGate(ABC):
    """One venue's HTTP policy (one instance per scenario; not thread-safe). ``latency_ms``
    is the venue's (the scenario's resolved value, kept here so the per-request path reads
    one attribute)."""

    venue: VenueId
    latency_ms: float = 0.0

    @abstractmethod
    def cost(self, request: web.Request) -> int:
        """What the request charges against the venue's budget (0: not limited)."""

    @abstractmethod
    def admit(self, request: web.Request, cost: int, now: float) -> web.Response | None:
        """``None`` when admitted (and charged), else the rejection to send."""

    @abstractmethod
    def error(self, status: int, message: str) -> web.Response:
        """A generic error in the venue's format (unknown path, the simulator's own bug)."""

    @abstractmethod
    def query_too_long(self) -> VenueError:
        """The refusal of a query string over
        :data:`~qmtl.services.exchange_sim.params.MAX_QUERY_BYTES`."""

    @abstractmethod
    def decorate(self, response: web.StreamResponse, now: float) -> None:
        """Add the headers every answer of the venue carries."""

    @abstractmethod
    def candles_record(
        self, request: web.Request, status: int, fault: str | None
    ) -> KlinesRecord | None:
        """Best-effort record of a candles request refused before it was parsed (``None``
        when ``request`` is not a candles request)."""


class BinanceGate(VenueGate):
    """Binance spot or USD-M: weights per request, ``X-MBX-USED-WEIGHT-1m``, 429 → 418.

    Paths under ``prefix`` weigh ``weights[path]`` (1 when not listed), others nothing; with
    ``klines_weight`` set, the klines weight is a function of the ``limit`` sent."""

    def __init__(
        self,
        venue: VenueId,
        limiter: WeightLimiter,
        *,
        prefix: str,
        weights: Mapping[str, int],
        klines_path: str,
        klines_weight: Callable[[str | None], int] | None = None,
        latency_ms: float = 0.0,
    ) -> None:
        self.venue = venue
        self.limiter = limiter
        self.prefix = prefix
        self.weights = dict(weights)
        self.klines_path = klines_path
        self.klines_weight = klines_weight
        self.latency_ms = latency_ms

    def cost(self, request: web.Request) -> int:
        path = request.path
        if not path.startswith(self.prefix):
            return 0
        if self.klines_weight is not None and path == self.klines_path:
            return self.klines_weight(request.query.get("limit"))
        return self.weights.get(path, 1)

    def admit(self, request: web.Request, cost: int, now: float) -> web.Response | None:
        admission = self.limiter.admit(cost, now)
        if admission.allowed:
            return None
        if admission.status == 418:
            until = int((admission.banned_until or 0) * 1000)
            msg = (
                f"Way too much request weight used; IP({request.remote or 'unknown'}) banned "
                f"until {until}. Please use WebSocket Streams for live updates to avoid bans."
            )
        else:
            msg = (
                "Too much request weight used; current limit is "
                f"{self.limiter.limit_per_minute} request weight per 1 MINUTE. Please use "
                "WebSocket Streams for live updates to avoid polling the API."
            )
        response = BinanceError(admission.status, -1003, msg).response()
        response.headers["Retry-After"] = str(admission.retry_after_s)
        response.headers[USED_WEIGHT_HEADER] = str(admission.used_weight)
        return response

    def error(self, status: int, message: str) -> web.Response:
        return web.Response(
            body=json.dumps({"code": -1000, "msg": message}, separators=(",", ":")).encode(),
            status=status,
            content_type="application/json",
        )

    def query_too_long(self) -> VenueError:
        return BinanceError(
            400,
            -1101,
            f"Too many parameters; the query string is longer than {MAX_QUERY_BYTES} bytes.",
        )

    def decorate(self, response: web.StreamResponse, now: float) -> None:
        response.headers[USED_WEIGHT_HEADER] = str(self.limiter.used(now))

    def candles_record(
        self, request: web.Request, status: int, fault: str | None
    ) -> KlinesRecord | None:
        if request.path != self.klines_path:
            return None
        q = request.query
        return KlinesRecord(
            symbol=q.get("symbol"),
            interval=q.get("interval"),
            start_time=_optional_int(q.get("startTime")),
            end_time=_optional_int(q.get("endTime")),
            limit=_optional_int(q.get("limit")),
            status=status,
            fault=fault,
            venue=self.venue,
            path=request.path,
        )


class OkxGate(VenueGate):
    """OKX v5: a request count per endpoint per 2 s; over it, 429 with code ``50011``."""

    venue: VenueId = "okx"

    def __init__(self, limiter: RequestRateLimiter, *, latency_ms: float = 0.0) -> None:
        self.limiter = limiter
        self.latency_ms = latency_ms

    def cost(self, request: web.Request) -> int:
        return 1 if request.path in OKX_ENDPOINTS else 0

    def admit(self, request: web.Request, cost: int, now: float) -> web.Response | None:
        if self.limiter.admit(OKX_ENDPOINTS[request.path], now):
            return None
        return OkxError(429, "50011", "Too Many Requests").response()

    def error(self, status: int, message: str) -> web.Response:
        code = "50026" if status >= 500 else "50000"  # "System error" / a generic refusal
        return web.Response(
            body=envelope([], code, message), status=status, content_type="application/json"
        )

    def query_too_long(self) -> VenueError:
        return OkxError(400, "51000", "Parameter error: the query string is too long")

    def decorate(self, response: web.StreamResponse, now: float) -> None:
        return None

    def candles_record(
        self, request: web.Request, status: int, fault: str | None
    ) -> KlinesRecord | None:
        if request.path not in OKX_CANDLES_PATHS:
            return None
        q = request.query
        return KlinesRecord(
            symbol=q.get("instId"),
            interval=q.get("bar"),
            start_time=_optional_int(q.get("before")),
            end_time=_optional_int(q.get("after")),
            limit=_optional_int(q.get("limit")),
            status=status,
            fault=fault,
            venue=self.venue,
            path=request.path,
        )
