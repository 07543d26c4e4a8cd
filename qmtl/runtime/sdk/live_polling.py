"""``PollingLiveFeed``: the live-feed port (:mod:`~qmtl.runtime.sdk.live_feed`) over any
:class:`~qmtl.runtime.sdk.backfill_types.DataFetcher`, by asking it again on bar boundaries.

Why polling: it needs no websocket, works on every exchange the fetcher reaches, and every
request goes through the fetcher — so the process's shared rate limiter paces it like any
backfill. Exchanges publish a bar a moment *after* it closes: a bar the clock says has closed
but that the fetcher does not vouch for yet (``covered_until`` short of it, or the bar absent
and not inside an ``empty`` range) is asked for again every ``poll_ms``. A span the exchange
vouches is empty (a halt) is never waited for.

Rules: times are epoch seconds (the feed's :class:`~qmtl.runtime.sdk.clock.Clock`), bar ``ts``
is the open time, a bar is closed when ``ts + interval <= now``. Only bars that had closed
before a request was sent are kept, so a forming snapshot is never cached, never returned by
:meth:`~PollingLiveFeed.latest_bars` and never yielded as closed. Per ``(node_id, interval)``
the feed caches what it got (last write wins per ``ts``), bounded to ``history_bars`` bars
(more only while a stream lags further behind: its bars are kept until it has yielded them).
A retryable :class:`~qmtl.runtime.sdk.errors.ExchangeError` is asked again after ``poll_ms``;
any other error propagates. The cache only changes synchronously after a fetch returns, so a
call cancelled mid-wait leaves it consistent. Not thread-safe: use from one event loop.

Forming bars: :class:`~qmtl.runtime.io.ccxt_fetcher.CcxtOHLCVFetcher` drops the forming bar,
so over it ``emit_building_candle`` yields nothing forming — a polling feed can only pass on a
forming bar its fetcher actually returns (use the websocket feed for building candles).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator

import numpy as np
import pandas as pd

from qmtl.runtime.sdk.backfill_types import DataFetcher
from qmtl.runtime.sdk.bars import (
    CANONICAL_COLUMNS,
    bar_open_at,
    empty_frame,
    frame_from_columns,
    prepare_bars,
)
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.errors import ExchangeError
from qmtl.runtime.sdk.history_coverage import Range, merge_ranges, subtract_ranges
from qmtl.runtime.sdk.live_feed import LiveUpdate

__all__ = ["PollingLiveFeed"]

_Row = tuple[float, float, float, float, float]


class _Cache:
    """One node's closed bars by ``ts`` and the spans vouched for (bars ∪ known-empty);
    ``pins``: the cursor of each running stream (trimming never drops bars after one)."""

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.bars: dict[int, _Row] = {}
        self.known: list[Range] = []
        self.pins: dict[int, int] = {}

    def missing(self, lo: int, hi: int) -> list[Range]:
        return subtract_ranges([Range(lo, hi)], self.known) if lo < hi else []

    def add(self, frame: pd.DataFrame, empty: list[Range]) -> None:
        if frame.empty and not empty:
            return
        cols = prepare_bars(frame)  # sorted, last wins within the frame
        rows = zip(*(cols[c].tolist() for c in CANONICAL_COLUMNS[1:]), strict=True)
        self.bars.update(zip(cols["ts"].tolist(), rows, strict=True))
        spans = [Range(t, t + self.interval) for t in cols["ts"].tolist()]
        self.known = merge_ranges([*self.known, *spans, *empty], self.interval)

    def read(self, lo: int, hi: int) -> pd.DataFrame:
        keys = sorted(t for t in self.bars if lo <= t < hi)
        if not keys:
            return empty_frame()
        values = np.array([self.bars[t] for t in keys], dtype=np.float64).reshape(-1, 5)
        frame = pd.DataFrame(values, columns=list(CANONICAL_COLUMNS[1:]))
        frame.insert(0, "ts", np.array(keys, dtype=np.int64))
        return frame

    def trim(self, newest_end: int, history_bars: int) -> None:
        floor = min([newest_end - history_bars * self.interval, *self.pins.values()])
        self.bars = {t: row for t, row in self.bars.items() if t >= floor}
        self.known = [Range(max(r.start, floor), r.end) for r in self.known if r.end > floor]


class PollingLiveFeed:
    """A :class:`~qmtl.runtime.sdk.live_feed.LiveDataFeed` that polls ``fetcher`` (module
    docstring). ``poll_ms``: delay between two asks for a bar not yet published;
    ``history_bars``: bars kept per ``(node_id, interval)``; ``emit_building_candle``: also
    yield, after each closed batch, the forming bar when the fetcher returns one."""

    def __init__(
        self,
        fetcher: DataFetcher,
        *,
        clock: Clock | None = None,
        emit_building_candle: bool = False,
        poll_ms: int = 100,
        history_bars: int = 1000,
    ) -> None:
        if poll_ms <= 0:
            raise ValueError(f"poll_ms must be > 0, got {poll_ms}")
        if history_bars <= 0:
            raise ValueError(f"history_bars must be > 0, got {history_bars}")
        self._fetcher = fetcher
        self._clock: Clock = clock or SystemClock()
        self.emit_building_candle = emit_building_candle
        self._poll_s = poll_ms / 1000.0
        self._history_bars = history_bars
        self._caches: dict[tuple[str, int], _Cache] = {}
        self._closed = asyncio.Event()
        self._stream_ids = itertools.count()

    async def latest_bars(self, node_id: str, interval: int, since: int) -> pd.DataFrame:
        """Closed bars with ``ts >= since`` (epoch seconds), after waiting for the bar that
        closed most recently (when this call began): one fetch from the first ``ts`` not held,
        then polls every ``poll_ms`` until the newest bar is vouched for. Older parts the
        exchange does not vouch for are not waited for (they are simply absent). The caller
        bounds the wait by cancelling; ``RuntimeError`` once the feed is closed."""
        if self._closed.is_set():
            raise RuntimeError("the feed is closed")
        cache = self._cache(node_id, interval)
        target = bar_open_at(self._clock.now(), interval)  # end of the newest closed bar
        lo = bar_open_at(since, interval)
        lo += interval if lo < since else 0
        await self._settle(cache, node_id, lo, target, whole=False, forming=False)
        frame = cache.read(lo, target)
        cache.trim(target, self._history_bars)
        return frame

    async def stream(self, node_id: str, interval: int) -> AsyncGenerator[LiveUpdate, None]:
        """Sleep (on the clock) until the next bar closes, poll until every bar closed since
        the last update is vouched for, then yield them as one update (each bar once, in
        order; after a late wake-up all the bars missed come together). Bars that closed
        before the stream started are not yielded. A span vouched empty yields no update.
        Ends when :meth:`aclose` is called; an async generator, so a consumer that stops early
        can ``aclose()`` it (``contextlib.aclosing``)."""
        cache = self._cache(node_id, interval)
        cursor = bar_open_at(self._clock.now(), interval)  # the forming bar's open
        pin = next(self._stream_ids)
        cache.pins[pin] = cursor
        try:
            while not self._closed.is_set():
                now = self._clock.now()
                target = bar_open_at(now, interval)
                if target <= cursor:
                    if not await self._nap(target + interval - now):
                        return
                    continue
                forming = await self._settle(
                    cache, node_id, cursor, target, whole=True, forming=self.emit_building_candle
                )
                if self._closed.is_set():
                    return
                bars = cache.read(cursor, target)
                cursor = cache.pins[pin] = target
                cache.trim(target, self._history_bars)
                received = self._clock.now()
                if len(bars):
                    yield LiveUpdate(node_id, interval, bars, received)
                if forming is not None:
                    yield LiveUpdate(node_id, interval, forming, received, forming=True)
        finally:
            cache.pins.pop(pin, None)

    async def aclose(self) -> None:
        """Stop every stream (at its next wake-up or fetch); idempotent. The fetcher is the
        caller's: it is not closed here."""
        self._closed.set()

    # -- internals ------------------------------------------------------------------------

    def _cache(self, node_id: str, interval: int) -> _Cache:
        return self._caches.setdefault((node_id, interval), _Cache(interval))

    async def _settle(
        self, cache: _Cache, node_id: str, lo: int, target: int, *, whole: bool, forming: bool
    ) -> pd.DataFrame | None:
        """Fetch ``[lo, target)`` until the newest bar (``whole``: every bar) is vouched for;
        returns the forming bar (``ts == target``) of the last fetch when ``forming`` asks for
        it and the fetcher gave one while it was still forming."""
        missing = cache.missing(lo, target)
        if not missing and not forming:
            return None
        start = missing[0].start if missing else target
        while True:
            seen = None
            try:
                seen = await self._fetch(cache, node_id, start, target, forming)
            except ExchangeError as exc:
                if not exc.retryable:
                    raise
            missing = cache.missing(lo, target)
            if not missing or (not whole and missing[-1].end < target):
                return seen
            start = missing[0].start if whole else missing[-1].start
            if not await self._nap(self._poll_s):
                return None

    async def _fetch(
        self, cache: _Cache, node_id: str, start: int, target: int, forming: bool
    ) -> pd.DataFrame | None:
        """One request for ``[start, target)`` (plus the forming bar when asked); keeps only
        bars that had closed when it was sent (``ts < target``) and empties clipped to what
        the answer vouches for."""
        step = cache.interval
        end = target + step if forming else target
        result = await self._fetcher.fetch_window(start, end, node_id=node_id, interval=step)
        until = min(target, end if result.covered_until is None else result.covered_until)
        ts = result.frame["ts"].to_numpy(dtype=np.int64)
        empty = [part for r in result.empty if (part := r.intersect(Range(start, until)))]
        cache.add(result.frame.loc[(ts >= start) & (ts < target)], empty)
        if not forming or self._clock.now() >= target + step:
            return None
        live = result.frame.loc[ts == target]
        return frame_from_columns(prepare_bars(live)) if len(live) else None

    async def _nap(self, seconds: float) -> bool:
        """Sleep on the clock unless the feed closes first; ``False`` once it is closed."""
        nap = asyncio.ensure_future(self._clock.sleep(max(0.0, seconds)))
        stop = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({nap, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            nap.cancel()
            stop.cancel()
        return not self._closed.is_set()
