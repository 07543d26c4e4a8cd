"""The live-feed port: a source of the newest *closed* bars.

Two ways in, one contract:

- :meth:`LiveDataFeed.latest_bars` — *pull*, what ``fetch`` calls for the tail of a request
  the store does not hold yet (the ``live_wait`` phase, :func:`consult_live`): the closed bars
  with ``ts >= since`` the feed has, first waiting — if the bar that closed most recently (by
  the feed's clock) has not arrived yet — until it does. The caller bounds the wait (it
  cancels the call when its budget is spent), so a feed never needs its own timeout here.
- :meth:`LiveDataFeed.stream` — *push*, what ``qmtl-seamless live`` and long-running
  consumers read: one :class:`LiveUpdate` per batch of bars that closed (in ``ts`` order, each
  bar once), and one per reconnect saying which span was backfilled so that no hole is left.

Bars are canonical columns (``ts`` = open time in epoch seconds, ``open, high, low, close,
volume``), sorted, unique by ``ts`` (``dedupe_by: ts``). A forming bar is delivered only by a
feed built with ``emit_building_candle`` and only through :meth:`stream` (flagged
``forming``); :meth:`latest_bars` never returns one, and nothing forming is ever stored.

Implementations: :class:`~qmtl.runtime.sdk.live_polling.PollingLiveFeed` (any
:class:`~qmtl.runtime.sdk.backfill_types.DataFetcher`, paced by the shared limiter) and
:class:`~qmtl.runtime.io.ccxt_live_feed.CcxtLiveFeed` (the exchange's websocket via ccxt.pro).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import pandas as pd

from qmtl.runtime.sdk.clock import wait_within
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.history_coverage import Range, subtract_ranges
from qmtl.runtime.sdk.history_storage import LedgerUpdate
from qmtl.runtime.sdk.sla import SLAPhase

if TYPE_CHECKING:
    from qmtl.runtime.sdk.clock import Clock
    from qmtl.runtime.sdk.fetch_outcome import FetchOutcome
    from qmtl.runtime.sdk.history_storage import HistoryStorage
    from qmtl.runtime.sdk.sla import SLATracker

__all__ = [
    "HealGap",
    "LiveDataFeed",
    "LiveUpdate",
    "closed_runs",
    "consult_live",
    "store_closed_bars",
]

logger = logging.getLogger(__name__)

#: How a feed hands a span it missed (while disconnected) to the backfiller:
#: ``heal(node_id, interval, span)`` backfills ``span`` into the store and returns the parts
#: still missing afterwards (empty: healed). Wired by the composition root.
HealGap = Callable[[str, int, Range], Awaitable[tuple[Range, ...]]]


@dataclass(frozen=True, slots=True)
class LiveUpdate:
    """What a feed's :meth:`~LiveDataFeed.stream` says: ``bars`` that closed (canonical
    columns, sorted, never seen before on this stream; empty for a pure notice), or — with
    ``forming`` — the still-forming bar (``emit_building_candle`` feeds only). After a
    reconnect, ``reconnected`` is true and ``healed`` lists the spans the feed missed while
    disconnected and had backfilled into the store before saying so (``failed``: spans whose
    backfill did not succeed — still missing, reported, never dropped). ``received_at``:
    epoch seconds (the feed's clock) when the update arrived."""

    node_id: str
    interval: int
    bars: pd.DataFrame
    received_at: float
    forming: bool = False
    reconnected: bool = False
    healed: tuple[Range, ...] = field(default=())
    failed: tuple[Range, ...] = field(default=())


@runtime_checkable
class LiveDataFeed(Protocol):
    """A source of the newest *closed* bars (module docstring)."""

    async def latest_bars(self, node_id: str, interval: int, since: int) -> pd.DataFrame:
        """Closed bars with ``ts >= since``, after waiting for the most recently closed one."""
        ...

    def stream(self, node_id: str, interval: int) -> AsyncIterator[LiveUpdate]:
        """Updates for ``(node_id, interval)`` from now on, until the consumer stops."""
        ...

    async def aclose(self) -> None:
        """Stop every subscription and release connections (idempotent)."""
        ...


def closed_runs(ts: npt.NDArray[np.int64], interval: int) -> list[Range]:
    """The contiguous runs of bars opening at ``ts`` (sorted, unique): what a set of bars
    covers, and nothing between them."""
    if len(ts) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ts) != interval) + 1
    starts = ts[np.r_[0, breaks]]
    ends = ts[np.r_[breaks - 1, len(ts) - 1]] + interval
    return [Range(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


async def consult_live(
    feed: LiveDataFeed,
    storage: HistoryStorage,
    node_id: str,
    interval: int,
    window: Range,
    tracker: SLATracker,
    outcome: FetchOutcome,
    clock: Clock,
) -> pd.DataFrame:
    """Ask ``feed`` for the closed bars of the still-missing tail of ``window`` within the
    ``live_wait`` budget (timed on ``tracker``) — before any backfill: the feed has them in
    memory, the exchange's REST API would be asked again. The bars it gives are no longer
    missing in ``outcome`` (``live_rows`` counts them) and are **stored** — bars and their
    runs as DATA in the ledger, one transaction — so the next fetch serves them from the
    store (closed bars only: a feed never gives a forming one here). Returns the bars that
    could not be stored (the store failed): the caller serves them from memory."""
    nothing = pd.DataFrame()
    if not outcome.missing or outcome.missing[-1].end != window.end:
        return nothing
    tail = outcome.missing[-1]
    task = asyncio.create_task(feed.latest_bars(node_id, interval, tail.start))
    budget_ms = tracker.remaining_ms(SLAPhase.LIVE_WAIT)
    started = clock.monotonic()
    finished = await wait_within(task, budget_ms, clock)
    tracker.record(
        SLAPhase.LIVE_WAIT, (clock.monotonic() - started) * 1000.0, timed_out=not finished
    )
    if not finished:
        task.cancel()
    if not finished or task.exception() is not None:
        return nothing
    live = task.result()
    ts = live["ts"].to_numpy()
    live = live.loc[(ts >= tail.start) & (ts < tail.end)].reset_index(drop=True)
    if live.empty:
        return nothing
    outcome.live_rows = len(live)
    outcome.missing = subtract_ranges(
        outcome.missing, closed_runs(live["ts"].to_numpy(dtype=np.int64), interval)
    )
    try:
        await store_closed_bars(storage, node_id, interval, live, fetched_at=clock.now())
    except StorageError as exc:
        logger.warning("%s: live bars not stored, served from memory: %s", node_id, exc)
        return live
    return nothing


async def store_closed_bars(
    storage: HistoryStorage, node_id: str, interval: int, bars: pd.DataFrame, *, fetched_at: float
) -> int:
    """Store a feed's closed ``bars`` and their runs as DATA in the ledger, in one
    transaction (``source="live"``; ``fetched_at`` epoch seconds). Returns bars written."""
    runs = closed_runs(bars["ts"].to_numpy(dtype=np.int64), interval)
    update = LedgerUpdate(interval=interval, data=tuple(runs), source="live", fetched_at=fetched_at)
    return await storage.write_bars(node_id, bars, ledger_update=update)
