"""What the simulator was asked and what it answered, for tests to assert on.

Every REST request under ``/api/`` is recorded (rejected and failed ones included); klines
requests also record their parameters and the bar window served, so a test can say "this
window was fetched exactly once" or "no 429 happened". Debug routes (``/_sim/...``) and the
websocket are not recorded. Times are the simulator clock in epoch milliseconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

__all__ = ["KlinesRecord", "RequestLog", "RequestRecord"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One REST request: path, HTTP status, weight charged (0 when rejected), time (ms)."""

    path: str
    status: int
    weight: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class KlinesRecord:
    """One klines request as sent (``None`` = parameter absent or unparseable) and the bars
    served: ``first_open_ms``/``last_open_ms``/``rows`` (``rows == 0`` and ``None`` bounds for
    an empty page or an error)."""

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


class RequestLog:
    """Append-only log with query helpers. Not thread-safe (one event loop)."""

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

    def count(self, path: str | None = None, *, status: int | None = None) -> int:
        """Requests to ``path`` (any path when ``None``), optionally with that ``status``."""
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path) and (status is None or r.status == status)
        )

    def by_path(self) -> Counter[str]:
        return Counter(r.path for r in self.requests)

    def statuses(self) -> Counter[int]:
        return Counter(r.status for r in self.requests)

    def klines_count(
        self,
        symbol: str,
        interval: str,
        *,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int | None = None,
    ) -> int:
        """Klines requests with exactly these parameters (``None`` here = any value)."""
        return sum(
            1
            for k in self.klines
            if k.symbol == symbol
            and k.interval == interval
            and (start_time is None or k.start_time == start_time)
            and (end_time is None or k.end_time == end_time)
            and (limit is None or k.limit == limit)
        )

    def klines_by_params(
        self,
    ) -> Counter[tuple[str | None, str | None, int | None, int | None, int | None]]:
        """How often each ``(symbol, interval, startTime, endTime, limit)`` was asked."""
        return Counter(
            (k.symbol, k.interval, k.start_time, k.end_time, k.limit) for k in self.klines
        )

    def served_windows(
        self, symbol: str | None = None, interval: str | None = None
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
        ]

    def to_json(self) -> dict[str, object]:
        """Plain data for the ``GET /_sim/requests`` debug route."""
        return {
            "by_path": dict(self.by_path()),
            "statuses": {str(k): v for k, v in self.statuses().items()},
            "requests": [asdict(r) for r in self.requests],
            "klines": [asdict(k) for k in self.klines],
        }
