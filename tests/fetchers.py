"""A scripted DataFetcher for engine tests: a real implementation of the protocol (not a
patched method) that serves deterministic bars, fails on a script and can take (fake) time."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd

from qmtl.runtime.sdk.backfill_types import FetchWindowResult
from qmtl.runtime.sdk.clock import Clock
from qmtl.runtime.sdk.history_coverage import Range


class ScriptedFetcher:
    """Serves bars ``close = ts``; ``failures[start]`` lists errors raised by successive
    calls for the batch starting at ``start``; ``empty`` spans have no bars. ``silent[start]``
    counts calls for that batch answered like an exchange that returned nothing from
    ``silent_from`` on (an empty page: ``missing_reason`` set); ``repeat`` duplicates every
    ``repeat``-th bar (as a misbehaving page would)."""

    def __init__(self, *, clock: Clock | None = None, delay_s: float = 0.0) -> None:
        self.clock = clock
        self.delay_s = delay_s
        self.failures: dict[int, list[Exception]] = {}
        self.empty: list[Range] = []
        self.covered_until: int | None = None
        self.calls: list[tuple[int, int]] = []
        self.silent: dict[int, int] = {}
        self.silent_from: int | None = None
        self.repeat: int | None = None
        self.in_flight = 0
        self.max_in_flight = 0

    async def fetch_window(
        self, start: int, end: int, *, node_id: str, interval: int
    ) -> FetchWindowResult:
        self.calls.append((start, end))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.clock is not None and self.delay_s:
                await self.clock.sleep(self.delay_s)
            else:
                await asyncio.sleep(0)
            pending = self.failures.get(start)
            if pending:
                raise pending.pop(0)
            until = end if self.covered_until is None else min(end, self.covered_until)
            reason = None
            if self.silent.get(start, 0) > 0 and self.silent_from is not None:
                self.silent[start] -= 1
                until = max(start, min(until, self.silent_from))
                reason = "the exchange returned no bars (scripted)"
            ts = np.arange(start, until, interval, dtype=np.int64)
            for gap in self.empty:
                ts = ts[(ts < gap.start) | (ts >= gap.end)]
            if self.repeat:
                ts = np.sort(np.concatenate([ts, ts[:: self.repeat]]), kind="stable")
            px = ts.astype(np.float64)
            frame = pd.DataFrame(
                {"ts": ts, "open": px, "high": px + 1, "low": px - 1, "close": px, "volume": 1.0}
            )
            empty = tuple(r for g in self.empty if (r := g.intersect(Range(start, until))))
            covered = self.covered_until if reason is None else until
            return FetchWindowResult(frame, empty, covered, missing_reason=reason)
        finally:
            self.in_flight -= 1
