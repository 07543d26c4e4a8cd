"""Names of Binance public-data kline archives, as ``data.binance.vision`` lays them out (pure).

A file is one market's klines of one interval over one UTC day or calendar month::

    /data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02-03.zip
    /data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip
    /data/futures/um/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2024-02.zip   (USD-M futures)

and each has a sibling ``<file>.zip.CHECKSUM``. ``<SYMBOL>`` is Binance's exchange id
(``BTCUSDT``; spot and USD-M alike). Parsing is strict and total: any path that is not
exactly such a name (another interval, a date like ``2024-02-30``, a file name disagreeing
with its directories, ``..``, a huge name) parses to ``None`` — the route answers 404 from
that alone, so hostile input never reaches any arithmetic.

Periods are half-open ``[start_ms, end_ms)`` in epoch **milliseconds**, UTC.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

from qmtl.runtime.sdk.node_id import TIMEFRAMES
from qmtl.services.exchange_sim.scenario_venues import VenueId

__all__ = [
    "ARCHIVE_INTERVALS",
    "ARCHIVE_PREFIX",
    "MICROSECONDS_FROM_MS",
    "USDM_ARCHIVE_INTERVALS",
    "ArchiveMarket",
    "ArchiveName",
    "ArchivePeriod",
    "ArchiveRequest",
    "parse_archive_path",
    "parse_file_name",
]

ArchiveMarket = Literal["spot", "um"]
ArchivePeriod = Literal["daily", "monthly"]

#: Every archive path starts with this (the rest of the host is the venues' REST APIs).
ARCHIVE_PREFIX = "/data/"
#: Spot files whose period starts at or after 2025-01-01T00:00Z carry open/close times in
#: microseconds (Binance switched then); earlier spot files and every USD-M file, in ms.
MICROSECONDS_FROM_MS = 1_735_689_600_000
#: Spot archive intervals → seconds: the REST klines intervals that divide a day (no ``1w``).
ARCHIVE_INTERVALS: dict[str, int] = {k: v for k, v in TIMEFRAMES.items() if 86_400 % v == 0}
#: USD-M archive intervals: the same without ``1s`` (Binance has no 1s futures klines).
USDM_ARCHIVE_INTERVALS: dict[str, int] = {k: v for k, v in ARCHIVE_INTERVALS.items() if v > 1}

_DAY_MS = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MAX_PATH = 256  # the longest valid path is ~110 characters
_SYMBOL = "[A-Z0-9]{1,20}"
_INTERVAL = "[0-9]{1,2}[smhd]"
_FILE_RE = re.compile(
    rf"(?P<symbol>{_SYMBOL})-(?P<interval>{_INTERVAL})-"
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2}))?\.zip"
)
_PATH_RE = re.compile(
    r"/data/(?P<market>spot|futures/um)/(?P<period>daily|monthly)/klines/"
    rf"(?P<symbol>{_SYMBOL})/(?P<interval>{_INTERVAL})/(?P<file>[^/]+?)(?P<checksum>\.CHECKSUM)?"
)


@dataclass(frozen=True, slots=True)
class ArchiveName:
    """One archive file: market, period kind, symbol, interval and its UTC date (``day``
    is ``None`` for a monthly file). Only :func:`parse_archive_path` and
    :func:`parse_file_name` make valid ones; the constructor does not check."""

    market: ArchiveMarket
    period: ArchivePeriod
    symbol: str
    interval: str
    year: int
    month: int
    day: int | None

    @property
    def date_text(self) -> str:
        """``2024-02`` (monthly) or ``2024-02-03`` (daily)."""
        text = f"{self.year:04d}-{self.month:02d}"
        return text if self.day is None else f"{text}-{self.day:02d}"

    @property
    def file_name(self) -> str:
        """``BTCUSDT-1m-2024-02.zip``: what the scenario's fault lists name."""
        return f"{self.symbol}-{self.interval}-{self.date_text}.zip"

    @property
    def csv_name(self) -> str:
        """The zip's one member: ``BTCUSDT-1m-2024-02.csv``."""
        return f"{self.symbol}-{self.interval}-{self.date_text}.csv"

    @property
    def path(self) -> str:
        """The URL path of the zip (append ``.CHECKSUM`` for its checksum file)."""
        market = "spot" if self.market == "spot" else "futures/um"
        return f"/data/{market}/{self.period}/klines/{self.symbol}/{self.interval}/{self.file_name}"

    @property
    def venue(self) -> VenueId:
        """The simulated venue whose markets and bars the file holds."""
        return "binance" if self.market == "spot" else "binanceusdm"

    @property
    def interval_s(self) -> int:
        return ARCHIVE_INTERVALS[self.interval]

    @property
    def start_ms(self) -> int:
        """The period's first instant (epoch ms, UTC midnight)."""
        days = date(self.year, self.month, self.day or 1).toordinal() - _EPOCH_ORDINAL
        return days * _DAY_MS

    @property
    def end_ms(self) -> int:
        """The period's end, exclusive (the next day's or month's first instant)."""
        days = 1 if self.day is not None else calendar.monthrange(self.year, self.month)[1]
        return self.start_ms + days * _DAY_MS

    @property
    def microseconds(self) -> bool:
        """Whether its times are in µs (spot files from 2025-01-01 on), else ms."""
        return self.market == "spot" and self.start_ms >= MICROSECONDS_FROM_MS

    @property
    def has_header(self) -> bool:
        """USD-M files start with a header row; spot files have none."""
        return self.market == "um"


@dataclass(frozen=True, slots=True)
class ArchiveRequest:
    """A parsed archive path: the file, and whether its ``.CHECKSUM`` was asked for."""

    name: ArchiveName
    checksum: bool


def _date_parts(match: re.Match[str]) -> tuple[int, int, int | None] | None:
    year, month = int(match["year"]), int(match["month"])
    day = None if match["day"] is None else int(match["day"])
    if year < 1 or not 1 <= month <= 12:
        return None
    if day is not None and not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return year, month, day


def parse_file_name(
    name: str, market: ArchiveMarket = "spot"
) -> tuple[str, str, int, int, int | None] | None:
    """``(symbol, interval, year, month, day)`` of a file name like ``BTCUSDT-1m-2024-02.zip``
    (``day`` ``None`` for a monthly one) with an interval ``market`` archives and a real
    calendar date; ``None`` for anything else."""
    if len(name) > _MAX_PATH:
        return None
    match = _FILE_RE.fullmatch(name)
    if match is None:
        return None
    intervals = ARCHIVE_INTERVALS if market == "spot" else USDM_ARCHIVE_INTERVALS
    if match["interval"] not in intervals:
        return None
    parts = _date_parts(match)
    if parts is None:
        return None
    return (match["symbol"], match["interval"], *parts)


def parse_archive_path(path: str) -> ArchiveRequest | None:
    """The archive file a URL path names, or ``None`` when it names none (see the module
    docstring: the directories must agree with the file name, daily files live under
    ``daily/`` with a ``YYYY-MM-DD`` date, monthly under ``monthly/`` with ``YYYY-MM``)."""
    if len(path) > _MAX_PATH:
        return None
    match = _PATH_RE.fullmatch(path)
    if match is None:
        return None
    market: ArchiveMarket = "spot" if match["market"] == "spot" else "um"
    parsed = parse_file_name(match["file"], market)
    if parsed is None:
        return None
    symbol, interval, year, month, day = parsed
    period: ArchivePeriod = "monthly" if day is None else "daily"
    if (symbol, interval, period) != (match["symbol"], match["interval"], match["period"]):
        return None
    name = ArchiveName(market, period, symbol, interval, year, month, day)
    return ArchiveRequest(name, match["checksum"] is not None)
