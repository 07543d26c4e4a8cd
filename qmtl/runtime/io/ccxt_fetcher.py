"""``CcxtOHLCVFetcher``: one window of OHLCV bars from an exchange through ccxt, page by page.

What it guarantees (the backfiller relies on every point):

- **Half-open windows** ``[start, end)`` in epoch seconds; pages move forward from the last
  bar received (``last + interval``), never by ``since + limit * interval``, so a page one bar
  short or with duplicates leaves no hole and no duplicate.
- **Known-empty detection**: bars that a page skips (it starts later than asked: before the
  listing, a halt; or jumps inside) are reported as EMPTY ranges; an empty page means the
  exchange has nothing from the cursor to now.
- **The still-forming bar is dropped** (its close is in the future) and nothing at or after it
  is vouched for (``covered_until``): it stays *missing* until it has closed.
- **Malformed payloads** (truncated JSON, wrong types, NaN prices, misaligned or out-of-window
  timestamps) raise :class:`ExchangeDataError` with the node id and window; nothing from a
  bad page is returned, so nothing is stored.
- **Rate limits**: ccxt's own throttle is off; every request — market loading included —
  goes through the project limiter, charged its weight in the exchange's units. A 429/418
  penalizes the whole limiter key with the exchange's ``Retry-After`` and is raised as
  :class:`ExchangeRateLimitError` so the backfiller retries no sooner. Every response's
  usage header (Binance ``X-MBX-USED-WEIGHT-1m``) is handed to ``limiter.observe_usage``
  through the exchange's ``qmtl_on_response`` hook, and a request's call returns only once
  that resync is done, so the next request sees it.
- **Page size** is the one with the most bars per unit of weight from the exchange's limit
  tiers (Binance spot: 1000 bars for weight 2; Binance USDⓈ-M futures: the 499 tier), unless
  ``page_limit`` says otherwise.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qmtl.runtime.io.ccxt_exchange import create_exchange, http_status_of, retry_after_of
from qmtl.runtime.io.ccxt_rate_limiter import RateLimiter, get_limiter
from qmtl.runtime.io.exchange_usage import UsageRelay
from qmtl.runtime.sdk.backfill_types import FetchWindowResult
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.errors import (
    ExchangeDataError,
    ExchangeError,
    ExchangeRateLimitError,
    ExchangeRequestError,
    ExchangeUnavailableError,
)
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.node_id import TIMEFRAMES, NodeId, check_interval
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = [
    "CcxtBackfillConfig",
    "CcxtOHLCVFetcher",
    "PagePlan",
    "RateLimiterConfig",
    "page_plan",
    "translate_ccxt_error",
]

_COLUMNS = ["ts", "open", "high", "low", "close", "volume"]

#: (max bars, weight) tiers of the klines endpoint, ascending. Binance spot charges 2 for
#: any limit up to 1000; USDⓈ-M / COIN-M futures charge by limit.
_BINANCE_FUTURES_TIERS = ((99, 1), (499, 2), (1000, 5), (1500, 10))
KLINE_TIERS: dict[tuple[str, str], tuple[tuple[int, int], ...]] = {
    ("binance", "spot"): ((1000, 2),),
    ("binance", "swap"): _BINANCE_FUTURES_TIERS,
    ("binance", "future"): _BINANCE_FUTURES_TIERS,
    ("binanceusdm", "swap"): _BINANCE_FUTURES_TIERS,
    ("binancecoinm", "swap"): _BINANCE_FUTURES_TIERS,
}
#: Weight of loading markets (``exchangeInfo`` on Binance spot: 20).
MARKETS_WEIGHT: dict[str, int] = {"binance": 20, "binanceusdm": 1, "binancecoinm": 1}
_DEFAULT_TIERS = ((500, 1),)


@dataclass(frozen=True, slots=True)
class PagePlan:
    """Bars per request and the weight each request costs."""

    limit: int
    weight: int


def page_plan(exchange_id: str, market_type: str, page_limit: int | None = None) -> PagePlan:
    """The page size with the most bars per unit of weight (or ``page_limit``'s tier)."""
    tiers = KLINE_TIERS.get((exchange_id, market_type), _DEFAULT_TIERS)
    if page_limit is not None:
        for max_bars, weight in tiers:
            if page_limit <= max_bars:
                return PagePlan(page_limit, weight)
        raise ValueError(f"page_limit {page_limit} exceeds the exchange maximum {tiers[-1][0]}")
    best = max(tiers, key=lambda tier: (tier[0] / tier[1], tier[0]))
    return PagePlan(best[0], best[1])


@dataclass(frozen=True, kw_only=True, slots=True)
class CcxtBackfillConfig:
    """One exchange's access settings. ``urls={"rest": "http://host:port", "ws": ...}``
    points every API URL at another host (the simulator, offline runs)."""

    exchange_id: str
    symbols: tuple[str, ...] = ()
    timeframe: str = "1m"
    market_type: str = "spot"
    page_limit: int | None = None
    sandbox: bool = False
    urls: Mapping[str, str] | None = None
    ccxt_options: Mapping[str, Any] | None = None
    rate_limiter: RateLimiterConfig = field(default_factory=RateLimiterConfig)
    account: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.exchange_id, str) or not self.exchange_id.isidentifier():
            raise ValueError(f"exchange_id: not a ccxt exchange id: {self.exchange_id!r}")
        object.__setattr__(self, "symbols", tuple(self.symbols))
        if self.timeframe not in TIMEFRAMES:
            raise ValueError(f"timeframe: unknown timeframe {self.timeframe!r}")
        if self.page_limit is not None and (
            isinstance(self.page_limit, bool)
            or not isinstance(self.page_limit, int)
            or self.page_limit <= 0
        ):
            raise ValueError(f"page_limit: must be a positive int, got {self.page_limit!r}")
        page_plan(self.exchange_id, self.market_type, self.page_limit)


def translate_ccxt_error(
    exc: BaseException, *, node_id: str | None, window: tuple[int, int] | None
) -> ExchangeError:
    """Map a ccxt error onto the project's error tree (retryable or not, with status)."""
    import ccxt

    status = http_status_of(exc)
    retry_after = retry_after_of(exc)
    kind: type[ExchangeError]
    if isinstance(exc, ccxt.DDoSProtection):
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
    :func:`~qmtl.runtime.io.ccxt_exchange.create_exchange` from the config.
    """

    def __init__(
        self,
        config: CcxtBackfillConfig,
        *,
        limiter: RateLimiter | None = None,
        clock: Clock | None = None,
        metrics: SeamlessMetrics | None = None,
        exchange: Any = None,
        stabilization_bars: int = 2,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.limiter = limiter or get_limiter(
            config.rate_limiter,
            config.exchange_id,
            config.account,
            clock=self.clock,
            metrics=metrics,
        )
        self.plan = page_plan(config.exchange_id, config.market_type, config.page_limit)
        self.stabilization_bars = stabilization_bars
        self._exchange = exchange
        self._usage = UsageRelay(self.limiter, self.clock)
        if exchange is not None:
            exchange.qmtl_on_response = self._usage
        self._markets_lock = asyncio.Lock()
        self._markets_loaded = False
        self.requests = 0

    @property
    def exchange(self) -> Any:
        if self._exchange is None:
            self._exchange = create_exchange(
                self.config.exchange_id,
                urls=self.config.urls,
                market_type=self.config.market_type,
                sandbox=self.config.sandbox,
                options=self.config.ccxt_options,
            )
            self._exchange.qmtl_on_response = self._usage
        return self._exchange

    async def aclose(self) -> None:
        await self._usage.drain()
        if self._exchange is not None:
            await self._exchange.close()
        await self.limiter.aclose()

    async def __aenter__(self) -> CcxtOHLCVFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def load_markets(self) -> None:
        """Load markets once (charged its weight); later calls return at once."""
        async with self._markets_lock:
            if self._markets_loaded:
                return
            weight = MARKETS_WEIGHT.get(self.config.exchange_id, 1)
            await self._call(weight, self.exchange.load_markets, node_id=None, window=None)
            self._markets_loaded = True

    async def fetch(self, start: int, end: int, *, node_id: str, interval: int) -> pd.DataFrame:
        """Canonical bars with ``start <= ts < end`` (closed bars only)."""
        return (await self.fetch_window(start, end, node_id=node_id, interval=interval)).frame

    async def fetch_window(
        self, start: int, end: int, *, node_id: str, interval: int
    ) -> FetchWindowResult:
        """Page through ``[start, end)``; the result vouches for ``[start, covered_until)``."""
        node = check_interval(node_id, interval)
        self._check_node(node)
        window = Range(start, end)
        await self.load_markets()
        market = self._market(node, window)
        now = self.clock.now()
        forming_start = int(now // interval) * interval  # open time of the forming bar
        horizon = min(end, forming_start)
        chunks: list[np.ndarray[Any, np.dtype[np.float64]]] = []
        empty: list[Range] = []
        cursor = start
        requests = 0
        while cursor < horizon:
            limit = min(self.plan.limit, math.ceil((horizon - cursor) / interval))
            page = await self._page(node, market, cursor, limit, interval, window)
            requests += 1
            page = page[page[:, 0] < horizon * 1000] if len(page) else page
            if len(page) == 0:
                empty.append(Range(cursor, horizon))  # nothing from the cursor to now
                cursor = horizon
                break
            ts = (page[:, 0] // 1000).astype(np.int64)
            if ts[0] > cursor:
                empty.append(Range(cursor, int(ts[0])))
            jumps = np.flatnonzero(np.diff(ts) > interval)
            empty += [Range(int(ts[i]) + interval, int(ts[i + 1])) for i in jumps]
            chunks.append(page)
            cursor = int(ts[-1]) + interval
        self.requests += requests
        frame = _frame(chunks)
        return FetchWindowResult(frame, tuple(empty), min(cursor, horizon), requests)

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

    async def _page(
        self, node: NodeId, market: Any, cursor: int, limit: int, interval: int, window: Range
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        where = (window.start, window.end)
        rows = await self._call(
            self.plan.weight,
            self.exchange.fetch_ohlcv,
            market["symbol"],
            node.timeframe,
            cursor * 1000,
            limit,
            node_id=str(node),
            window=where,
        )
        return _validated_page(rows, cursor, interval, node_id=str(node), window=where)

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
            error = translate_ccxt_error(exc, node_id=node_id, window=window)
            if isinstance(error, ExchangeRateLimitError):
                await self.limiter.penalize(error.http_status or 429, error.retry_after_s)
            raise error from exc
        await self._usage.drain()
        return result


def _validated_page(
    rows: Any, cursor: int, interval: int, *, node_id: str, window: tuple[int, int]
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Rows as an ``(n, 6)`` float64 array (ts in ms), sorted, deduplicated (last wins);
    anything untrustworthy raises :class:`ExchangeDataError`."""

    def bad(reason: str) -> ExchangeDataError:
        return ExchangeDataError(f"malformed OHLCV page: {reason}", node_id=node_id, window=window)

    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise bad(f"expected a list of rows, got {type(rows).__name__}")
    if not rows:
        return np.empty((0, 6), dtype=np.float64)
    try:
        page = np.asarray(rows, dtype=np.float64)  # ccxt rows: [ts, o, h, l, c, v]
    except (TypeError, ValueError):
        try:
            page = np.asarray([row[:6] for row in rows], dtype=np.float64)
        except (TypeError, ValueError, IndexError) as exc:
            raise bad(f"rows are not numeric: {exc}") from None
    if page.ndim != 2 or page.shape[1] != 6:
        raise bad(f"expected 6 fields per row, got shape {page.shape}")
    if not np.isfinite(page).all():
        raise bad("non-finite (NaN/inf/null) values")
    ts_ms = page[:, 0]
    step_ms = interval * 1000
    if np.any(ts_ms % step_ms != 0):
        raise bad(f"timestamps not aligned to {interval} s")
    if np.any(ts_ms < cursor * 1000):
        raise bad("bars before the requested start")
    order = np.argsort(ts_ms, kind="stable")
    page = page[order]
    keep = np.append(page[1:, 0] != page[:-1, 0], True)  # last of each equal ts wins
    deduplicated: np.ndarray[Any, np.dtype[np.float64]] = page[keep]
    return deduplicated


def _frame(chunks: list[np.ndarray[Any, np.dtype[np.float64]]]) -> pd.DataFrame:
    block = np.concatenate(chunks) if chunks else np.empty((0, 6), dtype=np.float64)
    if len(chunks) > 1:  # pages overlap only if the exchange misbehaved; last wins
        order = np.argsort(block[:, 0], kind="stable")
        block = block[order]
        block = block[np.append(block[1:, 0] != block[:-1, 0], True)]
    data: dict[str, Any] = {"ts": (block[:, 0] // 1000).astype(np.int64)}
    for i, name in enumerate(_COLUMNS[1:], start=1):
        data[name] = block[:, i].copy()
    return pd.DataFrame(data, columns=_COLUMNS)
