"""What the simulated exchange does: symbols, limits and injected faults (pure, frozen).

Build one with keywords, :meth:`Scenario.from_dict` or :meth:`Scenario.from_yaml`. The loaders
reject unknown keys (suggesting the nearest valid one) and name the key path of every error,
e.g. ``symbols.BTC/USDT.halts[0]: end must be > start``.

Time conventions: ``listing``, ``halts`` and malformed/short/empty/duplicate windows are *bar
time* (which bars exist / which pages break), as epoch **seconds** or ISO-8601 strings; outage
spans are *wall time* of the simulator's clock, also in seconds; ``now`` is epoch
**milliseconds** (Binance's unit) or an ISO string. Spans are half-open ``[start, end)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from qmtl.runtime.sdk.errors import ConfigError
from qmtl.runtime.sdk.timestamps import to_epoch_seconds
from qmtl.services.exchange_sim.scenario_parse import Reader

__all__ = [
    "MALFORMED_KINDS",
    "MalformedKind",
    "MalformedWindow",
    "MarketScenario",
    "Outage",
    "PageFault",
    "Scenario",
    "TimeSpan",
]

MalformedKind = Literal["truncated_json", "wrong_types", "nan_strings"]
MALFORMED_KINDS: tuple[str, ...] = ("truncated_json", "wrong_types", "nan_strings")
_SYMBOL_RE = re.compile(r"([A-Z0-9]{1,10})/([A-Z0-9]{1,10})")


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: must be an integer >= 1 or null, got {value!r}")


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
    """klines answer ``status`` (5xx) during the wall-time ``span``, or for the next
    ``next_requests`` klines requests of the symbol (exactly one of the two is set).
    ``body="html"`` mimics a gateway page (ccxt: ``ExchangeNotAvailable``); ``"json"`` sends
    Binance's ``{"code": -1001, ...}``."""

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
        _check_count("next_requests", self.next_requests)
        if self.body not in ("html", "json"):
            raise ValueError(f"body: must be 'html' or 'json', got {self.body!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PageFault:
    """A page whose bars intersect the bar-time ``span`` is altered; with ``requests`` set,
    only the first that many such requests are (later ones are served correctly).

    ``short_pages`` drop the page's newest bar (one bar fewer than asked); ``duplicates``
    repeat the first bar inside the span right after itself and trim the page back to
    ``limit`` rows (so the newest bar moves to the next page).

    ``empty_pages`` answer HTTP 200 with ``[]`` when the *asked* window intersects the span
    (:func:`~qmtl.services.exchange_sim.klines.asked_window`: the ``limit`` bar slots from
    ``startTime``, or up to ``endTime``/now, whether or not bars exist there). Real
    exchanges do this transiently (a lagging replica, a cache miss): an empty answer is not
    proof that the window has no bars, and a client that records it as known-empty loses
    those bars for good — the fault exists to test that clients ask again."""

    span: TimeSpan
    requests: int | None = None

    def __post_init__(self) -> None:
        _check_count("requests", self.requests)


@dataclass(frozen=True, kw_only=True, slots=True)
class MalformedWindow(PageFault):
    """A :class:`PageFault` whose pages come back broken, with HTTP 200:

    - ``truncated_json``: the body cut in half (not parseable);
    - ``wrong_types``: rows in the span alternate between an object ``{"t", "o", ...}``
      where an array belongs and an array whose open price is a one-element list;
    - ``nan_strings``: open/high/low/close of rows in the span are ``"NaN"``.
    """

    kind: MalformedKind

    def __post_init__(self) -> None:
        _check_count("requests", self.requests)
        if self.kind not in MALFORMED_KINDS:
            raise ValueError(
                f"kind: must be one of {', '.join(MALFORMED_KINDS)}, got {self.kind!r}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class MarketScenario:
    """One symbol: ``listing`` (epoch s; ``None`` = listed since the epoch), halts with no
    bars (known-empty), and the faults its klines requests suffer (checked in this order:
    outage, empty page, then short page, duplicates and malformed payload together)."""

    symbol: str
    listing: int | None = None
    halts: tuple[TimeSpan, ...] = ()
    outages: tuple[Outage, ...] = ()
    malformed: tuple[MalformedWindow, ...] = ()
    short_pages: tuple[PageFault, ...] = ()
    empty_pages: tuple[PageFault, ...] = ()
    duplicates: tuple[PageFault, ...] = ()
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or not _SYMBOL_RE.fullmatch(self.symbol):
            raise ValueError(
                f"symbol: expected a ccxt spot symbol like 'BTC/USDT', got {self.symbol!r}"
            )
        if self.listing is not None and self.listing < 0:
            raise ValueError(f"listing: must be >= 0, got {self.listing}")
        if isinstance(self.latency_ms, bool) or not isinstance(self.latency_ms, int | float):
            raise ValueError(f"latency_ms: must be a number, got {self.latency_ms!r}")
        if not 0 <= self.latency_ms <= 60_000:
            raise ValueError(f"latency_ms: must be within [0, 60000], got {self.latency_ms}")

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]

    @property
    def exchange_symbol(self) -> str:
        """Binance's id: ``BTC/USDT`` → ``BTCUSDT``."""
        return self.base + self.quote


def _default_markets() -> tuple[MarketScenario, ...]:
    return (MarketScenario(symbol="BTC/USDT"), MarketScenario(symbol="ETH/USDT"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    """The whole simulated exchange.

    Weight limits follow Binance spot: ``weight_limit_per_minute`` per fixed calendar minute;
    over it → 429 with ``Retry-After`` (``retry_after_s``, or ``None`` = seconds until the
    minute ends); after ``ban_after_violations`` 429s in one minute the next request starts
    a ``ban_seconds`` ban during which everything gets 418. ``latency_ms`` delays every REST
    answer (wall time). ``now_ms`` pins the exchange's "current time" (``None`` = the clock).
    """

    seed: int = 0
    markets: tuple[MarketScenario, ...] = field(default_factory=_default_markets)
    weight_limit_per_minute: int = 6000
    ban_after_violations: int = 3
    retry_after_s: int | None = None
    ban_seconds: int = 120
    latency_ms: float = 0.0
    now_ms: int | None = None
    ws_push_interval_ms: int = 200

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, object, int], ...] = (
            ("seed", self.seed, 0),
            ("weight_limit_per_minute", self.weight_limit_per_minute, 1),
            ("ban_after_violations", self.ban_after_violations, 0),
            ("ban_seconds", self.ban_seconds, 1),
            ("ws_push_interval_ms", self.ws_push_interval_ms, 10),
        )
        for name, value, minimum in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
        _check_count("retry_after_s", self.retry_after_s)
        if self.now_ms is not None and (isinstance(self.now_ms, bool) or self.now_ms < 0):
            raise ValueError(f"now: must be epoch milliseconds >= 0, got {self.now_ms!r}")
        if isinstance(self.latency_ms, bool) or not isinstance(self.latency_ms, int | float):
            raise ValueError(f"latency_ms: must be a number, got {self.latency_ms!r}")
        if not 0 <= self.latency_ms <= 60_000:
            raise ValueError(f"latency_ms: must be within [0, 60000], got {self.latency_ms}")
        if not self.markets:
            raise ValueError("symbols: at least one symbol is required")
        ids = [m.exchange_symbol for m in self.markets]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"symbols: duplicate exchange symbols {dupes}")

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(m.symbol for m in self.markets)

    def market(self, exchange_symbol: str) -> MarketScenario | None:
        """The market whose Binance id is ``exchange_symbol`` (``BTCUSDT``), if any."""
        for m in self.markets:
            if m.exchange_symbol == exchange_symbol:
                return m
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """Build from plain data (as YAML gives); errors name the key path."""
        return _parse_scenario(Reader(data, ""))

    @classmethod
    def from_yaml(cls, source: str | Path) -> Scenario:
        """From a YAML file (a ``Path``, or a string naming an existing file) or YAML text."""
        if isinstance(source, Path) or _names_a_file(source):
            text = Path(source).read_text(encoding="utf-8")
        else:
            text = source
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"scenario: invalid YAML: {exc}"]) from None
        if data is None:
            data = {}
        if isinstance(data, str) and isinstance(source, str) and "\n" not in source:
            raise ConfigError([f"scenario: {source!r} is neither a file nor a YAML mapping"])
        if not isinstance(data, Mapping):
            raise ConfigError(["scenario: the top level must be a mapping"])
        return cls.from_dict(data)


def _names_a_file(text: str) -> bool:
    if "\n" in text or "\x00" in text or len(text) > 4096:
        return False
    try:
        return Path(text).is_file()
    except OSError:
        return False


def _seconds(value: object, path: str) -> int:
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # YAML timestamps without an offset are UTC
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, int | str | datetime):
        raise ConfigError([f"{path}: expected epoch seconds or an ISO-8601 time, got {value!r}"])
    try:
        return to_epoch_seconds(value, name=path)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None


def _span(r: Reader) -> TimeSpan:
    start, end = (
        _seconds(r.required("start"), r.at("start")),
        _seconds(r.required("end"), r.at("end")),
    )
    return r.build(TimeSpan, start=start, end=end)


def _span_item(item: object, path: str) -> TimeSpan:
    """``[start, end]`` or ``{start, end}``."""
    if isinstance(item, list | tuple):
        if len(item) != 2:
            raise ConfigError([f"{path}: expected [start, end]"])
        return Reader.build_at(
            path,
            TimeSpan,
            start=_seconds(item[0], f"{path}[0]"),
            end=_seconds(item[1], f"{path}[1]"),
        )
    r = Reader.of(item, path)
    span = _span(r)
    r.done()
    return span


def _outage(r: Reader) -> Outage:
    if r.has("start") or r.has("end"):
        span: TimeSpan | None = _span(r)
    else:
        span = None
        r.get("start"), r.get("end")  # known keys, for typo suggestions
    outage = r.build(
        Outage,
        status=r.integer("status", 503),
        span=span,
        next_requests=r.optional_int("next_requests"),
        body=r.string("body", "html"),
    )
    r.done()
    return outage


def _page_fault(r: Reader) -> PageFault:
    fault = r.build(PageFault, span=_span(r), requests=r.optional_int("requests"))
    r.done()
    return fault


def _malformed(r: Reader) -> MalformedWindow:
    fault = r.build(
        MalformedWindow,
        span=_span(r),
        requests=r.optional_int("requests"),
        kind=r.string("kind", None),
    )
    r.done()
    return fault


def _market(symbol: str, r: Reader) -> MarketScenario:
    listing = r.get("listing")
    market = r.build(
        MarketScenario,
        symbol=symbol,
        listing=None if listing is None else _seconds(listing, r.at("listing")),
        halts=tuple(_span_item(x, p) for x, p in r.items("halts")),
        outages=tuple(_outage(Reader.of(x, p)) for x, p in r.items("outages")),
        malformed=tuple(_malformed(Reader.of(x, p)) for x, p in r.items("malformed")),
        short_pages=tuple(_page_fault(Reader.of(x, p)) for x, p in r.items("short_pages")),
        empty_pages=tuple(_page_fault(Reader.of(x, p)) for x, p in r.items("empty_pages")),
        duplicates=tuple(_page_fault(Reader.of(x, p)) for x, p in r.items("duplicates")),
        latency_ms=r.number("latency_ms", 0.0),
    )
    r.done()
    return market


def _parse_scenario(r: Reader) -> Scenario:
    raw = r.get("symbols")
    if raw is None:
        markets = _default_markets()
    elif isinstance(raw, list):
        markets = tuple(
            _market(s, Reader.of({}, f"symbols[{i}]"))
            if isinstance(s, str)
            else _bad_symbol(s, f"symbols[{i}]")
            for i, s in enumerate(raw)
        )
    elif isinstance(raw, Mapping):
        markets = tuple(
            _market(str(s), Reader.of(v if v is not None else {}, f"symbols.{s}"))
            for s, v in raw.items()
        )
    else:
        raise ConfigError(["symbols: expected a list of symbols or a mapping symbol -> settings"])
    now = r.get("now")
    if now is None or (isinstance(now, int) and not isinstance(now, bool)):
        now_ms = now
    else:
        now_ms = _seconds(now, r.at("now")) * 1000
    scenario = r.build(
        Scenario,
        seed=r.integer("seed", 0),
        markets=markets,
        weight_limit_per_minute=r.integer("weight_limit_per_minute", 6000),
        ban_after_violations=r.integer("ban_after_violations", 3),
        retry_after_s=r.optional_int("retry_after_s"),
        ban_seconds=r.integer("ban_seconds", 120),
        latency_ms=r.number("latency_ms", 0.0),
        now_ms=now_ms,
        ws_push_interval_ms=r.integer("ws_push_interval_ms", 200),
    )
    r.done()
    return scenario


def _bad_symbol(value: object, path: str) -> MarketScenario:
    raise ConfigError([f"{path}: expected a symbol string like 'BTC/USDT', got {value!r}"])
