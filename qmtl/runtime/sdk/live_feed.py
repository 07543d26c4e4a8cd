"""The live-feed port: a source of the newest *closed* bars, consulted by ``fetch`` for the
tail of a request the store does not hold yet (the ``live_wait`` phase). Polling and
websocket implementations arrive with the live-data capability."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pandas as pd

from qmtl.runtime.sdk.clock import wait_within
from qmtl.runtime.sdk.history_coverage import Range, subtract_ranges
from qmtl.runtime.sdk.sla import SLAPhase

if TYPE_CHECKING:
    from qmtl.runtime.sdk.clock import Clock
    from qmtl.runtime.sdk.fetch_outcome import FetchOutcome
    from qmtl.runtime.sdk.sla import SLATracker

__all__ = ["LiveDataFeed", "consult_live"]


@runtime_checkable
class LiveDataFeed(Protocol):
    """A source of the newest *closed* bars (canonical columns, ``ts >= since``)."""

    async def latest_bars(self, node_id: str, interval: int, since: int) -> pd.DataFrame: ...


async def consult_live(
    feed: LiveDataFeed,
    node_id: str,
    interval: int,
    window: Range,
    tracker: SLATracker,
    raw: pd.DataFrame,
    outcome: FetchOutcome,
    clock: Clock,
) -> pd.DataFrame:
    """Ask ``feed`` for the bars of the still-missing tail of ``window`` within the
    ``live_wait`` budget (timed on ``tracker``); the bars it gives are appended to ``raw``
    and no longer missing in ``outcome`` (they are served, not stored)."""
    tail = outcome.missing[-1]
    if tail.end != window.end:
        return raw
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
        return raw
    live = task.result()
    ts = live["ts"].to_numpy()
    live = live.loc[(ts >= tail.start) & (ts < tail.end)]
    if live.empty:
        return raw
    outcome.live_rows = len(live)
    served = Range(int(live["ts"].min()), int(live["ts"].max()) + interval)
    outcome.missing = subtract_ranges(outcome.missing, [served])
    return pd.concat([raw, live], ignore_index=True)
