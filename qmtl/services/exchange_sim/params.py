"""Binance-style request parameter checks and error answers (pure).

Every refusal is a :class:`BinanceError` carrying the HTTP status and Binance's ``code`` and
``msg``, so ccxt raises the matching exception (``-1121`` → ``BadSymbol``; ``-1100``,
``-1101``, ``-1102``, ``-1104``, ``-1120``, ``-1128``, ``-1130``, ``-1023`` → ``BadRequest``).
Hostile input (huge, non-numeric, negative, NUL, non-ASCII, repeated keys) is refused here,
before any arithmetic, so no request can end in a 500. Where Binance's behaviour is unclear
the simulator is the stricter one (``limit`` outside ``[1, 1000]`` — ``[1, 1500]`` on USD-M
futures — is an error, not clamped).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from qmtl.runtime.sdk.node_id import TIMEFRAMES
from qmtl.services.exchange_sim.venue_errors import VenueError

__all__ = [
    "INTERVALS",
    "MAX_QUERY_BYTES",
    "BinanceError",
    "KlinesParams",
    "parse_exchange_info_params",
    "parse_klines_params",
]

#: Binance interval → seconds (Binance's ``3d`` and ``1M`` are not simulated).
INTERVALS: dict[str, int] = dict(TIMEFRAMES)
MAX_QUERY_BYTES = 4096
_MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_SYMBOL_RE = re.compile(r"[A-Z0-9\-_.]{1,20}")
_DIGITS_RE = re.compile(r"[0-9]{1,20}")
_KLINES_KEYS = ("symbol", "interval", "startTime", "endTime", "limit")


class BinanceError(VenueError):
    """A refusal: ``status`` (HTTP), ``code`` and ``msg`` as Binance sends them."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg

    def body(self) -> bytes:
        return json.dumps({"code": self.code, "msg": self.msg}).encode()

    @property
    def fault(self) -> str:
        return f"code {self.code}"


@dataclass(frozen=True, slots=True)
class KlinesParams:
    """A validated klines request (times in epoch ms, inclusive, as Binance)."""

    symbol: str
    interval: str
    start_time: int | None
    end_time: int | None
    limit: int

    @property
    def interval_s(self) -> int:
        return INTERVALS[self.interval]


def _single(pairs: Iterable[tuple[str, str]], allowed: tuple[str, ...]) -> dict[str, str]:
    """One value per key; unknown or repeated keys are refused like Binance does."""
    seen: dict[str, str] = {}
    count = 0
    for key, value in pairs:
        count += 1
        if key in seen:
            raise BinanceError(400, -1101, "Duplicate values for a parameter detected.")
        seen[key] = value
    unknown = [k for k in seen if k not in allowed]
    if unknown:
        read = count - len(unknown)
        raise BinanceError(
            400,
            -1104,
            f"Not all sent parameters were read; read '{read}' parameter(s) but "
            f"was sent '{count}'.",
        )
    return seen


def _mandatory(values: dict[str, str], key: str) -> str:
    value = values.get(key)
    if not value:
        raise BinanceError(
            400,
            -1102,
            f"Mandatory parameter '{key}' was not sent, was empty/null, or malformed.",
        )
    return value


def _symbol(value: str, key: str = "symbol") -> str:
    if not _SYMBOL_RE.fullmatch(value):
        raise BinanceError(
            400,
            -1100,
            f"Illegal characters found in parameter '{key}'; "
            "legal range is '^[A-Z0-9-_.]{1,20}$'.",
        )
    return value


def _number(values: dict[str, str], key: str, maximum: int) -> int | None:
    value = values.get(key)
    if value is None:
        return None
    if not _DIGITS_RE.fullmatch(value):
        raise BinanceError(
            400,
            -1100,
            f"Illegal characters found in parameter '{key}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    number = int(value)
    if number > maximum:
        raise BinanceError(400, -1130, f"Data sent for parameter '{key}' is not valid.")
    return number


def parse_klines_params(
    pairs: Iterable[tuple[str, str]], *, default_limit: int = 500, max_limit: int = 1000
) -> KlinesParams:
    """Validate ``GET /api/v3/klines`` (or ``/fapi/v1/klines``: ``max_limit=1500``) query
    pairs (symbol existence is checked later)."""
    values = _single(pairs, _KLINES_KEYS)
    symbol = _symbol(_mandatory(values, "symbol"))
    interval = _mandatory(values, "interval")
    if interval not in INTERVALS:
        raise BinanceError(400, -1120, "Invalid interval.")
    start = _number(values, "startTime", _MAX_TIME_MS)
    end = _number(values, "endTime", _MAX_TIME_MS)
    limit = _number(values, "limit", 10**9)
    if limit is None:
        limit = default_limit
    if not 1 <= limit <= max_limit:
        raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
    if start is not None and end is not None and start > end:
        raise BinanceError(400, -1023, "Start time is greater than end time.")
    return KlinesParams(symbol, interval, start, end, limit)


def parse_exchange_info_params(pairs: Iterable[tuple[str, str]]) -> list[str] | None:
    """Symbols asked via ``symbol=X`` or ``symbols=["X","Y"]``; ``None`` = all."""
    values = _single(pairs, ("symbol", "symbols", "permissions", "showPermissionSets"))
    if "symbol" in values and "symbols" in values:
        raise BinanceError(400, -1128, "Combination of optional parameters invalid.")
    if "symbol" in values:
        return [_symbol(_mandatory(values, "symbol"))]
    if "symbols" in values:
        try:
            parsed = json.loads(values["symbols"])
        except ValueError:
            parsed = None
        if not isinstance(parsed, list) or not parsed or len(parsed) > 100:
            raise BinanceError(400, -1100, "Illegal characters found in parameter 'symbols'.")
        if not all(isinstance(s, str) for s in parsed):
            raise BinanceError(400, -1100, "Illegal characters found in parameter 'symbols'.")
        return [_symbol(s, "symbols") for s in parsed]
    return None
