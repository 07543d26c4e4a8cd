"""``CcxtLiveFeed``: the newest closed bars from the exchange's websocket, through ccxt.pro.

One ccxt.pro client per exchange (built on first use from ``exchanges.<id>``: URLs, market
type, options); one task per subscribed ``(node_id, interval)`` looping ``watch_ohlcv``,
started by the node's first :meth:`~CcxtLiveFeed.latest_bars` or :meth:`~CcxtLiveFeed.stream`.

Tested against the simulator's websockets for ``binance`` (spot), ``binanceusdm`` (USD-M
perpetuals, node ids like ``ohlcv:binanceusdm:BTC/USDT:USDT:1m``, ``market_type: swap``) and
``okx`` (spot, ``candle*`` channels; ccxt's OKX timeframes start at ``1m``); nothing here is
exchange-specific beyond ccxt's own URL keys.

**When a bar is closed.** ccxt's candles carry no closed flag (Binance's ``x`` and OKX's
``confirm`` are dropped):
each is the latest state of its bar. A bar counts as closed once a *later* bar has arrived on
the same connection — an exchange sends a bar's final values before the first update of the
next one, so the values held then are final. Until then it is *forming* (delivered only with
``emit_building_candle``, only through ``stream``, never stored).

**No silent hole** (:class:`_Tracker`, no I/O). ``cursor`` is the open time (epoch seconds)
of the first bar not yet accounted for. When a socket is lost the forming bar is dropped (its
last values may not be final); the first bar received afterwards opens at ``ts``, and the
missed span is ``[cursor, ts)``: from the end of the last closed bar received before the drop
to the open of the first bar, closed or forming, received after it. The same rule catches
bars skipped on a live socket (a stalled feed that resumes). ``heal(node_id, interval,
span)`` backfills the span into the store and returns what is still missing; then one
:class:`LiveUpdate` says so (``reconnected`` after a lost socket; ``healed`` = span less
``failed``). Without ``heal`` the span is ``failed``: never claimed healed without proof.

Reconnects wait ``seamless.live.ws.reconnect_backoff_ms`` on the injected clock (the last
delay repeats; back to the first once a message arrives), each logged as a warning; a socket
ccxt re-dials by itself while the task is busy healing is caught by a hook on the client's
close/error callbacks. Use from one event loop; ``latest_bars`` callers and streams may share
a subscription (a stream's queue is unbounded: consume it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qmtl.runtime.io.ccxt_exchange import CCXT_INSTALL_HINT, create_exchange
from qmtl.runtime.io.ccxt_fetcher import translate_ccxt_error
from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS, bar_open_at, frame_from_columns, rows_to_block
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.config import QMTLConfig
from qmtl.runtime.sdk.events import LIVE_RECONNECTING, log_event
from qmtl.runtime.sdk.history_coverage import Range, subtract_ranges
from qmtl.runtime.sdk.live_feed import HealGap, LiveUpdate
from qmtl.runtime.sdk.node_id import check_interval

__all__ = ["CLOSED_BARS_KEPT", "CcxtLiveFeed"]

logger = logging.getLogger(__name__)

#: Closed bars a subscription keeps for ``latest_bars`` (the oldest are forgotten).
CLOSED_BARS_KEPT = 1000

Row = tuple[int, float, float, float, float, float]  # ts (epoch s), open, high, low, close, volume
_Item = LiveUpdate | BaseException | None  # what a stream's queue holds; None: feed closed


@dataclass
class _Tracker:
    """Which bars closed and which spans were missed (module docstring)."""

    interval: int
    cursor: int | None = None
    forming: Row | None = None

    def lost(self) -> None:
        """A socket or a message was lost: the forming bar may lack its final values."""
        self.forming = None

    def add(self, rows: Sequence[Row]) -> list[Row | Range]:
        """Take ``rows`` (ts ascending); the bars that closed and the spans missed, in order."""
        events: list[Row | Range] = []
        for row in rows:
            ts = row[0]
            if self.cursor is not None and ts < self.cursor:
                continue  # an update of a bar already accounted for
            if self.forming is not None and ts == self.forming[0]:
                self.forming = row
                continue
            if self.forming is not None:  # a later bar arrived: the forming one is final
                events.append(self.forming)
                self.cursor = self.forming[0] + self.interval
            if self.cursor is not None and ts > self.cursor:
                events.append(Range(self.cursor, ts))
            self.cursor, self.forming = ts, row
        return events


def _frame(rows: Sequence[Row]) -> pd.DataFrame:
    block = np.asarray(rows, dtype=np.float64).reshape(-1, len(CANONICAL_COLUMNS))
    return frame_from_columns({name: block[:, i] for i, name in enumerate(CANONICAL_COLUMNS)})


@dataclass
class _Subscription:
    node_id: str
    interval: int
    exchange_id: str
    symbol: str
    timeframe: str
    tracker: _Tracker
    closed: dict[int, Row] = field(default_factory=dict)  # by ts, ascending
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    streams: list[asyncio.Queue[_Item]] = field(default_factory=list)
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Wake every ``latest_bars`` waiting for a change."""
        self.changed.set()
        self.changed = asyncio.Event()

    def publish(self, item: _Item) -> None:
        for queue in self.streams:
            queue.put_nowait(item)

    def update(
        self, rows: Sequence[Row], now: float, *, forming: bool = False, reconnected: bool = False,
        healed: tuple[Range, ...] = (), failed: tuple[Range, ...] = (),
    ) -> None:  # fmt: skip
        """Publish a :class:`LiveUpdate` of ``rows`` (epoch seconds ``now``) to the streams."""
        bars = _frame(rows)
        self.publish(
            LiveUpdate(self.node_id, self.interval, bars, now, forming, reconnected, healed, failed)
        )


class CcxtLiveFeed:
    """A :class:`~qmtl.runtime.sdk.live_feed.LiveDataFeed` over ccxt.pro websockets (module
    docstring). ``heal`` backfills missed spans; ``clock`` dates updates, picks the bar
    ``latest_bars`` waits for and paces reconnects."""

    def __init__(
        self, config: QMTLConfig, *, heal: HealGap | None = None, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.settings = config.seamless.live.ws
        if self.settings.dedupe_by != "ts":  # a bar's identity: ccxt candles carry only ts
            raise ValueError(f"dedupe_by: only 'ts' is supported, got {self.settings.dedupe_by!r}")
        self.heal = heal
        self.clock = clock or SystemClock()
        self._clients: dict[str, Any] = {}  # exchange id -> ccxt.pro exchange (untyped)
        self._losses: dict[str, int] = {}  # exchange id -> sockets lost so far
        self._subs: dict[tuple[str, int], _Subscription] = {}
        self._closed = False

    async def latest_bars(self, node_id: str, interval: int, since: int) -> pd.DataFrame:
        """Closed bars with ``ts >= since`` (epoch seconds) once the bar that closed most
        recently by the clock has arrived or was reported missed; no timeout of its own (the
        caller cancels). A websocket only sends bars from the one forming at subscription
        on, so a node's first call returns after its first message, without older bars."""
        sub = self._subscribe(node_id, interval)
        target = bar_open_at(self.clock.now(), interval) - interval
        while sub.error is None and (sub.tracker.cursor is None or sub.tracker.cursor <= target):
            await sub.changed.wait()
        if sub.error is not None:
            raise sub.error
        return _frame([row for ts, row in sub.closed.items() if ts >= since])

    async def stream(self, node_id: str, interval: int) -> AsyncGenerator[LiveUpdate, None]:
        """Updates from now on: closed bars (each once, in order), forming ones with
        ``emit_building_candle``, a notice per missed span; ends when the feed closes."""
        sub = self._subscribe(node_id, interval)
        if sub.error is not None:
            raise sub.error
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        sub.streams.append(queue)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            sub.streams.remove(queue)

    async def aclose(self) -> None:
        """Stop every watch task, end the streams and close the ccxt clients (idempotent)."""
        self._closed = True
        subs, self._subs = list(self._subs.values()), {}
        tasks = [s.task for s in subs if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in subs:
            sub.error = sub.error or RuntimeError("the live feed is closed")
            sub.notify()
            sub.publish(None)
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _subscribe(self, node_id: str, interval: int) -> _Subscription:
        if self._closed:
            raise RuntimeError("the live feed is closed")
        sub = self._subs.get((node_id, interval))
        if sub is None:
            node = check_interval(node_id, interval)
            self._client(node_id, node.exchange)
            sub = _Subscription(
                node_id, interval, node.exchange, node.symbol, node.timeframe, _Tracker(interval)
            )
            sub.task = asyncio.create_task(self._watch(sub), name=f"live:{node_id}")
            self._subs[(node_id, interval)] = sub
        return sub

    def _client(self, node_id: str, exchange_id: str) -> Any:
        """The exchange's ccxt.pro client; ``ValueError`` when there is no websocket to use."""
        if exchange_id in self._clients:
            return self._clients[exchange_id]
        entry = self.config.exchanges.get(exchange_id)
        if entry is None:
            raise ValueError(f"{node_id}: exchange {exchange_id!r} is not configured (exchanges)")
        try:
            import ccxt.pro
        except ImportError as exc:
            raise ImportError(CCXT_INSTALL_HINT) from exc
        no_ws = ValueError(
            f"{node_id}: ccxt.pro has no websocket OHLCV feed (watchOHLCV, ws URL) for "
            f"{exchange_id!r}; use the polling live feed"
        )
        if exchange_id not in ccxt.pro.exchanges:
            raise no_ws
        urls = None if entry.urls is None else {"rest": entry.urls.rest, "ws": entry.urls.ws}
        client = create_exchange(
            exchange_id,
            urls=None if urls is None else {k: v for k, v in urls.items() if v},
            market_type=entry.market_type,
            sandbox=entry.sandbox,
            options=entry.ccxt_options,
            pro=True,
        )
        api = client.urls.get("api")
        if not client.has.get("watchOHLCV") or not isinstance(api, dict) or not api.get("ws"):
            raise no_ws
        self._losses[exchange_id] = 0
        for hook in ("on_close", "on_error"):
            setattr(client, hook, self._on_lost(exchange_id, client, getattr(client, hook)))
        self._clients[exchange_id] = client
        return client

    def _on_lost(self, exchange_id: str, client: Any, inner: Any) -> Any:
        """Wrap a ccxt socket close/error callback: count the loss and drop the updates the
        client holds unread (the bar forming among them may lack its final values: its span
        is healed instead). ccxt does not say which subscriptions a socket carried, so a loss
        counts for all of the exchange's — at worst a spurious notice, one bar re-fetched."""

        def on_lost(ws_client: Any, *args: Any) -> Any:
            self._losses[exchange_id] += 1
            for by_timeframe in (getattr(client, "ohlcvs", None) or {}).values():
                for cache in by_timeframe.values():
                    cache.getLimit(None, None)  # ccxt: the next update starts a new batch
            return inner(ws_client, *args)

        return on_lost

    async def _watch(self, sub: _Subscription) -> None:
        """Run the subscription; a fatal error ends it and goes to every caller."""
        try:
            await self._watch_forever(sub)
        except Exception as exc:  # not swallowed: latest_bars and stream raise it
            sub.error = exc
            sub.notify()
            sub.publish(exc)

    async def _watch_forever(self, sub: _Subscription) -> None:
        import ccxt

        client, ladder = self._clients[sub.exchange_id], self.settings.reconnect_backoff_ms
        failures, seen, notice = 0, self._losses[sub.exchange_id], False
        while True:
            try:
                candles = await client.watch_ohlcv(sub.symbol, sub.timeframe)
            except ccxt.BadSymbol as exc:
                raise ValueError(
                    f"{sub.node_id}: {sub.symbol!r} is not a market of {sub.exchange_id}"
                ) from exc
            except ccxt.BaseError as exc:
                error = translate_ccxt_error(exc, node_id=sub.node_id, window=None)
                if not error.retryable:
                    raise error from exc
                delay_ms = ladder[min(failures, len(ladder) - 1)]
                failures += 1
                _log_reconnect(sub, delay_ms, failures, str(error))
                await self.clock.sleep(delay_ms / 1000)
                continue
            if self._losses[sub.exchange_id] != seen:  # a socket was lost since the last message
                seen = self._losses[sub.exchange_id]
                if not failures:  # ccxt re-dialled while this task was busy
                    _log_reconnect(sub, 0, 1, "connection lost between two messages")
                sub.tracker.lost()
                notice = True
            failures = 0
            rows = _rows(sub, candles)
            if rows:
                await self._absorb(sub, rows, reconnected=notice)
                notice = False

    async def _absorb(self, sub: _Subscription, rows: list[Row], *, reconnected: bool) -> None:
        """Deliver the bars that closed, heal and report the spans missed, in order."""
        closed: list[Row] = []
        for event in sub.tracker.add(rows):
            if isinstance(event, Range):
                self._deliver(sub, closed)
                closed = []
                await self._report(sub, event, reconnected=reconnected)
                reconnected = False
            else:
                closed.append(event)
        self._deliver(sub, closed)
        if reconnected:  # back without missing a bar: still say so
            await self._report(sub, None, reconnected=True)
        if self.settings.emit_building_candle and sub.tracker.forming is not None:
            sub.update([sub.tracker.forming], self.clock.now(), forming=True)
        sub.notify()

    def _deliver(self, sub: _Subscription, rows: list[Row]) -> None:
        if rows:
            sub.closed.update((row[0], row) for row in rows)
            while len(sub.closed) > CLOSED_BARS_KEPT:
                del sub.closed[next(iter(sub.closed))]
            sub.update(rows, self.clock.now())

    async def _report(self, sub: _Subscription, span: Range | None, *, reconnected: bool) -> None:
        """Heal ``span`` (if any), then publish the notice saying what became of it."""
        failed = () if span is None else await self._heal(sub, span)
        healed = () if span is None else tuple(subtract_ranges([span], failed))
        sub.update([], self.clock.now(), reconnected=reconnected, healed=healed, failed=failed)

    async def _heal(self, sub: _Subscription, span: Range) -> tuple[Range, ...]:
        """What of ``span`` is still missing after ``heal`` (all of it without one)."""
        if self.heal is None:
            return (span,)
        try:
            return tuple(await self.heal(sub.node_id, sub.interval, span))
        except Exception as exc:  # reported as failed, never dropped
            extra = {"node_id": sub.node_id, "start": span.start, "end": span.end}
            logger.warning(
                "live feed %s: healing %s failed: %s", sub.node_id, span, exc, extra=extra
            )
            return (span,)


def _rows(sub: _Subscription, candles: Any) -> list[Row]:
    """ccxt's candles as rows in epoch seconds, copied (ccxt updates its lists in place). A
    malformed candle drops the batch and counts as a lost message: its bar gets healed."""
    try:
        block = rows_to_block([list(c) for c in candles])
    except (TypeError, ValueError) as exc:
        extra = {"node_id": sub.node_id, "error": str(exc)}
        logger.warning("live feed %s: malformed candles dropped: %s", sub.node_id, exc, extra=extra)
        sub.tracker.lost()
        return []
    return sorted((int(r[0]) // 1000, r[1], r[2], r[3], r[4], r[5]) for r in block.tolist())


def _log_reconnect(sub: _Subscription, delay_ms: int, attempt: int, error: str) -> None:
    log_event(
        logger, LIVE_RECONNECTING, level=logging.WARNING, node_id=sub.node_id,
        interval=sub.interval, delay_ms=delay_ms, attempt=attempt, error=error,
    )  # fmt: skip
