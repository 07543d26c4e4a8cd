"""What the simulator was asked and what it answered, for tests to assert on.

Every REST request of every venue is recorded (rejected and failed ones included) with the
venue that answered it (``binance``, ``binanceusdm``, ``okx`` — told apart by path), and so
is every request for the public-data archive (``/data/...``, 404s included) with venue
:data:`ARCHIVE_VENUE` and weight 0, so archive downloads are counted apart from REST traffic
(``count(venue=ARCHIVE_VENUE)``, ``by_venue()``); candles
requests (Binance ``klines``, OKX ``candles``/``history-candles``) also record their
parameters and the bar window served, so a test can say "this window was fetched exactly
once" or "no 429 happened on OKX". Debug routes (``/_sim/...``) and the websocket are not
recorded. Times are the simulator clock in epoch milliseconds.

Records are named tuples rather than frozen dataclasses: two of them are built for every
klines request, and a frozen dataclass pays an ``object.__setattr__`` call per field — on
the simulator's hottest path, for no behaviour a tuple lacks.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

__all__ = ["ARCHIVE_VENUE", "KlinesRecord", "RequestLog", "RequestRecord"]

#: The ``venue`` of archive requests (``/data/...``): no REST venue, no weight.
ARCHIVE_VENUE = "archive"


class RequestRecord(NamedTuple):
    """One request: path, HTTP status, cost charged (Binance weight; 1 per request on OKX; 0
    when rejected or not limited, and for archive files), time (ms), venue (a REST venue, or
    :data:`ARCHIVE_VENUE`) and the raw query string (what a client really sent:
    ``instType=SPOT``)."""

    path: str
    status: int
    weight: int
    at_ms: int
    venue: str = "binance"
    query: str = ""


class KlinesRecord(NamedTuple):
    """One candles request as sent (``None`` = parameter absent or unparseable) and the bars
    served: ``first_open_ms``/``last_open_ms``/``rows`` (``rows == 0`` and ``None`` bounds for
    an empty page or an error).

    ``symbol`` and ``interval`` are the venue's own (``BTCUSDT``/``1m`` on Binance,
    ``BTC-USDT``/``1m`` or ``1Dutc`` on OKX). ``start_time``/``end_time`` are the time bounds
    as sent: Binance's inclusive ``startTime``/``endTime``; OKX's exclusive ``before``/
    ``after`` (bars newer than ``before``, older than ``after``)."""

    symbol: str | None
    interval: str | None
    start_time: int | None
    end_time: int | None
    limit: int | None
    status: int
    rows: int = 0
    first_open_ms: int | None = None
    last_open_ms: int | None = None
    fault: str | None = None
    venue: str = "binance"
    path: str = "/api/v3/klines"


class RequestLog:
    """Append-only log with query helpers (``venue=None`` means every venue). Not
    thread-safe (one event loop)."""

    def __init__(self) -> None:
        self.requests: list[RequestRecord] = []
        self.klines: list[KlinesRecord] = []

    def record(self, record: RequestRecord) -> None:
        self.requests.append(record)

    def record_klines(self, record: KlinesRecord) -> None:
        self.klines.append(record)

    def reset(self) -> None:
        self.requests.clear()
        self.klines.clear()

    def count(
        self, path: str | None = None, *, status: int | None = None, venue: str | None = None
    ) -> int:
        """Requests to ``path`` (any path when ``None``), optionally with that ``status``."""
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path)
            and (status is None or r.status == status)
            and (venue is None or r.venue == venue)
        )

    def by_path(self, venue: str | None = None) -> Counter[str]:
        return Counter(r.path for r in self.requests if venue is None or r.venue == venue)

    def by_venue(self) -> Counter[str]:
        """Requests per venue, :data:`ARCHIVE_VENUE` included."""
        return Counter(r.venue for r in self.requests)

    def statuses(self, venue: str | None = None) -> Counter[int]:
        return Counter(r.status for r in self.requests if venue is None or r.venue == venue)

    def klines_count(
        self,
        symbol: str,
        interval: str,
        *,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int | None = None,
        venue: str | None = None,
    ) -> int:
        """Candles requests with exactly these parameters (``None`` here = any value)."""
        return sum(
            1
            for k in self.klines
            if k.symbol == symbol
            and k.interval == interval
            and (start_time is None or k.start_time == start_time)
            and (end_time is None or k.end_time == end_time)
            and (limit is None or k.limit == limit)
            and (venue is None or k.venue == venue)
        )

    def klines_by_params(
        self, venue: str | None = None
    ) -> Counter[tuple[str | None, str | None, int | None, int | None, int | None]]:
        """How often each ``(symbol, interval, start, end, limit)`` was asked."""
        return Counter(
            (k.symbol, k.interval, k.start_time, k.end_time, k.limit)
            for k in self.klines
            if venue is None or k.venue == venue
        )

    def served_windows(
        self, symbol: str | None = None, interval: str | None = None, *, venue: str | None = None
    ) -> list[tuple[int, int]]:
        """``(first_open_ms, last_open_ms)`` of every successful non-empty page, in order."""
        return [
            (k.first_open_ms, k.last_open_ms)
            for k in self.klines
            if k.status == 200
            and k.first_open_ms is not None
            and k.last_open_ms is not None
            and (symbol is None or k.symbol == symbol)
            and (interval is None or k.interval == interval)
            and (venue is None or k.venue == venue)
        ]

    def to_json(self) -> dict[str, object]:
        """Plain data for the ``GET /_sim/requests`` debug route."""
        return {
            "by_path": dict(self.by_path()),
            "by_venue": dict(self.by_venue()),
            "statuses": {str(k): v for k, v in self.statuses().items()},
            "requests": [r._asdict() for r in self.requests],
            "klines": [k._asdict() for k in self.klines],
        }
