"""Bodies of closed, fault-free klines pages: rendered in batches, kept in a small LRU cache.

Requests that miss the cache do not render their page on the spot: they queue it and wait.
The first one schedules a flush on the event loop (``call_soon``), so every request that is
already runnable gets queued before it; the flush then generates and encodes queued pages of
one series together (:func:`~qmtl.services.exchange_sim.klines_json.encode_pages`), up to
about :data:`BATCH_ROWS` rows, and schedules itself again while pages are queued, so that
answers go out between batches. Under concurrent load this divides numpy's per-call cost
among the pages; a lone request just waits one loop iteration.

What is served does not depend on batching: a page's body is byte for byte the one
:func:`~qmtl.services.exchange_sim.klines_json.encode_klines` gives for it alone. Identical
pages queued together are rendered once. An exception while rendering reaches every request
of that batch (the app turns it into a 500). One instance per scenario, used from one event
loop (not thread-safe).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from qmtl.services.exchange_sim.bars import generate_bars
from qmtl.services.exchange_sim.klines_json import encode_pages

__all__ = ["BATCH_ROWS", "CACHE_PAGES", "PageBodies"]

#: Rows rendered per numpy pass. Past a few thousand rows the temporaries leave the CPU
#: caches and the per-row cost climbs again.
BATCH_ROWS = 4096
CACHE_PAGES = 64  # ~200 KB per 1000-row page

_Series = tuple[int, str, int]  # seed, symbol, interval_s
_Key = tuple[int, str, int, int, int, int]  # series + first and last open (ms), rows


@dataclass(slots=True)
class _Job:
    open_times: NDArray[np.int64]
    waiters: list[asyncio.Future[bytes]]


class PageBodies:
    """JSON bodies of closed pages without faults (their bytes never change)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[_Key, bytes] = OrderedDict()
        self._queue: dict[_Series, dict[_Key, _Job]] = {}

    async def body(
        self, seed: int, symbol: str, interval_s: int, open_times: NDArray[np.int64]
    ) -> bytes:
        """The body for ``open_times`` (non-empty, ascending, every bar closed)."""
        key = (seed, symbol, interval_s, int(open_times[0]), int(open_times[-1]), len(open_times))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        loop = asyncio.get_running_loop()
        if not self._queue:
            loop.call_soon(self._flush)
        jobs = self._queue.setdefault(key[:3], {})
        job = jobs.get(key)
        if job is None:
            job = jobs[key] = _Job(open_times, [])
        waiter: asyncio.Future[bytes] = loop.create_future()
        job.waiters.append(waiter)
        return await waiter

    def _flush(self) -> None:
        """Render one batch: the oldest queued series, up to :data:`BATCH_ROWS` rows. If more
        is queued, come back once the requests just served have written their answers."""
        series = next(iter(self._queue))
        jobs = self._queue[series]
        batch: list[tuple[_Key, _Job]] = []
        rows = 0
        for key, job in list(jobs.items()):
            if batch and rows + len(job.open_times) > BATCH_ROWS:
                break
            del jobs[key]
            if not _all_done(job):
                batch.append((key, job))
                rows += len(job.open_times)
        if not jobs:
            del self._queue[series]
        try:
            if batch:
                self._render(*series, batch)
        finally:
            if self._queue:
                asyncio.get_running_loop().call_soon(self._flush)

    def _render(
        self, seed: int, symbol: str, interval_s: int, batch: list[tuple[_Key, _Job]]
    ) -> None:
        try:
            times = np.concatenate([job.open_times for _, job in batch])
            bars = generate_bars(seed, symbol, interval_s, times)
            bodies = encode_pages(bars, [len(job.open_times) for _, job in batch])
        except Exception as exc:  # not swallowed: every waiting request raises it
            for _, job in batch:
                for waiter in job.waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            return
        for (key, job), body in zip(batch, bodies, strict=True):
            self._cache[key] = body
            for waiter in job.waiters:
                if not waiter.done():
                    waiter.set_result(body)
        while len(self._cache) > CACHE_PAGES:
            self._cache.popitem(last=False)


def _all_done(job: _Job) -> bool:
    """Every request waiting for the page has gone (cancelled): skip rendering it."""
    return all(waiter.done() for waiter in job.waiters)
