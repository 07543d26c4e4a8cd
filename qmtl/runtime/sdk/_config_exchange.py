"""The ``exchanges.<id>`` section of the settings: how to reach one exchange
(:class:`ExchangeAccess`, shared with the fetcher's ``CcxtBackfillConfig``), what to fill
there (:class:`ExchangeConfig`), its URL overrides and its bulk archive."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from qmtl.runtime.sdk._config_models import _int_at_least, _url
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = [
    "DEFAULT_ARCHIVE_BASE_URL",
    "ArchiveConfig",
    "ExchangeAccess",
    "ExchangeConfig",
    "ExchangeUrls",
    "MarketType",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class ExchangeUrls:
    """Replace the scheme and host of the exchange's REST / websocket URLs."""

    rest: str | None = None
    """Replaces the scheme and host of the exchange's REST API (``http://`` or
    ``https://``), e.g. the simulator ``http://127.0.0.1:8080``; null: the exchange's own."""
    ws: str | None = None
    """The same for the websocket API (``ws://`` or ``wss://``); null: the exchange's own."""

    def __post_init__(self) -> None:
        _url("rest", self.rest, ("http", "https"))
        _url("ws", self.ws, ("ws", "wss"))
        if self.rest is None and self.ws is None:
            raise ValueError("give rest and/or ws, or write urls: null")


MarketType = Literal["spot", "margin", "swap", "future", "option"]

#: Where Binance publishes its bulk kline archives (the simulator serves the same layout).
DEFAULT_ARCHIVE_BASE_URL = "https://data.binance.vision"


@dataclass(frozen=True, kw_only=True, slots=True)
class ArchiveConfig:
    """Bulk history from the exchange's published archives (Binance public data: zipped CSV
    klines per month and per day, each with a SHA-256 ``CHECKSUM``). When enabled, whole
    stable months and days of a backfill are read from archive files — verified before a
    single bar is stored, on their own concurrency limit, never spending the REST weight
    budget — and REST fetches only the rest: the forming day, the current month's tail, and
    any file that is missing, corrupt or incomplete. Off by default (and on exchanges that
    publish no archives it is refused: Binance spot and USDⓈ-M futures publish them)."""

    enabled: bool = False
    """Read whole stable months and days from archives before asking the REST API."""
    base_url: str = DEFAULT_ARCHIVE_BASE_URL
    """Root of the archive (``http://`` or ``https://``): files are under
    ``data/spot/...`` and ``data/futures/um/...``; the simulator serves them on its own
    port (``--exchange-url`` points this at it too while it is left at the default)."""
    max_concurrent_downloads: int = 4
    """Archive files downloaded at the same time (each streams to a temporary file and is
    verified, then parsed); 1 to 64."""

    def __post_init__(self) -> None:
        _url("base_url", self.base_url, ("http", "https"))
        value = self.max_concurrent_downloads
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
            raise ValueError(f"max_concurrent_downloads: must be within 1..64, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExchangeAccess:
    """How to reach one exchange — the fields an ``exchanges.<id>`` entry and the fetcher's
    ``CcxtBackfillConfig`` share (defined once; the composition root passes them on as they
    are). ``page_limit``: bars per request (``None``: the exchange's most bars per unit of
    weight); ``account`` fills ``{account}`` in the limiter key; ``ccxt_options`` go to the
    ccxt constructor as they are; ``profile`` overrides fields of the exchange's profile
    (page tiers, published limit, history depth...: ``qmtl-seamless exchanges`` shows them)."""

    symbols: tuple[str, ...] = ()
    """Unified ccxt symbols to keep filled, e.g. ``BTC/USDT``; no duplicates."""
    market_type: MarketType = "spot"
    """Which of the exchange's markets the symbols trade on."""
    page_limit: int | None = None
    """Bars per request; >= 1; null: the page size that gives the most bars per unit of
    request weight on that exchange."""
    sandbox: bool = False
    """Use the exchange's test network (ccxt sandbox mode)."""
    account: str | None = None
    """Account name filling ``{account}`` in the rate-limit key, so that accounts with
    their own exchange limits get their own budgets; null: no account."""
    ccxt_options: Mapping[str, object] = field(default_factory=dict)
    """Options handed to the ccxt exchange constructor as they are."""
    profile: Mapping[str, object] = field(default_factory=dict)
    """Overrides of the exchange's profile (page sizes and their request weights,
    published rate limit, history depth...); ``qmtl-seamless exchanges`` shows them."""
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    """Read stable history from the exchange's bulk archives first (Binance only)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", tuple(self.symbols))
        if isinstance(self.archive, Mapping):  # ``archive={"enabled": True}`` in code
            object.__setattr__(self, "archive", ArchiveConfig(**self.archive))
        object.__setattr__(self, "ccxt_options", MappingProxyType(dict(self.ccxt_options or {})))
        object.__setattr__(self, "profile", MappingProxyType(dict(self.profile or {})))
        if self.page_limit is not None and (
            isinstance(self.page_limit, bool)
            or not isinstance(self.page_limit, int)
            or self.page_limit < 1
        ):
            raise ValueError(f"page_limit: must be an integer >= 1, got {self.page_limit!r}")
        if self.account is not None and not self.account.strip():
            raise ValueError("account: must be a non-empty string or null")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExchangeConfig(ExchangeAccess):
    """One ``exchanges.<ccxt id>`` entry: :class:`ExchangeAccess` plus what to fill and at
    what pace. ``rate_limit`` is the exchange's own limiter block already merged over
    ``seamless.rate_limit`` (``None``: inherit it); ``rate_limit_rps`` is shorthand applied by
    :meth:`QMTLConfig.rate_limiter_for`."""

    timeframes: tuple[str, ...] = ("1m",)
    """Bar timeframes to keep filled (``1m``, ``1h``, ``1d``...); at least one, no duplicates."""
    rate_limit_rps: int | None = None
    """Shorthand for this exchange's budget: this many request-weight tokens per second
    (``tokens_per_interval: N`` with ``interval_ms: 1000``); >= 1; not together with
    either key in the exchange's ``rate_limit`` block; null: no shorthand."""
    rate_limit: RateLimiterConfig | None = None
    """This exchange's own rate limit: keys it omits take the values of
    ``seamless.rate_limit``; null: ``seamless.rate_limit`` as it is."""
    urls: ExchangeUrls | None = None
    """Other hosts for the exchange's APIs (a simulator, a proxy); null: the exchange's own."""

    def __post_init__(self) -> None:
        ExchangeAccess.__post_init__(self)
        _int_at_least("rate_limit_rps", self.rate_limit_rps, 1)
        if not self.timeframes:
            raise ValueError("timeframes: must list at least one timeframe")
