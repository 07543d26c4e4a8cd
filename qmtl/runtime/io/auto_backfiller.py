"""``DataFetcherAutoBackfiller``: turn missing ranges into stored bars, batch by batch.

Missing ranges are cut on a fixed grid into batches of at most ``window_bars`` bars
(``batch_id = "{node_id}:{interval}:{start}:{end}"``) and run with at most
``max_concurrent_requests`` in flight. Each batch is tried up to ``max_attempts`` times; the
delay before attempt *n+1* is ``retry_backoff_ms * 2**(n-1) * (1 + u)``, ``u ~ U[0,
jitter_ratio]``, never less than the exchange's ``Retry-After``. A batch is conformed and then
committed with its ledger update in one storage transaction (batches of one node that finish
together share it: :mod:`~qmtl.runtime.io.group_commit`): a crash loses at most the
batches in flight, re-running is idempotent, and a batch that fails for good leaves its range
*missing* (never a silent hole) while the other batches still land.

Single flight: batches of one grid cell never run twice at once in this process; a caller
whose batch is already running waits for it, then re-reads the ledger and fetches only what
is still missing. Running batches are shielded from their callers' cancellation (a fetch that
gives up under its SLA leaves the backfill running in the background).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

import numpy as np

from qmtl.runtime.io.group_commit import GroupCommitter
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.backfill_types import BackfillReport, BatchOutcome
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.conformance import ConformancePipeline
from qmtl.runtime.sdk.errors import SeamlessError
from qmtl.runtime.sdk.events import (
    BACKFILL_ATTEMPT,
    BACKFILL_FAILED,
    BACKFILL_RETRY,
    BACKFILL_SUCCEEDED,
    log_event,
)
from qmtl.runtime.sdk.history_coverage import (
    Range,
    compute_missing_ranges,
    grid_cell,
    merge_ranges,
    split_range,
    subtract_ranges,
)
from qmtl.runtime.sdk.history_storage import LedgerUpdate
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from qmtl.runtime.sdk.backfill_types import DataFetcher
    from qmtl.runtime.sdk.history_storage import HistoryStorage

__all__ = ["DataFetcherAutoBackfiller", "retry_delay_s"]

logger = logging.getLogger(__name__)


def retry_delay_s(
    attempt: int, config: BackfillConfig, rng: random.Random, retry_after_s: float | None = None
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
    u = rng.uniform(0.0, config.jitter_ratio)
    delay = config.retry_backoff_ms * float(2 ** (attempt - 1)) * (1 + u) / 1000.0
    return max(delay, retry_after_s or 0.0)


class DataFetcherAutoBackfiller:
    """Backfills missing ranges of any node from ``fetcher`` into ``storage``."""

    def __init__(
        self,
        fetcher: DataFetcher,
        storage: HistoryStorage,
        *,
        config: BackfillConfig | None = None,
        conformance: ConformancePipeline | None = None,
        clock: Clock | None = None,
        metrics: SeamlessMetrics | None = None,
        rng: random.Random | None = None,
        source: str = "ccxt",
        stabilization_bars: int = 2,
        on_batch: Callable[[str, BatchOutcome], None] | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.storage = storage
        self.config = config or BackfillConfig()
        self.conformance = conformance or ConformancePipeline()
        self.clock = clock or SystemClock()
        self.metrics = metrics or default_metrics()
        self.rng = rng or random.Random()
        self.source = source
        self.stabilization_bars = stabilization_bars
        self.on_batch = on_batch  # progress hook: called with (node_id, outcome) per batch
        self._slots = asyncio.Semaphore(self.config.max_concurrent_requests)
        self._committer = GroupCommitter(storage)
        self._inflight: dict[tuple[str, int, int], asyncio.Task[BatchOutcome]] = {}
        self._claimed: dict[tuple[str, int], int] = {}
        self._completed: dict[tuple[str, int], int] = {}

    async def backfill(
        self, node_id: str, interval: int, ranges: Sequence[Range]
    ) -> BackfillReport:
        """Backfill ``ranges`` (merged and cut into batches) and report every batch."""
        started = self.clock.monotonic()
        batches = [
            batch
            for r in merge_ranges(ranges, interval)
            for batch in split_range(r, interval, self.config.window_bars)
        ]
        results = await asyncio.gather(
            *(self._single_flight(node_id, interval, b, started) for b in batches)
        )
        return BackfillReport(node_id, interval, tuple(o for group in results for o in group))

    async def _single_flight(
        self, node_id: str, interval: int, batch: Range, started: float
    ) -> list[BatchOutcome]:
        cell = (node_id, interval, grid_cell(batch.start, interval, self.config.window_bars))
        running = self._inflight.get(cell)
        if running is not None:
            await asyncio.shield(running)
            ledger = await self.storage.read_ledger(node_id, interval)
            rest = compute_missing_ranges(ledger, batch.start, batch.end, interval)
            if not rest:
                return [BatchOutcome(batch, attempts=0, shared=True)]
            groups = [await self._single_flight(node_id, interval, r, started) for r in rest]
            return [o for group in groups for o in group]
        task = asyncio.create_task(self._attempts(node_id, interval, batch, started))
        if self.on_batch is not None:
            hook = self.on_batch
            task.add_done_callback(
                lambda t: (
                    hook(node_id, t.result()) if not t.cancelled() and not t.exception() else None
                )
            )
        self._inflight[cell] = task
        task.add_done_callback(lambda _t: self._forget(cell, task))
        return [await asyncio.shield(task)]

    def _forget(self, cell: tuple[str, int, int], task: asyncio.Task[BatchOutcome]) -> None:
        if self._inflight.get(cell) is task:
            del self._inflight[cell]

    async def _attempts(
        self, node_id: str, interval: int, batch: Range, started: float
    ) -> BatchOutcome:
        cfg = self.config
        fields: dict[str, Any] = {
            "batch_id": f"{node_id}:{interval}:{batch.start}:{batch.end}",
            "node_id": node_id,
            "interval": interval,
            "start": batch.start,
            "end": batch.end,
            "max_attempts": cfg.max_attempts,
            "source": self.source,
        }
        node_key = (node_id, interval)
        self._claimed[node_key] = self._claimed.get(node_key, 0) + 1
        self._update_completion(node_key)
        for attempt in range(1, cfg.max_attempts + 1):
            log_event(logger, BACKFILL_ATTEMPT, attempt=attempt, **fields)
            t0 = self.clock.monotonic()
            try:
                outcome = await self._run_once(node_id, interval, batch, attempt)
            except SeamlessError as exc:
                error = f"{type(exc).__name__}: {exc}"
                if attempt >= cfg.max_attempts or not getattr(exc, "retryable", True):
                    log_event(
                        logger, BACKFILL_FAILED, level=logging.ERROR, attempt=attempt,
                        error=error, **fields,
                    )  # fmt: skip
                    return BatchOutcome(batch, attempts=attempt, error=error)
                log_event(
                    logger, BACKFILL_RETRY, level=logging.WARNING, attempt=attempt, error=error,
                    **fields,
                )  # fmt: skip
                retry_after = getattr(exc, "retry_after_s", None)
                await self.clock.sleep(retry_delay_s(attempt, cfg, self.rng, retry_after))
                continue
            duration_ms = (self.clock.monotonic() - t0) * 1000.0
            log_event(
                logger, BACKFILL_SUCCEEDED, attempt=attempt, rows=outcome.rows,
                duration_ms=duration_ms, **fields,
            )  # fmt: skip
            labels = {"node_id": node_id, "interval": str(interval)}
            self.metrics.backfill_rows.labels(**labels).inc(outcome.rows)
            self.metrics.gap_repair_latency_ms.labels(**labels).observe(
                (self.clock.monotonic() - started) * 1000.0
            )
            self._completed[node_key] = self._completed.get(node_key, 0) + 1
            self._update_completion(node_key)
            return outcome
        raise AssertionError("unreachable: max_attempts >= 1")  # pragma: no cover

    async def _run_once(
        self, node_id: str, interval: int, batch: Range, attempt: int
    ) -> BatchOutcome:
        async with self._slots:
            result = await self.fetcher.fetch_window(
                batch.start, batch.end, node_id=node_id, interval=interval
            )
        frame, report = await asyncio.to_thread(self.conformance.normalize, result.frame, interval)
        covered_until = batch.end if result.covered_until is None else result.covered_until
        vouched = Range(batch.start, max(batch.start, min(batch.end, covered_until)))
        ts = frame["ts"].to_numpy()
        inside = (ts >= vouched.start) & (ts < vouched.end)
        if not bool(np.all(inside)):
            frame = frame.loc[inside].reset_index(drop=True)
        empty = tuple(r for e in result.empty if (r := e.intersect(vouched)) is not None)
        data = tuple(subtract_ranges([vouched], empty)) if not vouched.empty else ()
        update = LedgerUpdate(
            interval=interval,
            data=data,
            empty=empty,
            source=self.source,
            fetched_at=self.clock.now(),
            stabilization_bars=self.stabilization_bars,
        )
        rows = await self._committer.commit(node_id, frame, update)
        return BatchOutcome(
            batch, attempts=attempt, rows=rows, data=data, empty=empty, conformance=report
        )

    def _update_completion(self, node_key: tuple[str, int]) -> None:
        claimed = self._claimed.get(node_key, 0)
        ratio = self._completed.get(node_key, 0) / claimed if claimed else 1.0
        self.metrics.backfill_completion_ratio.labels(
            node_id=node_key[0], interval=str(node_key[1])
        ).set(ratio)
