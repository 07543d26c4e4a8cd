"""Which bulk-archive files a backfill reads (pure, no I/O).

Binance publishes closed klines as one zipped CSV per UTC month and per UTC day. For the
missing ranges of a backfill the plan is: every whole UTC month inside a missing range whose
file is published by now → its monthly file; of what is left, every whole UTC day whose file
is published by now → its daily file; the rest (partial days at the edges, the forming day,
days not yet published) stays for REST. Files are published some time after their period
ends — a day's file the next day, a month's in the first days of the next month — so a
period is planned only once ``now`` is ``*_delay_s`` past its end (a file asked for too early
is a 404, which falls back to REST: the delays only avoid wasted requests).

Conventions: epoch seconds, half-open ranges, UTC calendar periods. The windows returned are
sorted, disjoint, each inside one missing range, each a whole period.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from qmtl.runtime.sdk.history_coverage import Range, merge_ranges

__all__ = [
    "ARCHIVE_TIMEFRAMES",
    "DAILY_DELAY_S",
    "MONTHLY_DELAY_S",
    "ArchivePeriod",
    "ArchiveWindow",
    "archive_prefix",
    "archived_timeframe",
    "plan_archive_windows",
]

ArchivePeriod = Literal["monthly", "daily"]

#: Timeframes Binance archives whose bars divide a UTC day (a day or month file then holds
#: whole bars). ``1s`` exists for spot only.
ARCHIVE_TIMEFRAMES: Final[tuple[str, ...]] = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d",
)  # fmt: skip
#: A day's file is asked for once this long after the day ended (seconds).
DAILY_DELAY_S: Final[int] = 86_400
#: A month's file is asked for once this long after the month ended (seconds).
MONTHLY_DELAY_S: Final[int] = 3 * 86_400
_DAY: Final[int] = 86_400


def archive_prefix(exchange_id: str, market_type: str) -> str | None:
    """The archive tree of a ccxt exchange id and market type (``data/spot``,
    ``data/futures/um``), or ``None`` where none is published (every other exchange, Binance
    margin and options, COIN-M). ``binance`` with ``swap``/``future`` is ccxt's default
    linear (USDⓈ-M) sub-type; ``binanceusdm`` is USDⓈ-M whatever the market type says."""
    if exchange_id == "binanceusdm":
        return "data/futures/um"
    if exchange_id == "binance":
        if market_type == "spot":
            return "data/spot"
        if market_type in ("swap", "future"):
            return "data/futures/um"
    return None


def archived_timeframe(timeframe: str, prefix: str) -> bool:
    """Whether the archive tree ``prefix`` holds files of ``timeframe``."""
    return timeframe in ARCHIVE_TIMEFRAMES and (timeframe != "1s" or prefix == "data/spot")


@dataclass(frozen=True, slots=True)
class ArchiveWindow:
    """One planned file: its ``period`` and the whole UTC month or day (bar open times)."""

    period: ArchivePeriod
    window: Range


def _month_start(epoch_s: int) -> int:
    d = datetime.fromtimestamp(epoch_s, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def _next_month(start: int) -> int:
    d = datetime.fromtimestamp(start, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def _months(span: Range) -> Iterator[Range]:
    """Whole UTC months inside ``span``."""
    start = _month_start(span.start)
    if start < span.start:
        start = _next_month(start)
    while (end := _next_month(start)) <= span.end:
        yield Range(start, end)
        start = end


def _days(span: Range) -> Iterator[Range]:
    """Whole UTC days inside ``span``."""
    start = -(-span.start // _DAY) * _DAY
    while start + _DAY <= span.end:
        yield Range(start, start + _DAY)
        start += _DAY


def plan_archive_windows(
    missing: Sequence[Range],
    *,
    now: float,
    monthly: bool = True,
    daily_delay_s: int = DAILY_DELAY_S,
    monthly_delay_s: int = MONTHLY_DELAY_S,
) -> list[ArchiveWindow]:
    """The archive files covering ``missing`` (module docstring). ``monthly=False`` plans
    daily files only (1 s bars: a month of them is 2.6 million rows in one file)."""
    plan: list[ArchiveWindow] = []
    for span in merge_ranges(missing, 1):
        months = [m for m in _months(span) if m.end + monthly_delay_s <= now] if monthly else []
        cursor = span.start
        for month in [*months, None]:  # the days before each month, then after the last
            stop = span.end if month is None else month.start
            if cursor < stop:
                plan += [
                    ArchiveWindow("daily", day)
                    for day in _days(Range(cursor, stop))
                    if day.end + daily_delay_s <= now
                ]
            if month is not None:
                plan.append(ArchiveWindow("monthly", month))
                cursor = month.end
    return plan
