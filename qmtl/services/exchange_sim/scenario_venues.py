"""Per-venue settings of a scenario: markets, limits and latency of each wire format (pure).

The simulator speaks three venues on one port, told apart by path: Binance spot
(``/api/v3/``), Binance USD-M futures (``/fapi/v1/``) and OKX v5 (``/api/v5/``). Each has
its own budget, fault counters and, optionally, its own market list; what is not set here
comes from the scenario's top level (:class:`~qmtl.services.exchange_sim.scenario.Scenario`),
whose old keys (``weight_limit_per_minute`` …) keep meaning Binance spot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qmtl.services.exchange_sim._scenario_markets import MarketScenario, check_count, check_latency

__all__ = [
    "USDM_SETTLE_ASSETS",
    "VENUE_IDS",
    "BinanceUsdmSettings",
    "OkxRateLimits",
    "OkxSettings",
    "SpotSettings",
    "VenueId",
    "VenueSettings",
    "Venues",
    "check_int",
]

VenueId = Literal["binance", "binanceusdm", "okx"]
#: ccxt exchange ids of the simulated venues.
VENUE_IDS: tuple[VenueId, ...] = ("binance", "binanceusdm", "okx")
#: Quote assets whose spot symbols get a USD-M perpetual by default (``BTC/USDT`` →
#: ``BTC/USDT:USDT``).
USDM_SETTLE_ASSETS = ("USDT", "USDC")


def check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class VenueSettings:
    """What every venue can set.

    ``markets`` (YAML ``symbols``) replaces the venue's default market list (the top-level
    symbols; for USD-M their USDT/USDC perpetuals). ``latency_ms`` replaces the top-level
    latency for this venue's requests. ``history_depth_bars`` applies to the venue's
    markets that do not set their own.
    """

    markets: tuple[MarketScenario, ...] | None = None
    latency_ms: float | None = None
    history_depth_bars: int | None = None

    def __post_init__(self) -> None:
        self._check_common()

    def _check_common(self) -> None:
        if self.latency_ms is not None:
            check_latency("latency_ms", self.latency_ms)
        check_count("history_depth_bars", self.history_depth_bars)
        if self.markets is not None and not self.markets:
            raise ValueError("symbols: give at least one symbol, or leave the key out")


@dataclass(frozen=True, kw_only=True, slots=True)
class BinanceUsdmSettings(VenueSettings):
    """Binance USD-M futures: a weight budget of its own (Binance counts futures weight
    apart from spot; 2400/min is its published IP limit), with the same 429 → 418 rules as
    spot (:class:`~qmtl.services.exchange_sim.weights.WeightLimiter`)."""

    weight_limit_per_minute: int = 2400
    ban_after_violations: int = 3
    retry_after_s: int | None = None
    ban_seconds: int = 120

    def __post_init__(self) -> None:
        self._check_common()
        check_int("weight_limit_per_minute", self.weight_limit_per_minute, 1)
        check_int("ban_after_violations", self.ban_after_violations, 0)
        check_int("ban_seconds", self.ban_seconds, 1)
        check_count("retry_after_s", self.retry_after_s)
        for market in self.markets or ():
            _check_perpetual(market)


def _check_perpetual(market: MarketScenario) -> None:
    if market.settle is None or market.settle != market.quote:
        raise ValueError(
            f"symbols: USD-M markets are linear perpetuals like 'BTC/USDT:USDT', "
            f"got {market.symbol!r}"
        )


def _check_spot(market: MarketScenario) -> None:
    if market.settle is not None:
        raise ValueError(f"symbols: spot venues take spot symbols, got {market.symbol!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SpotSettings(VenueSettings):
    """Binance spot's venue entry: its weight knobs are the scenario's top-level ones."""

    def __post_init__(self) -> None:
        self._check_common()
        for market in self.markets or ():
            _check_spot(market)


@dataclass(frozen=True, kw_only=True, slots=True)
class OkxRateLimits:
    """OKX's per-IP request limits, each per 2 seconds (OKX publishes them per endpoint)."""

    candles: int = 40
    history_candles: int = 20
    instruments: int = 20
    time: int = 10

    def __post_init__(self) -> None:
        for name in ("candles", "history_candles", "instruments", "time"):
            check_int(name, getattr(self, name), 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class OkxSettings(VenueSettings):
    """OKX v5: per-endpoint request limits (:class:`OkxRateLimits`), page size caps
    (larger ``limit`` values are clamped, as OKX does) and how many recent bars
    ``market/candles`` serves (older ones only through ``market/history-candles``)."""

    rate_limits: OkxRateLimits = field(default_factory=OkxRateLimits)
    recent_candles: int = 1440
    candles_max_limit: int = 300
    history_candles_max_limit: int = 100

    def __post_init__(self) -> None:
        self._check_common()
        check_int("recent_candles", self.recent_candles, 1)
        check_int("candles_max_limit", self.candles_max_limit, 1)
        check_int("history_candles_max_limit", self.history_candles_max_limit, 1)
        for market in self.markets or ():
            _check_spot(market)


@dataclass(frozen=True, kw_only=True, slots=True)
class Venues:
    """Settings per venue. Binance spot's weight knobs live on the scenario itself (its
    historical top-level keys); its entry here holds what every venue can set."""

    binance: SpotSettings = field(default_factory=SpotSettings)
    binanceusdm: BinanceUsdmSettings = field(default_factory=BinanceUsdmSettings)
    okx: OkxSettings = field(default_factory=OkxSettings)

    def settings(self, venue: VenueId) -> VenueSettings:
        found: VenueSettings = getattr(self, venue)
        return found
