"""``DataFetcherAutoBackfiller``: turn missing ranges into stored bars, batch by batch.

Missing ranges are cut on a fixed grid into batches of at most ``window_bars`` bars
(``batch_id = "{node_id}:{interval}:{start}:{end}"``), created *lazily* and run with at most
``max_concurrent_requests`` fetches in flight, so memory stays bounded whatever the range
(ten years of 1s bars are 350,000 batches; at most ``PLANNED_PER_SLOT *
max_concurrent_requests`` exist at once). Each batch is tried up
to ``max_attempts`` times; the delay before attempt *n+1* is ``retry_backoff_ms * 2**(n-1) *
(1 + u)``, ``u ~ U[0, jitter_ratio]``, never less than the exchange's ``Retry-After``.

What is retried, and how:

- Exchange failures (5xx, timeouts, malformed pages, 429/418) re-fetch the batch; bad
  requests (unknown symbol) and conformance failures fail it at once (asking again cannot
  help). Any other exception is a failed batch too, logged like the others — never an
  exception that sinks the whole backfill.
- A fetch that vouches for only part of the batch and says why the rest is worth asking
  again (``FetchWindowResult.missing_reason``: an empty answer inside settled history) has
  its part committed; the rest is the next attempt's batch. After the last attempt it stays
  *missing*, with that reason as the outcome's error — never recorded as known-empty.
- A failed *write* never costs a re-download: the fetched bars are kept and the write is
  retried on the same backoff. When the store keeps failing, the batch fails with the
  :class:`~qmtl.runtime.sdk.errors.StorageError` and the backfiller stops fetching: later
  batches fail without touching the exchange until a probe of the store (a ledger read)
  succeeds again. Exchange requests during a storage outage are therefore bounded by the
  batches already in flight.

A batch is conformed (which counts and resolves the exchange's duplicate bars) and then
committed with its ledger update in one storage transaction (batches of one node that finish
together share it: :mod:`~qmtl.runtime.io.group_commit`): a crash loses at most the batches in
flight, re-running is idempotent, and a batch that fails for good leaves its range *missing*
(never a silent hole) while the other batches still land.

Single flight: a batch never runs while an *overlapping* batch of the same node runs in this
process; its caller waits for that one, re-reads the ledger and fetches only what is still
missing — for at most ``single_flight_ttl_ms``: a batch still in flight after that (a stuck
exchange call) no longer holds the others back, which then fetch the window themselves.
Disjoint batches never wait on each other. Running batches are shielded from their
callers' cancellation (a fetch that gives up under its SLA leaves the backfill running).

Across processes: with a ``coordinator``, each batch first claims its lease (``lease_ms``,
default ``seamless.backfill.distributed_lease_ttl_ms``); a batch another worker holds is not
fetched and its outcome says so (``held``); an unreachable coordinator falls back to the
in-process single flight above (:mod:`~qmtl.runtime.io.batch_leases`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

import numpy as np

from qmtl.runtime.io.archive_backfill import ArchiveFirst
from qmtl.runtime.io.backfill_completion import BackfillCompletion
from qmtl.runtime.io.batch_leases import BatchLeases
from qmtl.runtime.io.group_commit import GroupCommitter
from qmtl.runtime.sdk._config_models import ObservabilityConfig
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.backfill_types import BackfillReport, BatchOutcome
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.conformance import ConformancePipeline
from qmtl.runtime.sdk.errors import ExchangeError, StorageError
from qmtl.runtime.sdk.events import (
    BACKFILL_ATTEMPT,
    BACKFILL_FAILED,
    BACKFILL_RETRY,
    BACKFILL_SUCCEEDED,
    batch_fields,
    log_event,
)
from qmtl.runtime.sdk.history_coverage import (
    DEFAULT_STABILIZATION_BARS,
    Range,
    compute_missing_ranges,
    iter_batches,
    merge_ranges,
    subtract_ranges,
)
from qmtl.runtime.sdk.history_storage import LedgerUpdate
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from qmtl.runtime.sdk.backfill_coordinator import BackfillCoordinator
    from qmtl.runtime.sdk.backfill_types import DataFetcher
    from qmtl.runtime.sdk.history_storage import HistoryStorage

__all__ = ["PLANNED_PER_SLOT", "DataFetcherAutoBackfiller", "retry_delay_s"]

logger = logging.getLogger(__name__)

_NodeKey = tuple[str, int]

#: Batches planned ahead per fetch slot: enough that fetching never waits for commits
#: (a batch that has fetched still holds its place while it is written), few enough that
#: memory does not depend on the range.
PLANNED_PER_SLOT = 4


def retry_delay_s(
    attempt: int, config: BackfillConfig, rng: random.Random, retry_after_s: float | None = None
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
    u = rng.uniform(0.0, config.jitter_ratio)
    delay = config.retry_backoff_ms * float(2 ** (attempt - 1)) * (1 + u) / 1000.0
    return max(delay, retry_after_s or 0.0)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _retryable(exc: BaseException) -> bool:
    """Whether another attempt can help: exchange trouble the exchange says is transient, a
    partial answer, a network error of a custom fetcher. Not a bad request, a conformance
    failure, a store that kept failing its writes (already retried without re-fetching), or a
    bug."""
    if isinstance(exc, ExchangeError | _Incomplete):
        return exc.retryable
    return isinstance(exc, OSError | TimeoutError)


class _Incomplete(Exception):
    """An attempt vouched for part of its batch only; ``rest`` is worth asking again unless
    ``retryable`` is false (the exchange cannot serve it, e.g. beyond its history depth)."""

    def __init__(self, reason: str, rest: Range, rows: int, data: tuple[Range, ...],
                 empty: tuple[Range, ...], *, retryable: bool = True) -> None:  # fmt: skip
        super().__init__(reason)
        self.retryable = retryable
        self.rest = rest
        self.rows = rows
        self.data = data
        self.empty = empty


class DataFetcherAutoBackfiller(ArchiveFirst):
    """Backfills missing ranges of any node from ``fetcher`` into ``storage``; with a
    ``coordinator``, only batches whose lease it grants (held ``lease_ms`` milliseconds)."""

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
        stabilization_bars: int = DEFAULT_STABILIZATION_BARS,
        on_batch: Callable[[str, BatchOutcome], None] | None = None,
        coordinator: BackfillCoordinator | None = None,
        lease_ms: int | None = None,
        observability: ObservabilityConfig | None = None,
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
        #: Leased batches in flight: no more windows claimed than can be fetched at once, so
        #: a worker never sits on leases other workers could be fetching.
        self._lease_slots = asyncio.Semaphore(self.config.max_concurrent_requests)
        self._committer = GroupCommitter(storage)
        self._inflight: dict[_NodeKey, dict[Range, asyncio.Task[BatchOutcome]]] = {}
        self._storage_failure: StorageError | None = None
        self.observability = observability or ObservabilityConfig()
        self.completion = BackfillCompletion(
            self.metrics, self.observability.backfill_completion_ratio_min
        )
        self.coordinator = coordinator
        #: The batches' leases (``None`` without a coordinator); ``qmtl-seamless worker`` sets
        #: its ``require_lease``.
        self.leases = (
            None
            if coordinator is None
            else BatchLeases(
                coordinator,
                lease_ms=self.config.distributed_lease_ttl_ms if lease_ms is None else lease_ms,
                clock=self.clock,
            )
        )

    async def backfill(
        self, node_id: str, interval: int, ranges: Sequence[Range]
    ) -> BackfillReport:
        """Backfill ``ranges`` (merged and cut into batches) and report every batch."""
        started = self.clock.monotonic()
        # Whole stable periods from archive files first (when the fetcher has them); the
        # REST batches below get what is still missing.
        outcomes, merged = await self._archive_first(
            node_id, interval, merge_ranges(ranges, interval), started
        )
        running: set[asyncio.Task[list[BatchOutcome]]] = set()
        window = PLANNED_PER_SLOT * self.config.max_concurrent_requests
        stopped = False
        try:
            for index, whole in enumerate(merged):
                for batch in iter_batches(whole, interval, self.config.window_bars):
                    while len(running) >= window:
                        done, running = await asyncio.wait(
                            running, return_when=asyncio.FIRST_COMPLETED
                        )
                        outcomes += [o for task in done for o in task.result()]
                    if self._storage_failure is not None and not await self._storage_answers(
                        node_id, interval
                    ):  # stop planning: the rest is one outcome per range, never fetched
                        rest = [Range(batch.start, whole.end), *merged[index + 1 :]]
                        outcomes += [self._not_fetched(node_id, interval, r) for r in rest]
                        stopped = True
                        break
                    flight = self._single_flight(node_id, interval, batch, started)
                    running.add(asyncio.create_task(flight))
                if stopped:
                    break
            for group in await asyncio.gather(*running):
                outcomes += group
        finally:
            for task in running:  # cancelled caller: batches stay shielded, planning stops
                task.cancel()
        outcomes.sort(key=lambda o: o.batch)
        return BackfillReport(node_id, interval, tuple(outcomes))

    async def aclose(self) -> None:
        """Cancel every batch still in flight and wait for them (batches are shielded from
        their callers, so only this stops them): the provider calls it before it closes the
        exchange client, or they would go on retrying against a closed client. Batches
        already committed stay committed."""
        tasks = [t for table in self._inflight.values() for t in table.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- single flight ------------------------------------------------------------------------

    async def _single_flight(
        self, node_id: str, interval: int, batch: Range, started: float
    ) -> list[BatchOutcome]:
        node_key = (node_id, interval)
        table = self._inflight.setdefault(node_key, {})
        overlapping = [t for r, t in table.items() if r.intersect(batch) is not None]
        if overlapping:
            ttl_s = self.config.single_flight_ttl_ms / 1000.0
            _, stuck = await asyncio.wait(overlapping, timeout=ttl_s)  # never cancels them
            if stuck:  # a batch in flight longer than the TTL no longer holds others back
                logger.warning(
                    "%s: a batch overlapping %s is still in flight after %d ms "
                    "(single_flight_ttl_ms): fetching it here too",
                    node_id, batch, self.config.single_flight_ttl_ms,
                )  # fmt: skip
                return [await self._leased(node_id, interval, batch, started)]
            ledger = await self.storage.read_ledger(node_id, interval)
            rest = compute_missing_ranges(ledger, batch.start, batch.end, interval)
            if not rest:
                return [BatchOutcome(batch, attempts=0, shared=True)]
            groups = [await self._single_flight(node_id, interval, r, started) for r in rest]
            return [o for group in groups for o in group]
        task = asyncio.create_task(self._leased(node_id, interval, batch, started))
        table[batch] = task
        task.add_done_callback(lambda _t: self._forget(node_key, batch, task))
        return [await asyncio.shield(task)]

    def _forget(self, node_key: _NodeKey, batch: Range, task: asyncio.Task[BatchOutcome]) -> None:
        table = self._inflight.get(node_key)
        if table is not None and table.get(batch) is task:
            del table[batch]
            if not table:
                del self._inflight[node_key]
        if self.on_batch is not None and not task.cancelled() and task.exception() is None:
            self.on_batch(node_key[0], task.result())

    async def _leased(
        self, node_id: str, interval: int, batch: Range, started: float
    ) -> BatchOutcome:
        if self.leases is None:
            return await self._attempts(node_id, interval, batch, started)
        async with self._lease_slots:
            return await self.leases.run(
                node_id,
                interval,
                batch,
                lambda: self._attempts(node_id, interval, batch, started),
                filled=lambda: self._filled(node_id, interval, batch),
            )

    async def _filled(self, node_id: str, interval: int, batch: Range) -> bool:
        """Whether the store already covers ``batch`` (another worker on it filled it)."""
        ledger = await self.storage.read_ledger(node_id, interval)
        return not compute_missing_ranges(ledger, batch.start, batch.end, interval)

    # -- attempts -----------------------------------------------------------------------------

    async def _attempts(
        self, node_id: str, interval: int, batch: Range, started: float
    ) -> BatchOutcome:
        cfg = self.config
        fields = batch_fields(node_id, interval, batch.start, batch.end,
                              max_attempts=cfg.max_attempts, source=self.source)  # fmt: skip
        node_key = (node_id, interval)
        self.completion.claimed(node_key)
        todo = batch  # what is still to fetch (shrinks when an attempt vouches for a part)
        rows = 0
        data: tuple[Range, ...] = ()
        empty: tuple[Range, ...] = ()
        for attempt in range(1, cfg.max_attempts + 1):
            log_event(logger, BACKFILL_ATTEMPT, attempt=attempt, **fields)
            t0 = self.clock.monotonic()
            try:
                outcome = await self._run_once(node_id, interval, todo, attempt)
            except _Incomplete as part:
                rows, data, empty = rows + part.rows, data + part.data, empty + part.empty
                todo = part.rest
                error: BaseException = part
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is this batch's outcome, never a crash
                error = exc
            else:
                outcome = BatchOutcome(
                    batch,
                    attempts=attempt,
                    rows=rows + outcome.rows,
                    data=data + outcome.data,
                    empty=empty + outcome.empty,
                    conformance=outcome.conformance,
                )
                self._succeeded(node_key, fields, attempt, outcome, t0, started)
                return outcome
            message = _describe(error) if not isinstance(error, _Incomplete) else str(error)
            if attempt >= cfg.max_attempts or not _retryable(error):
                log_event(
                    logger, BACKFILL_FAILED, level=logging.ERROR, attempt=attempt,
                    error=message, **fields,
                )  # fmt: skip
                self.completion.finished(node_key, ok=False)
                return BatchOutcome(
                    batch, attempts=attempt, rows=rows, data=data, empty=empty, error=message
                )
            log_event(
                logger, BACKFILL_RETRY, level=logging.WARNING, attempt=attempt, error=message,
                **fields,
            )  # fmt: skip
            retry_after = getattr(error, "retry_after_s", None)
            await self.clock.sleep(retry_delay_s(attempt, cfg, self.rng, retry_after))
        raise AssertionError("unreachable: max_attempts >= 1")  # pragma: no cover

    def _succeeded(
        self,
        node_key: _NodeKey,
        fields: dict[str, Any],
        attempt: int,
        outcome: BatchOutcome,
        t0: float,
        started: float,
    ) -> None:
        duration_ms = (self.clock.monotonic() - t0) * 1000.0
        log_event(
            logger, BACKFILL_SUCCEEDED, attempt=attempt, rows=outcome.rows,
            duration_ms=duration_ms, **fields,
        )  # fmt: skip
        labels = {"node_id": node_key[0], "interval": str(node_key[1])}
        self.metrics.backfill_rows.labels(**labels).inc(outcome.rows)
        self.metrics.gap_repair_latency_ms.labels(**labels).observe(
            (self.clock.monotonic() - started) * 1000.0
        )
        self.completion.finished(node_key, ok=True)

    async def _run_once(
        self, node_id: str, interval: int, batch: Range, attempt: int
    ) -> BatchOutcome:
        """Fetch ``batch`` once and commit what the exchange vouched for. Raises the fetch's
        error, :class:`_Incomplete` for a partial answer worth asking again, or the store's
        :class:`StorageError` once the write kept failing."""
        async with self._slots:
            result = await self.fetcher.fetch_window(
                batch.start, batch.end, node_id=node_id, interval=interval
            )
        frame, report = await asyncio.to_thread(self.conformance.normalize, result.frame, interval)
        report.warnings.extend(result.warnings)
        self._count_conformance(node_id, interval, report.flags, report.warnings)
        covered_until = batch.end if result.covered_until is None else result.covered_until
        vouched = Range(batch.start, max(batch.start, min(batch.end, covered_until)))
        unavailable = [r for u in result.unavailable if (r := u.intersect(batch)) is not None]
        ts = frame["ts"].to_numpy()
        keep = (ts >= vouched.start) & (ts < vouched.end)  # only vouched, servable bars
        for r in unavailable:
            keep &= (ts < r.start) | (ts >= r.end)
        if not bool(np.all(keep)):
            frame = frame.loc[keep].reset_index(drop=True)
        empty = tuple(
            part
            for e in result.empty
            if (r := e.intersect(vouched)) is not None
            for part in subtract_ranges([r], unavailable)
        )
        data = (
            tuple(subtract_ranges([vouched], [*empty, *unavailable])) if not vouched.empty else ()
        )
        update = LedgerUpdate(
            interval=interval,
            data=data,
            empty=empty,
            source=self.source,
            fetched_at=self.clock.now(),
            stabilization_bars=self.stabilization_bars,
        )
        rows = await self._commit(node_id, frame, update, attempt)
        if result.missing_reason is not None and vouched.end < batch.end:
            raise _Incomplete(result.missing_reason, Range(vouched.end, batch.end), rows, data,
                              empty)  # fmt: skip
        if unavailable:
            reason = result.unavailable_reason or "the exchange does not serve this window"
            raise _Incomplete(reason, unavailable[0], rows, data, empty, retryable=False)
        return BatchOutcome(
            batch, attempts=attempt, rows=rows, data=data, empty=empty, conformance=report
        )

    async def _commit(self, node_id: str, frame: Any, update: LedgerUpdate, attempt: int) -> int:
        """Write with retries on the backfill's backoff, keeping the fetched bars: a failed
        write never costs a re-download."""
        for write in range(1, self.config.max_attempts + 1):
            try:
                rows = await self._committer.commit(node_id, frame, update)
            except StorageError as exc:
                if write >= self.config.max_attempts:
                    self._storage_failure = exc
                    raise
                await self.clock.sleep(retry_delay_s(write, self.config, self.rng))
                continue
            self._storage_failure = None
            return rows
        raise AssertionError("unreachable: max_attempts >= 1")  # pragma: no cover

    async def _storage_answers(self, node_id: str, interval: int) -> bool:
        """After a failed write: is the store back? (One ledger read, instead of fetching
        bars that could not be stored.)"""
        try:
            await self.storage.read_ledger(node_id, interval)
        except StorageError as exc:
            self._storage_failure = exc
            return False
        self._storage_failure = None
        return True

    def _not_fetched(self, node_id: str, interval: int, batch: Range) -> BatchOutcome:
        failure = self._storage_failure
        error = f"{_describe(failure)} (not fetched: the store is failing)" if failure else ""
        fields = batch_fields(
            node_id, interval, batch.start, batch.end,
            max_attempts=self.config.max_attempts, source=self.source,
        )  # fmt: skip
        log_event(logger, BACKFILL_FAILED, level=logging.ERROR, attempt=0, error=error, **fields)
        return BatchOutcome(batch, attempts=0, error=error)

    def _count_conformance(
        self, node_id: str, interval: int, flags: dict[str, int], warnings: list[str]
    ) -> None:
        labels = {"node_id": node_id, "interval": str(interval), "world_id": ""}
        for flag, count in flags.items():
            if count and flag != "gap":  # gaps of a batch are the ledger's business
                self.metrics.conformance_flags.labels(**labels, flag_type=flag).inc(count)
        if warnings:
            self.metrics.conformance_warnings.labels(**labels).inc(len(warnings))
