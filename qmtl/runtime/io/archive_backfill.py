"""The archive-first phase of a backfill (a part of
:class:`~qmtl.runtime.io.auto_backfiller.DataFetcherAutoBackfiller`).

When the fetcher has an ``archive`` (:class:`~qmtl.runtime.sdk.backfill_types.ArchiveSource`),
a backfill first reads the whole stable months and days of its missing ranges from archive
files, then hands what is still missing to the REST batches. Per file:

- it runs like a batch: single flight in this process (a file overlapping a batch in flight
  is left to the REST phase), the coordinator's lease on the file's window when there is a
  coordinator (a window another worker holds is skipped by the REST phase too), the
  ``seamless.backfill.attempt`` / ``.succeeded`` events with ``source="archive"``, rows,
  gap-repair latency and completion metrics;
- the file's bars are conformed like REST pages and committed with a ledger update whose
  DATA ranges are the runs of consecutive bars the file holds, from source ``archive``.
  Nothing is ever recorded known-empty on an archive's word: a bar absent from the file
  stays missing, and the REST phase asks the exchange, whose answer may then establish it;
- a file that is missing, fails its checksum, is corrupt or cannot be downloaded is logged
  (``seamless.archive.fallback``, with the file, the kind of problem and why) and its
  window falls back to REST: its outcome carries no error, no bars and no ranges.

The REST phase then works on the ledger as it is after the archive phase (what the files
did not fill), minus the windows another worker's lease holds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from qmtl.runtime.sdk.backfill_types import ArchiveSource, BatchOutcome
from qmtl.runtime.sdk.errors import ArchiveError, ExchangeError, StorageError
from qmtl.runtime.sdk.events import (
    ARCHIVE_FALLBACK,
    BACKFILL_ATTEMPT,
    BACKFILL_FAILED,
    batch_fields,
    log_event,
)
from qmtl.runtime.sdk.history_coverage import Range, compute_missing_ranges, subtract_ranges
from qmtl.runtime.sdk.history_storage import LedgerUpdate
from qmtl.runtime.sdk.live_feed import closed_runs

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import pandas as pd

    from qmtl.runtime.io.backfill_completion import BackfillCompletion
    from qmtl.runtime.io.batch_leases import BatchLeases
    from qmtl.runtime.sdk.archive_plan import ArchiveWindow
    from qmtl.runtime.sdk.clock import Clock
    from qmtl.runtime.sdk.conformance import ConformancePipeline
    from qmtl.runtime.sdk.history_storage import HistoryStorage

__all__ = ["ARCHIVE_SOURCE", "ArchiveFirst", "log_fallback"]

logger = logging.getLogger("qmtl.runtime.io.auto_backfiller")

#: The ledger source (and the events' ``source``) of bars read from archive files.
ARCHIVE_SOURCE = "archive"

_NodeKey = tuple[str, int]


def log_fallback(node_id: str, interval: int, window: Range, exc: Exception) -> None:
    """``seamless.archive.fallback``: the file of ``window`` could not be used (``kind``:
    the :class:`ArchiveError`'s, or ``unusable`` for anything else) and REST fetches it."""
    kind = exc.kind if isinstance(exc, ArchiveError) else "unusable"
    log_event(
        logger, ARCHIVE_FALLBACK, level=logging.WARNING, node_id=node_id, interval=interval,
        window=str(window), kind=kind, error=str(exc),
    )  # fmt: skip


class ArchiveFirst:
    """The archive phase; mixed into the backfiller, whose state it shares."""

    fetcher: Any
    storage: HistoryStorage
    conformance: ConformancePipeline
    clock: Clock
    stabilization_bars: int
    leases: BatchLeases | None
    _lease_slots: asyncio.Semaphore
    _inflight: dict[_NodeKey, dict[Range, asyncio.Task[BatchOutcome]]]
    completion: BackfillCompletion
    _forget: Callable[[_NodeKey, Range, asyncio.Task[BatchOutcome]], None]
    _filled: Callable[[str, int, Range], Any]
    _commit: Callable[[str, Any, LedgerUpdate, int], Any]
    _succeeded: Callable[..., None]
    _count_conformance: Callable[[str, int, dict[str, int], list[str]], None]
    _archive_slots: asyncio.Semaphore | None = None

    @property
    def archive(self) -> ArchiveSource | None:
        """The fetcher's bulk archives, when it has them."""
        archive = getattr(self.fetcher, "archive", None)
        return archive if isinstance(archive, ArchiveSource) else None

    async def _archive_first(
        self, node_id: str, interval: int, merged: Sequence[Range], started: float
    ) -> tuple[list[BatchOutcome], list[Range]]:
        """Read the archive windows of ``merged``; return their outcomes and what the REST
        phase still has to fetch."""
        archive = self.archive
        if archive is None or not merged:
            return [], list(merged)
        try:
            windows = await archive.archive_windows(node_id, interval, merged)
        except ExchangeError as exc:  # the markets could not be loaded: REST will say more
            logger.warning("%s: no archive plan (%s); fetching from the REST API", node_id, exc)
            return [], list(merged)
        if not windows:
            return [], list(merged)
        if self._archive_slots is None:  # files read *and committed* at once: the reader's
            # own limit bounds downloads only, this one the parsed files awaiting their commit
            self._archive_slots = asyncio.Semaphore(archive.max_concurrent_downloads)
        slots = self._archive_slots

        async def one(window: ArchiveWindow) -> BatchOutcome | None:
            async with slots:
                return await self._archive_flight(archive, node_id, interval, window, started)

        found = await asyncio.gather(*(one(w) for w in windows))
        outcomes = [o for o in found if o is not None]
        ledger = await self.storage.read_ledger(node_id, interval)
        rest = [r for m in merged for r in compute_missing_ranges(ledger, m.start, m.end, interval)]
        held = [o.batch for o in outcomes if o.held]
        return outcomes, subtract_ranges(rest, held) if held else rest

    async def _archive_flight(
        self,
        archive: ArchiveSource,
        node_id: str,
        interval: int,
        window: ArchiveWindow,
        started: float,
    ) -> BatchOutcome | None:
        """One file under single flight; ``None`` when a batch in flight overlaps it."""
        node_key = (node_id, interval)
        table = self._inflight.setdefault(node_key, {})
        span = window.window
        if any(r.intersect(span) is not None for r in table):
            return None  # a REST batch is on it: the REST phase sees what it left
        task = asyncio.create_task(self._archive_leased(archive, node_id, interval, window,
                                                        started))  # fmt: skip
        table[span] = task
        task.add_done_callback(lambda _t: self._forget(node_key, span, task))
        return await asyncio.shield(task)

    async def _archive_leased(
        self,
        archive: ArchiveSource,
        node_id: str,
        interval: int,
        window: ArchiveWindow,
        started: float,
    ) -> BatchOutcome:
        def read() -> Any:
            return self._archive_read(archive, node_id, interval, window, started)

        if self.leases is None:
            outcome: BatchOutcome = await read()
            return outcome
        async with self._lease_slots:
            return await self.leases.run(
                node_id, interval, window.window, read,
                filled=lambda: self._filled(node_id, interval, window.window),
            )  # fmt: skip

    async def _archive_read(
        self,
        archive: ArchiveSource,
        node_id: str,
        interval: int,
        window: ArchiveWindow,
        started: float,
    ) -> BatchOutcome:
        span = window.window
        fields = batch_fields(node_id, interval, span.start, span.end, max_attempts=1,
                              source=ARCHIVE_SOURCE)  # fmt: skip
        node_key = (node_id, interval)
        self.completion.claimed(node_key)
        log_event(logger, BACKFILL_ATTEMPT, attempt=1, **fields)
        t0 = self.clock.monotonic()
        try:
            frame: pd.DataFrame = await archive.read_archive(node_id, interval, window)
            frame, report = await asyncio.to_thread(self.conformance.normalize, frame, interval)
        except Exception as exc:  # any unusable file (strict conformance included): REST
            log_fallback(node_id, interval, span, exc)
            return BatchOutcome(span, attempts=1, source=ARCHIVE_SOURCE)
        self._count_conformance(node_id, interval, report.flags, report.warnings)
        data = tuple(closed_runs(frame["ts"].to_numpy(dtype="int64"), interval))
        update = LedgerUpdate(
            interval=interval, data=data, empty=(), source=ARCHIVE_SOURCE,
            fetched_at=self.clock.now(), stabilization_bars=self.stabilization_bars,
        )  # fmt: skip
        try:
            rows: int = await self._commit(node_id, frame, update, 1)
        except StorageError as exc:
            log_event(logger, BACKFILL_FAILED, level=logging.ERROR, attempt=1, error=str(exc),
                      **fields)  # fmt: skip
            self.completion.finished(node_key, ok=False)
            return BatchOutcome(span, attempts=1, error=str(exc), source=ARCHIVE_SOURCE)
        outcome = BatchOutcome(span, attempts=1, rows=rows, data=data, conformance=report,
                               source=ARCHIVE_SOURCE)  # fmt: skip
        self._succeeded(node_key, fields, 1, outcome, t0, started)
        return outcome
