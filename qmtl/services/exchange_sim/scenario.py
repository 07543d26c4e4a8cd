"""What the simulated exchange does: venues, symbols, limits and injected faults (pure, frozen).

Build one with keywords, :meth:`Scenario.from_dict` or :meth:`Scenario.from_yaml`. The loaders
(:mod:`~qmtl.services.exchange_sim.scenario_load`) reject unknown keys (suggesting the nearest
valid one) and name the key path of every error, e.g. ``symbols.BTC/USDT.halts[0]: end must
be > start``.

Shape (every key optional)::

    seed: 7
    now: "2024-03-01T00:00:00Z"        # pin the exchange's clock (epoch ms or ISO)
    latency_ms: 5                      # every REST answer, every venue
    weight_limit_per_minute: 6000      # Binance spot (or under venues.binance; not both)
    symbols:                           # markets of every venue (USD-M: their perpetuals)
      BTC/USDT: {listing: 2024-01-01, halts: [[1706745600, 1706767200]]}
      ETH/USDT: {history_depth_bars: 1000}
    venues:
      binance: {history_depth_bars: 50000, latency_ms: 0}
      binanceusdm:
        weight_limit_per_minute: 2400
        symbols: {BTC/USDT:USDT: {listing: 2019-09-08}}
      okx:
        rate_limits: {candles: 40, history_candles: 20, instruments: 20, time: 10}
        history_candles_max_limit: 100
        latency_ms: 30
    archive:                           # Binance public-data files under /data/
      publish_delay: {daily: 3600, monthly: 86400}
      missing: ["BTCUSDT-1m-2024-02.zip"]
      incomplete: {"BTCUSDT-1m-2024-01-05.zip": [["2024-01-05T03:00Z", "2024-01-05T04:00Z"]]}

Time conventions: ``listing``, ``halts``, malformed/short/empty/duplicate windows and archive
``incomplete`` spans are *bar time* (which bars exist / which pages break), as epoch
**seconds** or ISO-8601 strings; outage spans are *wall time* of the simulator's clock, also
in seconds; ``now`` is epoch **milliseconds** (Binance's unit) or an ISO string. Spans are
half-open ``[start, end)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qmtl.services.exchange_sim._scenario_markets import (
    MALFORMED_KINDS,
    MalformedKind,
    MalformedWindow,
    MarketScenario,
    Outage,
    PageFault,
    TimeSpan,
    check_count,
    check_latency,
)
from qmtl.services.exchange_sim.scenario_archive import ArchiveSettings
from qmtl.services.exchange_sim.scenario_venues import (
    USDM_SETTLE_ASSETS,
    VENUE_IDS,
    VenueId,
    Venues,
    check_int,
)

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


def _default_markets() -> tuple[MarketScenario, ...]:
    return (MarketScenario(symbol="BTC/USDT"), MarketScenario(symbol="ETH/USDT"))


def _venue_id(market: MarketScenario, venue: VenueId) -> str:
    return market.inst_id if venue == "okx" else market.exchange_symbol


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    """The whole simulated exchange.

    Binance spot's weight limits are top-level fields: ``weight_limit_per_minute`` per
    fixed calendar minute; over it → 429 with ``Retry-After`` (``retry_after_s``, or
    ``None`` = seconds until the minute ends); after ``ban_after_violations`` 429s in one
    minute the next request starts a ``ban_seconds`` ban during which everything gets 418.
    The other venues' limits are in ``venues``
    (:mod:`~qmtl.services.exchange_sim.scenario_venues`). ``latency_ms`` delays every REST
    answer (wall time) unless a venue sets its own. ``now_ms`` pins the exchange's "current
    time" (``None`` = the clock). ``markets`` are every venue's markets unless a venue lists
    its own; Binance USD-M gets the USDT/USDC ones as perpetuals (``BTC/USDT`` →
    ``BTC/USDT:USDT``, same listing, halts and faults, bars of their own). ``archive`` is
    what Binance's public-data archive (``/data/...``) serves
    (:class:`~qmtl.services.exchange_sim.scenario_archive.ArchiveSettings`).
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
    venues: Venues = field(default_factory=Venues)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    _resolved: dict[str, tuple[MarketScenario, ...]] = field(init=False, repr=False, compare=False)
    _index: dict[str, dict[str, MarketScenario]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0)
        check_int("weight_limit_per_minute", self.weight_limit_per_minute, 1)
        check_int("ban_after_violations", self.ban_after_violations, 0)
        check_int("ban_seconds", self.ban_seconds, 1)
        check_int("ws_push_interval_ms", self.ws_push_interval_ms, 10)
        check_count("retry_after_s", self.retry_after_s)
        if self.now_ms is not None and (isinstance(self.now_ms, bool) or self.now_ms < 0):
            raise ValueError(f"now: must be epoch milliseconds >= 0, got {self.now_ms!r}")
        check_latency("latency_ms", self.latency_ms)
        if not self.markets:
            raise ValueError("symbols: at least one symbol is required")
        for market in self.markets:
            if market.settle is not None:
                raise ValueError(
                    f"symbols: top-level symbols are spot symbols like 'BTC/USDT' (list "
                    f"perpetuals under venues.binanceusdm.symbols), got {market.symbol!r}"
                )
        resolved = {venue: self._resolve(venue) for venue in VENUE_IDS}
        index: dict[str, dict[str, MarketScenario]] = {}
        for venue, markets in resolved.items():
            ids = [_venue_id(m, venue) for m in markets]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                where = (
                    "symbols"
                    if self.venues.settings(venue).markets is None
                    else (f"venues.{venue}.symbols")
                )
                raise ValueError(f"{where}: duplicate exchange symbols {dupes}")
            index[venue] = dict(zip(ids, markets, strict=True))
        object.__setattr__(self, "_resolved", resolved)
        object.__setattr__(self, "_index", index)

    def _resolve(self, venue: VenueId) -> tuple[MarketScenario, ...]:
        settings = self.venues.settings(venue)
        markets = settings.markets
        if markets is None:
            markets = self.markets
            if venue == "binanceusdm":
                markets = tuple(
                    replace(m, symbol=f"{m.symbol}:{m.quote}")
                    for m in markets
                    if m.quote in USDM_SETTLE_ASSETS
                )
        depth = settings.history_depth_bars
        if depth is None:
            return markets
        return tuple(
            m if m.history_depth_bars is not None else replace(m, history_depth_bars=depth)
            for m in markets
        )

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(m.symbol for m in self.markets)

    def venue_markets(self, venue: VenueId) -> tuple[MarketScenario, ...]:
        """The markets ``venue`` lists, with the venue's defaults applied."""
        return self._resolved[venue]

    def market(self, exchange_symbol: str, venue: VenueId = "binance") -> MarketScenario | None:
        """The market of ``venue`` whose exchange id is ``exchange_symbol`` (Binance spot and
        USD-M: ``BTCUSDT``; OKX: ``BTC-USDT``), if any."""
        return self._index[venue].get(exchange_symbol)

    def venue_latency_ms(self, venue: VenueId) -> float:
        """Latency of every REST answer of ``venue``: its own, else the top-level one."""
        own = self.venues.settings(venue).latency_ms
        return self.latency_ms if own is None else own

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """Build from plain data (as YAML gives); errors name the key path."""
        from qmtl.services.exchange_sim.scenario_load import scenario_from_dict

        return scenario_from_dict(data)

    @classmethod
    def from_yaml(cls, source: str | Path) -> Scenario:
        """From a YAML file (a ``Path``, or a string naming an existing file) or YAML text."""
        from qmtl.services.exchange_sim.scenario_load import scenario_from_yaml

        return scenario_from_yaml(source)
