"""``CcxtOHLCVFetcher``: one window of OHLCV bars from an exchange through ccxt, page by page.

What it guarantees (the backfiller relies on every point):

- **Half-open windows** ``[start, end)`` in epoch seconds; pages move forward from the last
  bar received (``last + interval``), never by ``since + limit * interval``, so a page one bar
  short or with duplicates leaves no hole and no duplicate.
- **Known-empty only on evidence a fault cannot produce**: bars a page *skips while returning
  later ones* (it starts later than asked — before the listing, a halt — or jumps inside) are
  reported as EMPTY ranges. An empty page, or a page that ends early, proves nothing (a
  transient fault looks exactly like that): the rest of the window is not vouched for
  (``covered_until`` stops at the cursor) and ``FetchWindowResult.missing_reason`` says why,
  so the backfiller asks again and, if the exchange keeps answering so, leaves it *missing*
  with that reason. Within ``stabilization_bars`` intervals of now an empty answer is "not
  yet" and simply stays missing, without a reason.
- **The still-forming bar is dropped** (its close is in the future) and nothing at or after it
  is vouched for (``covered_until``): it stays *missing* until it has closed. Bar open times
  follow the node's grid (weekly bars open on Mondays).
- **Duplicates are passed on, not hidden**: a page's repeated ``ts`` reach the backfiller's
  conformance step, which keeps the last and counts them (``duplicate_ts``); bars before the
  requested start (a misbehaving exchange) are dropped with a warning, the rest of the page is
  kept.
- **Malformed payloads** (truncated JSON, wrong types, NaN prices, misaligned or out-of-window
  timestamps) raise :class:`ExchangeDataError` with the node id and window; nothing from a
  bad page is returned, so nothing is stored. A retryable failure (5xx, 429, a malformed
  page) *after* some pages of the window were answered keeps those pages: the result
  vouches for them and gives the error as ``missing_reason`` for the rest.
- **Rate limits**: ccxt's own throttle is off; every request — market loading included —
  goes through the process's one limiter for the key (:func:`shared_limiter`), charged its
  weight in the exchange's units. A 429/418 — told by the HTTP status the adapter attaches,
  whatever exception class ccxt chose (``RateLimitExceeded``, ``DDoSProtection``, OKX's
  ``ExchangeNotAvailable``) — penalizes the whole key with the exchange's ``Retry-After`` and
  is raised as :class:`ExchangeRateLimitError` so the backfiller retries no sooner. Every response's
  usage header (Binance ``X-MBX-USED-WEIGHT-1m``) is handed to ``limiter.observe_usage``
  through the exchange's ``qmtl_on_response`` hook, and a request's call returns only once
  that resync is done, so the next request sees it.
- **Page size and weights** come from the exchange's :class:`ExchangeProfile`: the page with
  the most bars per unit of weight (Binance spot: 1000 bars for weight 2; Binance USDⓈ-M
  futures: the 499 tier; OKX: 100), unless ``page_limit`` or ``profile`` says otherwise.
- **History depth**: on an exchange that serves only its newest N bars, the part of a window
  older than that is not asked for and never recorded known-empty: it is reported
  ``unavailable`` ("beyond the exchange's history depth") and stays missing.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from qmtl.runtime.io.ccxt_exchange import (
    check_exchange_id,
    create_exchange,
    http_status_of,
    retry_after_of,
    unlisted,
)
from qmtl.runtime.io.ccxt_rate_limiter import shared_limiter
from qmtl.runtime.io.exchange_archive import ExchangeArchive
from qmtl.runtime.io.exchange_profiles import ExchangeProfile, profile_for
from qmtl.runtime.io.exchange_usage import UsageRelay
from qmtl.runtime.sdk._config_exchange import ExchangeAccess, ExchangeUrls
from qmtl.runtime.sdk.backfill_types import FetchWindowResult
from qmtl.runtime.sdk.bars import (
    bar_open_at,
    block_to_frame,
    misaligned,
    rows_to_block,
)
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.errors import (
    ExchangeDataError,
    ExchangeError,
    ExchangeRateLimitError,
    ExchangeRequestError,
    ExchangeUnavailableError,
)
from qmtl.runtime.sdk.history_coverage import DEFAULT_STABILIZATION_BARS, Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.node_id import TIMEFRAMES, NodeId, check_interval
from qmtl.runtime.sdk.rate_limiter import RateLimiter
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.runtime.sdk.timestamps import InstantLike, format_iso, to_epoch_seconds

__all__ = [
    "RATE_LIMIT_STATUSES",
    "CcxtBackfillConfig",
    "CcxtOHLCVFetcher",
    "translate_ccxt_error",
]

logger = logging.getLogger(__name__)

#: HTTP statuses that mean "slow down" (429) or "banned" (418), whatever ccxt raised for them.
RATE_LIMIT_STATUSES = frozenset({418, 429})


#: (max bars, weight) tiers of the klines endpoint, ascending. Binance spot charges 2 for
#: any limit up to 1000; USDⓈ-M / COIN-M futures charge by limit.
@dataclass(frozen=True, kw_only=True, slots=True)
class CcxtBackfillConfig(ExchangeAccess):
    """One exchange's fetcher settings: :class:`ExchangeAccess` (the fields shared with the
    YAML ``exchanges.<id>`` entry) plus the exchange id, URLs and limiter.
    ``urls={"rest": "http://host:port", "ws": ...}`` (or an ``ExchangeUrls``) points every API
    URL at another host (the simulator, offline runs). ``symbols`` and ``timeframe`` name the
    universe a worker fills (the fetcher itself serves any symbol and timeframe; once the
    markets are loaded it warns about those the exchange does not list)."""

    exchange_id: str
    timeframe: str = "1m"
    urls: Mapping[str, str] | ExchangeUrls | None = None
    rate_limiter: RateLimiterConfig = field(default_factory=RateLimiterConfig)

    def __post_init__(self) -> None:
        ExchangeAccess.__post_init__(self)
        check_exchange_id(self.exchange_id)
        if self.timeframe not in TIMEFRAMES:
            raise ValueError(f"timeframe: unknown timeframe {self.timeframe!r}")
        if isinstance(self.urls, ExchangeUrls):
            given = {"rest": self.urls.rest, "ws": self.urls.ws}
            object.__setattr__(self, "urls", {k: v for k, v in given.items() if v is not None})
        self.exchange_profile()  # refuses a page_limit or profile the exchange cannot serve

    def exchange_profile(self) -> ExchangeProfile:
        """The exchange's :class:`ExchangeProfile`, with ``profile`` overrides and
        ``page_limit`` (a shortcut for ``profile.page_limit``) applied."""
        overrides = dict(self.profile)
        if self.page_limit is not None:
            overrides["page_limit"] = self.page_limit
        return profile_for(self.exchange_id, self.market_type, overrides)

    def effective_rate_limiter(self) -> RateLimiterConfig:
        """``rate_limiter``, except that a budget left at the library's defaults takes the
        exchange's own default budget from its profile (the README rule under its published
        limit: Binance spot 5880 + 120 weight a minute, OKX 19 + 1 requests per 2 s...).
        Everything else in ``rate_limiter`` (key, Redis, slots, penalties) is kept."""
        budget = ("tokens_per_interval", "interval_ms", "burst_tokens")
        defaults = RateLimiterConfig()
        if any(getattr(self.rate_limiter, n) != getattr(defaults, n) for n in budget):
            return self.rate_limiter
        own = self.exchange_profile().default_budget()
        return replace(self.rate_limiter, **{n: getattr(own, n) for n in budget})

    @property
    def url_map(self) -> Mapping[str, str] | None:
        """``urls`` as the mapping :func:`create_exchange` takes (``None``: the exchange's)."""
        return None if self.urls is None or isinstance(self.urls, ExchangeUrls) else self.urls


def translate_ccxt_error(
    exc: BaseException,
    *,
    node_id: str | None,
    window: tuple[int, int] | None,
    rate_limit_statuses: frozenset[int] = RATE_LIMIT_STATUSES,
) -> ExchangeError:
    """Map a ccxt error onto the project's error tree (retryable or not, with status). A
    status in ``rate_limit_statuses`` (the exchange profile's) is a rate limit whatever
    exception class ccxt chose."""
    import ccxt

    status = http_status_of(exc)
    retry_after = retry_after_of(exc)
    kind: type[ExchangeError]
    if status in rate_limit_statuses or isinstance(exc, ccxt.DDoSProtection):
        kind = ExchangeRateLimitError
        status = status or 429
    elif isinstance(
        exc,
        ccxt.BadSymbol
        | ccxt.BadRequest
        | ccxt.AuthenticationError
        | ccxt.PermissionDenied
        | ccxt.NotSupported,
    ):
        kind = ExchangeRequestError
    elif isinstance(exc, ccxt.BadResponse):
        kind = ExchangeDataError
    else:
        kind = ExchangeUnavailableError
    return kind(
        f"{type(exc).__name__}: {str(exc)[:300]}",
        node_id=node_id,
        window=window,
        http_status=status,
        retry_after_s=retry_after,
    )


class CcxtOHLCVFetcher:
    """Fetches windows of one exchange (any of its symbols and timeframes) through ccxt.

    One instance owns one ccxt exchange; share it between tasks, then ``await aclose()``.
    ``exchange`` may be injected (any ccxt async exchange); by default it is built with
    :func:`~qmtl.runtime.io.ccxt_exchange.create_exchange` from the config. ``limiter`` may be
    injected too (the caller then owns it); by default the fetcher holds the process's shared
    limiter for its key, taken on first use inside the event loop.
    """

    def __init__(
        self,
        config: CcxtBackfillConfig,
        *,
        limiter: RateLimiter | None = None,
        clock: Clock | None = None,
        metrics: SeamlessMetrics | None = None,
        exchange: Any = None,
        stabilization_bars: int = DEFAULT_STABILIZATION_BARS,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = metrics
        self._limiter = limiter
        self._owns_limiter = limiter is None
        self.profile = config.exchange_profile()
        self.stabilization_bars = stabilization_bars
        self._exchange = exchange
        self._usage = UsageRelay(self._current_limiter, self.clock)
        if exchange is not None:
            exchange.qmtl_on_response = self._usage
        self._markets_lock = asyncio.Lock()
        self._markets_loaded = False
        self.requests = 0
        #: Whole stable periods from the exchange's bulk archives (``archive.enabled``).
        self.archive = ExchangeArchive(self, config.archive) if config.archive.enabled else None

    @property
    def limiter(self) -> RateLimiter:
        """The limiter every request of this fetcher goes through (see the class doc)."""
        if self._limiter is None:
            self._limiter = shared_limiter(
                self.config.effective_rate_limiter(),
                self.config.exchange_id,
                self.config.account,
                clock=self.clock,
                metrics=self.metrics,
            )
        return self._limiter

    def _current_limiter(self) -> RateLimiter:
        return self.limiter

    @property
    def exchange(self) -> Any:
        if self._exchange is None:
            self._exchange = create_exchange(
                self.config.exchange_id,
                urls=self.config.url_map,
                market_type=self.config.market_type,
                sandbox=self.config.sandbox,
                options=self.config.ccxt_options,
            )
            self._exchange.qmtl_on_response = self._usage
        return self._exchange

    async def aclose(self) -> None:
        if self.archive is not None:
            await self.archive.aclose()
        await self._usage.drain()
        if self._exchange is not None:
            await self._exchange.close()
        if self._owns_limiter and self._limiter is not None:
            limiter, self._limiter = self._limiter, None
            await limiter.aclose()

    async def __aenter__(self) -> CcxtOHLCVFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def load_markets(self) -> None:
        """Load markets once (charged its weight); later calls return at once."""
        async with self._markets_lock:
            if self._markets_loaded:
                return
            weight = self.profile.markets_weight
            await self._call(weight, self.exchange.load_markets, node_id=None, window=None)
            self._markets_loaded = True
            for name in unlisted(self.exchange, self.config.symbols, self.config.timeframe):
                logger.warning("%s does not list the configured %s: its fetches will fail",
                               self.config.exchange_id, name)  # fmt: skip

    async def fetch(
        self, start: InstantLike, end: InstantLike, *, node_id: str, interval: int
    ) -> pd.DataFrame:
        """Canonical bars with ``start <= ts < end`` (closed bars only). Bounds are epoch
        seconds, tz-aware datetimes or ISO-8601 strings, ceil-aligned to the node's grid.
        With ``archive.enabled``, whole stable months and days come from archive files."""
        window = Range.aligned(start, end, interval)
        if self.archive is not None:
            return await self.archive.fetch(window, node_id=node_id, interval=interval)
        result = await self.fetch_window(
            window.start, window.end, node_id=node_id, interval=interval
        )
        return result.frame

    async def fetch_window(
        self, start: int, end: int, *, node_id: str, interval: int
    ) -> FetchWindowResult:
        """Page through ``[start, end)``; the result vouches for ``[start, covered_until)``
        (bars in ``frame``, known-empty ranges in ``empty``) — see the module docstring."""
        node = check_interval(node_id, interval)
        self._check_node(node)
        window = Range(to_epoch_seconds(start), to_epoch_seconds(end))
        await self.load_markets()
        market = self._market(node, window)
        forming_start = bar_open_at(self.clock.now(), interval)
        horizon = min(window.end, forming_start)
        settled = forming_start - self.stabilization_bars * interval  # older: no "not yet"
        chunks: list[np.ndarray[Any, np.dtype[np.float64]]] = []
        empty: list[Range] = []
        warnings: list[str] = []
        missing_reason: str | None = None
        cursor = window.start
        unavailable: tuple[Range, ...] = ()
        depth = self.profile.history_depth_bars
        if depth is not None and window.start < forming_start - depth * interval:
            oldest = forming_start - depth * interval  # the oldest bar the exchange serves
            unavailable = (Range(window.start, min(window.end, oldest)),)
            cursor = min(window.end, oldest)
        listed = self._listing_bar(market, interval)
        if listed is not None and cursor < listed:  # the exchange's own listing date says so
            empty.append(Range(cursor, min(listed, horizon)))
            cursor = max(cursor, min(listed, horizon))
        requests = 0
        while cursor < horizon:
            limit = min(self.profile.bars_per_page, math.ceil((horizon - cursor) / interval))
            try:
                page = await self._page(node, market, cursor, limit, interval, window, warnings)
            except ExchangeError as error:
                if not error.retryable or not chunks:
                    raise
                # Keep the pages already answered (a window cut by a 429 or a 5xx must not
                # lose them); the rest is missing, with this error as why, and asked again.
                missing_reason = f"{type(error).__name__}: {error}"
                requests += 1
                break
            requests += 1
            if len(page) == 0:
                if cursor < settled:
                    missing_reason = (
                        f"the exchange returned no bars from {format_iso(cursor)} on "
                        "(an empty answer is no proof of an empty window: asked again later)"
                    )
                break
            ts = (page[:, 0] // 1000).astype(np.int64)
            first = int(ts[0])
            if first > cursor:  # skipped while answering with later bars: known-empty
                empty.append(Range(cursor, min(first, horizon)))
            inside = ts < horizon
            if not inside[0]:
                cursor = horizon
                break
            page, ts = page[inside], ts[inside]
            jumps = np.flatnonzero(np.diff(ts) > interval)
            empty += [Range(int(ts[i]) + interval, int(ts[i + 1])) for i in jumps]
            chunks.append(page)
            cursor = int(ts[-1]) + interval
        self.requests += requests
        return FetchWindowResult(
            block_to_frame(np.concatenate(chunks) if chunks else None),
            tuple(empty),
            min(cursor, horizon),
            requests,
            missing_reason=missing_reason,
            warnings=tuple(warnings),
            unavailable=unavailable,
            unavailable_reason=(
                f"beyond the exchange's history depth ({depth} bars)" if unavailable else None
            ),
        )

    # -- internals ------------------------------------------------------------------------

    def _check_node(self, node: NodeId) -> None:
        if node.exchange != self.config.exchange_id:
            raise ValueError(
                f"node {node} is on exchange {node.exchange!r}; this fetcher serves "
                f"{self.config.exchange_id!r}"
            )

    def _market(self, node: NodeId, window: Range) -> Any:
        import ccxt

        try:
            return self.exchange.market(node.symbol)
        except ccxt.BaseError as exc:  # BadSymbol for a symbol the exchange does not list
            where = (window.start, window.end)
            raise translate_ccxt_error(exc, node_id=str(node), window=where) from exc

    def _listing_bar(self, market: Any, interval: int) -> int | None:
        """Open time of the bar holding the market's listing instant, from the field of the
        exchange's market metadata the profile names (OKX ``listTime``, Binance futures
        ``onboardDate``, epoch ms) — evidence no page fault can fake: before that bar there
        is nothing to fetch, even on an exchange whose empty windows prove nothing."""
        name = self.profile.listing_field
        info = market.get("info") if isinstance(market, dict) else None
        raw = info.get(name) if name and isinstance(info, dict) else None
        try:
            listed_ms = int(raw) if raw not in (None, "") else None
        except (TypeError, ValueError):
            return None
        if listed_ms is None or listed_ms <= 0:
            return None
        return bar_open_at(listed_ms // 1000, interval)

    async def _page(
        self,
        node: NodeId,
        market: Any,
        cursor: int,
        limit: int,
        interval: int,
        window: Range,
        warnings: list[str],
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        where = (window.start, window.end)
        rows = await self._call(
            self.profile.page_weight,
            self.exchange.fetch_ohlcv,
            market["symbol"],
            node.timeframe,
            cursor * 1000,
            limit,
            node_id=str(node),
            window=where,
        )
        return _validated_page(rows, cursor, interval, warnings, node_id=str(node), window=where)

    async def _call(
        self,
        weight: int,
        method: Any,
        *args: Any,
        node_id: str | None,
        window: tuple[int, int] | None,
    ) -> Any:
        import ccxt

        try:
            async with self.limiter.acquire(weight):
                result = await method(*args)
        except ccxt.BaseError as exc:
            await self._usage.drain()
            statuses = RATE_LIMIT_STATUSES | set(self.profile.rate_limit_statuses)
            error = translate_ccxt_error(
                exc, node_id=node_id, window=window, rate_limit_statuses=statuses
            )
            if isinstance(error, ExchangeRateLimitError):
                status = error.http_status or 429
                # An exchange's own ban status pauses the key like Binance's 418 (an IP ban).
                ban = status in self.profile.ban_statuses
                await self.limiter.penalize(418 if ban else status, error.retry_after_s)
            raise error from exc
        await self._usage.drain()
        return result


def _validated_page(
    rows: Any,
    cursor: int,
    interval: int,
    warnings: list[str],
    *,
    node_id: str,
    window: tuple[int, int],
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Rows as an ``(n, 6)`` float64 array (ts in ms), sorted by ts (stable: duplicates stay,
    in page order, for conformance to resolve and count). Malformed rows or misaligned
    timestamps raise :class:`ExchangeDataError`; bars before ``cursor`` are dropped with a
    warning."""
    try:
        page = rows_to_block(rows)
    except ValueError as exc:
        raise ExchangeDataError(
            f"malformed OHLCV page: {exc}", node_id=node_id, window=window
        ) from None
    if len(page) == 0:
        return page
    ts_ms = page[:, 0]
    if np.any(ts_ms % 1000 != 0) or np.any(misaligned(ts_ms // 1000, interval)):
        raise ExchangeDataError(
            f"malformed OHLCV page: timestamps not on the {interval} s bar grid",
            node_id=node_id,
            window=window,
        )
    early = ts_ms < cursor * 1000
    if early.any():
        warnings.append(
            f"{int(early.sum())} bar(s) before the requested start {format_iso(cursor)} "
            "dropped from an exchange page"
        )
        page = page[~early]
    ordered: np.ndarray[Any, np.dtype[np.float64]] = page[np.argsort(page[:, 0], kind="stable")]
    return ordered
