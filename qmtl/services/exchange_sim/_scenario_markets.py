"""One market of a scenario and the faults its candles requests suffer (pure, frozen).

Time conventions (as for the whole scenario): ``listing``, ``halts`` and malformed/short/
empty/duplicate windows are *bar time* (which bars exist / which pages break), in epoch
**seconds**; outage spans are *wall time* of the simulator's clock, also in seconds. Spans
are half-open ``[start, end)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MALFORMED_KINDS",
    "MalformedKind",
    "MalformedWindow",
    "MarketScenario",
    "Outage",
    "PageFault",
    "TimeSpan",
    "check_count",
    "check_latency",
]

MalformedKind = Literal["truncated_json", "wrong_types", "nan_strings"]
MALFORMED_KINDS: tuple[str, ...] = ("truncated_json", "wrong_types", "nan_strings")
_ASSET = "[A-Z0-9]{1,10}"
_SYMBOL_RE = re.compile(rf"({_ASSET})/({_ASSET})(?::({_ASSET}))?")


def check_count(name: str, value: int | None) -> None:
    """``value`` is ``None`` or an integer >= 1 (``ValueError`` naming ``name`` otherwise)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: must be an integer >= 1 or null, got {value!r}")


def check_latency(name: str, value: object) -> None:
    """A latency in milliseconds within ``[0, 60000]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    if not 0 <= value <= 60_000:
        raise ValueError(f"{name}: must be within [0, 60000], got {value}")


@dataclass(frozen=True, kw_only=True, slots=True)
class TimeSpan:
    """Half-open ``[start, end)`` in epoch seconds."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"end must be > start, got [{self.start}, {self.end})")

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end

    def overlaps(self, start: float, end: float) -> bool:
        """Whether ``[start, end)`` intersects this span."""
        return start < self.end and self.start < end


@dataclass(frozen=True, kw_only=True, slots=True)
class Outage:
    """Candles requests answer ``status`` (5xx) during the wall-time ``span``, or for the next
    ``next_requests`` candles requests of the symbol (exactly one of the two is set).
    ``body="html"`` mimics a gateway page on every venue (ccxt: ``ExchangeNotAvailable``);
    ``"json"`` sends the venue's own error (Binance ``{"code": -1001, ...}``, OKX
    ``{"code": "50001", ...}``)."""

    status: int = 503
    span: TimeSpan | None = None
    next_requests: int | None = None
    body: Literal["html", "json"] = "html"

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise ValueError(f"status: must be an integer, got {self.status!r}")
        if not 500 <= self.status <= 599:
            raise ValueError(f"status: must be a 5xx status, got {self.status}")
        if (self.span is None) == (self.next_requests is None):
            raise ValueError("give either start/end (wall time) or next_requests, not both")
        check_count("next_requests", self.next_requests)
        if self.body not in ("html", "json"):
            raise ValueError(f"body: must be 'html' or 'json', got {self.body!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PageFault:
    """A page whose bars intersect the bar-time ``span`` is altered; with ``requests`` set,
    only the first that many such requests are (later ones are served correctly). Requests
    are counted per venue: each venue suffers the fault ``requests`` times.

    ``short_pages`` drop the page's newest bar (one bar fewer than asked); ``duplicates``
    repeat the first bar inside the span right after itself and trim the page back to
    ``limit`` rows (so the newest bar moves to the next page).

    ``empty_pages`` answer HTTP 200 with no rows when the *asked* window intersects the span
    (:func:`~qmtl.services.exchange_sim.klines.asked_window`: the ``limit`` bar slots the
    request reaches, whether or not bars exist there). Real exchanges do this transiently
    (a lagging replica, a cache miss): an empty answer is not proof that the window has no
    bars, and a client that records it as known-empty loses those bars for good — the fault
    exists to test that clients ask again."""

    span: TimeSpan
    requests: int | None = None

    def __post_init__(self) -> None:
        check_count("requests", self.requests)


@dataclass(frozen=True, kw_only=True, slots=True)
class MalformedWindow(PageFault):
    """A :class:`PageFault` whose pages come back broken, with HTTP 200, in the venue's own
    representation:

    - ``truncated_json``: the body (Binance's array, OKX's envelope) cut in half;
    - ``wrong_types``: rows in the span alternate between an object ``{"t", "o", ...}``
      where an array belongs and an array whose open price is a one-element list;
    - ``nan_strings``: open/high/low/close of rows in the span are ``"NaN"``.
    """

    kind: MalformedKind

    def __post_init__(self) -> None:
        check_count("requests", self.requests)
        if self.kind not in MALFORMED_KINDS:
            raise ValueError(
                f"kind: must be one of {', '.join(MALFORMED_KINDS)}, got {self.kind!r}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class MarketScenario:
    """One symbol: ``listing`` (epoch s; ``None`` = listed since the epoch), halts with no
    bars (known-empty), the faults its candles requests suffer (checked in this order:
    outage, empty page, then short page, duplicates and malformed payload together) and
    ``history_depth_bars``: when set, only the newest that many closed bars (bar slots back
    from the forming one) are served, whatever the interval — older windows answer empty,
    as an exchange with shallow history does, so a client has to know the depth from its
    exchange profile rather than infer known-empty from the answer.

    ``symbol`` is ccxt's: ``BTC/USDT`` for spot, ``BTC/USDT:USDT`` for a USDT-margined
    perpetual. Bars are a pure function of ``(seed, symbol, interval, t)``, so a spot
    symbol has the same bars on every spot venue, and a perpetual its own."""

    symbol: str
    listing: int | None = None
    halts: tuple[TimeSpan, ...] = ()
    outages: tuple[Outage, ...] = ()
    malformed: tuple[MalformedWindow, ...] = ()
    short_pages: tuple[PageFault, ...] = ()
    empty_pages: tuple[PageFault, ...] = ()
    duplicates: tuple[PageFault, ...] = ()
    latency_ms: float = 0.0
    history_depth_bars: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or not _SYMBOL_RE.fullmatch(self.symbol):
            raise ValueError(
                "symbol: expected a ccxt symbol like 'BTC/USDT' (or 'BTC/USDT:USDT' for a "
                f"perpetual), got {self.symbol!r}"
            )
        if self.listing is not None and self.listing < 0:
            raise ValueError(f"listing: must be >= 0, got {self.listing}")
        check_latency("latency_ms", self.latency_ms)
        check_count("history_depth_bars", self.history_depth_bars)

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1].split(":")[0]

    @property
    def settle(self) -> str | None:
        """The settlement asset of a perpetual (``USDT`` in ``BTC/USDT:USDT``); ``None`` for
        spot."""
        _, _, settle = self.symbol.partition(":")
        return settle or None

    @property
    def exchange_symbol(self) -> str:
        """Binance's id, spot and USD-M alike: ``BTC/USDT`` → ``BTCUSDT``."""
        return self.base + self.quote

    @property
    def inst_id(self) -> str:
        """OKX's spot instrument id: ``BTC/USDT`` → ``BTC-USDT``."""
        return f"{self.base}-{self.quote}"
