"""OKX v5 request parameters and error answers (pure).

Errors travel in OKX's envelope, ``{"code": "51001", "msg": "...", "data": []}``, with the
HTTP status OKX's error table gives: 400 for malformed parameters (``50014`` empty,
``51000`` invalid), 200 for ``51001`` (an instrument that does not exist is a business
answer, not a bad request), 429 for ``50011`` and 503 for ``50001``. ccxt maps the codes
(``51001`` → ``BadSymbol``, ``51000`` → ``BadRequest``, ``50011`` → ``RateLimitExceeded``)
before looking at the status.

Unlike Binance, OKX clamps an over-large ``limit`` to the endpoint's maximum instead of
refusing it, and ignores parameters it does not know. Hostile values (non-numeric, huge,
non-ASCII) are refused here, before any arithmetic.

Bar names: ``1s 1m 3m 5m 15m 30m 1H 2H 4H`` are aligned to UTC; ``6H 12H 1D 1W`` are
aligned to Hong Kong time (UTC+8) as on OKX, and their ``…utc`` variants (``1Dutc`` — what
ccxt sends for ``1d``) to UTC.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from aiohttp import web
from multidict import MultiMapping

from qmtl.services.exchange_sim.venue_errors import VenueError

__all__ = [
    "HK_OFFSET_MS",
    "OKX_BARS",
    "CandlesParams",
    "OkxError",
    "envelope",
    "instrument_type",
    "json_response",
    "parse_candles_params",
]

HK_OFFSET_MS = 8 * 3600 * 1000
_UTC_BARS = {"1s": 1, "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800}
_UTC_BARS |= {"1H": 3600, "2H": 7200, "4H": 14_400}
_HK_BARS = {"6H": 21_600, "12H": 43_200, "1D": 86_400, "1W": 604_800}
#: OKX bar name → (interval seconds, alignment offset ms: bars open ``offset`` before the
#: UTC-aligned instants, i.e. at Hong Kong midnight for the HK-aligned names).
OKX_BARS: dict[str, tuple[int, int]] = {
    **{name: (s, 0) for name, s in _UTC_BARS.items()},
    **{name: (s, HK_OFFSET_MS) for name, s in _HK_BARS.items()},
    **{f"{name}utc": (s, 0) for name, s in _HK_BARS.items()},
}
_INST_RE = re.compile(r"[A-Z0-9]{1,10}-[A-Z0-9]{1,10}")
_DIGITS_RE = re.compile(r"[0-9]{1,16}")


def envelope(data: object, code: str = "0", msg: str = "") -> bytes:
    """OKX's answer shape (compact JSON)."""
    return json.dumps({"code": code, "msg": msg, "data": data}, separators=(",", ":")).encode()


class OkxError(VenueError):
    """An OKX refusal: HTTP ``status``, OKX ``code`` (a string, as OKX sends it), ``msg``."""

    def __init__(self, status: int, code: str, msg: str) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg

    def body(self) -> bytes:
        return envelope([], self.code, self.msg)

    @property
    def fault(self) -> str:
        return f"code {self.code}"

    @classmethod
    def empty(cls, name: str) -> OkxError:
        return cls(400, "50014", f"Parameter {name} can not be empty")

    @classmethod
    def invalid(cls, name: str) -> OkxError:
        return cls(400, "51000", f"Parameter {name} error")

    @classmethod
    def no_instrument(cls) -> OkxError:
        return cls(200, "51001", "Instrument ID does not exist")


@dataclass(frozen=True, slots=True)
class CandlesParams:
    """A validated candles request: ``after``/``before`` are exclusive bounds on the bar's
    open time (epoch ms); ``limit`` is already clamped to the endpoint's maximum."""

    inst_id: str
    bar: str
    after: int | None
    before: int | None
    limit: int
    asked_limit: int | None = None  # as sent, before the default and the clamp

    @property
    def interval_s(self) -> int:
        return OKX_BARS[self.bar][0]

    @property
    def offset_ms(self) -> int:
        return OKX_BARS[self.bar][1]


def _time(query: MultiMapping[str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if not _DIGITS_RE.fullmatch(value):
        raise OkxError.invalid(name)
    return int(value)


def parse_candles_params(
    query: MultiMapping[str], *, max_limit: int, default_limit: int = 100
) -> CandlesParams:
    """Validate ``market/candles`` / ``market/history-candles`` query parameters (the
    instrument's existence is checked by the caller)."""
    inst_id = query.get("instId", "")
    if not inst_id:
        raise OkxError.empty("instId")
    if not _INST_RE.fullmatch(inst_id):
        raise OkxError.no_instrument()
    bar = query.get("bar") or "1m"
    if bar not in OKX_BARS:
        raise OkxError.invalid("bar")
    asked = _time(query, "limit")
    if asked is not None and asked < 1:
        raise OkxError.invalid("limit")
    limit = default_limit if asked is None else min(asked, max_limit)
    after, before = _time(query, "after"), _time(query, "before")
    return CandlesParams(inst_id, bar, after, before, limit, asked)


def instrument_type(query: MultiMapping[str]) -> str:
    """``instType`` of ``public/instruments`` (required; one of OKX's types)."""
    inst_type = query.get("instType", "")
    if not inst_type:
        raise OkxError.empty("instType")
    if inst_type not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
        raise OkxError.invalid("instType")
    return inst_type


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")
