"""DataFetcherAutoBackfiller over real DuckDB storage, with a scripted DataFetcher.

The fetcher here is a plain implementation of the DataFetcher protocol (not a patched
method): it serves deterministic bars and fails on a script, so retry arithmetic, events and
single flight are checked exactly and without sleeping (fake clock). The same backfiller is
exercised end to end against the exchange simulator and real ccxt in test_provider_e2e.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.auto_backfiller import (
    PLANNED_PER_SLOT,
    DataFetcherAutoBackfiller,
    retry_delay_s,
)
from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.backfill_types import FetchWindowResult
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.errors import (
    ConformanceError,
    ExchangeRateLimitError,
    ExchangeRequestError,
    ExchangeUnavailableError,
)
from qmtl.runtime.sdk.history_coverage import Range, SegmentKind, compute_missing_ranges
from qmtl.runtime.sdk.history_storage import HistoryStorage
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from tests.fetchers import ScriptedFetcher

NODE = "ohlcv:binance:BTC/USDT:1m"
I = 60
T0 = 1_700_000_040 - 1_700_000_040 % (10 * I)  # on the 10-bar grid


@pytest.fixture
async def storage() -> AsyncIterator[HistoryStorage]:
    store = open_storage("duckdb:///:memory:")
    async with store:
        yield store


def make(
    storage: HistoryStorage, fetcher: ScriptedFetcher, **cfg: int | float
) -> tuple[DataFetcherAutoBackfiller, FakeClock, CollectorRegistry]:
    clock = FakeClock(start=T0 + 10_000 * I, auto_advance=True)
    registry = CollectorRegistry()
    settings: dict[str, int | float] = {"window_bars": 10, "retry_backoff_ms": 500, **cfg}
    backfiller = DataFetcherAutoBackfiller(
        fetcher,
        storage,
        config=BackfillConfig(**settings),  # type: ignore[arg-type]
        clock=clock,
        metrics=SeamlessMetrics(registry),
        rng=random.Random(7),
    )
    return backfiller, clock, registry


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, int]]:
    return [
        (r.getMessage(), r.start, r.attempt)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("seamless.backfill.")
    ]


async def test_batches_on_the_grid_with_bounded_concurrency(storage: HistoryStorage) -> None:
    fetcher = ScriptedFetcher()
    backfiller, _, registry = make(storage, fetcher, max_concurrent_requests=2)
    report = await backfiller.backfill(NODE, I, [Range(T0 + 5 * I, T0 + 35 * I)])
    assert sorted(fetcher.calls) == [
        (T0 + 5 * I, T0 + 10 * I),
        (T0 + 10 * I, T0 + 20 * I),
        (T0 + 20 * I, T0 + 30 * I),
        (T0 + 30 * I, T0 + 35 * I),
    ]
    assert fetcher.max_in_flight == 2
    assert report.ok and report.rows == 30
    frame = await storage.read_range(NODE, T0, T0 + 100 * I)
    assert frame["ts"].tolist() == list(range(T0 + 5 * I, T0 + 35 * I, I))
    ledger = await storage.read_ledger(NODE, I)
    assert compute_missing_ranges(ledger, T0 + 5 * I, T0 + 35 * I, I) == []
    labels = {"node_id": NODE, "interval": "60"}
    assert registry.get_sample_value("seamless_backfill_rows_total", labels) == 30
    assert registry.get_sample_value("backfill_completion_ratio", labels) == 1.0
    assert registry.get_sample_value("gap_repair_latency_ms_count", labels) == 4


async def test_retries_with_backoff_then_success(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    fetcher = ScriptedFetcher()
    fetcher.failures[T0] = [ExchangeUnavailableError("502"), ExchangeUnavailableError("503")]
    backfiller, clock, _ = make(storage, fetcher)
    with caplog.at_level(logging.INFO, logger="qmtl"):
        report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    assert report.ok and report.outcomes[0].attempts == 3
    assert events(caplog) == [
        ("seamless.backfill.attempt", T0, 1),
        ("seamless.backfill.retry", T0, 1),
        ("seamless.backfill.attempt", T0, 2),
        ("seamless.backfill.retry", T0, 2),
        ("seamless.backfill.attempt", T0, 3),
        ("seamless.backfill.succeeded", T0, 3),
    ]
    rng = random.Random(7)
    cfg = BackfillConfig(window_bars=10)
    assert clock.slept == pytest.approx([retry_delay_s(1, cfg, rng), retry_delay_s(2, cfg, rng)])
    assert 0.5 <= clock.slept[0] <= 0.625 and 1.0 <= clock.slept[1] <= 1.25
    succeeded = next(r for r in caplog.records if r.getMessage().endswith("succeeded"))
    assert succeeded.rows == 10 and succeeded.batch_id == f"{NODE}:60:{T0}:{T0 + 600}"  # type: ignore[attr-defined]
    assert (succeeded.max_attempts, succeeded.source) == (5, "ccxt")  # type: ignore[attr-defined]


async def test_retry_after_is_a_floor_for_the_delay(storage: HistoryStorage) -> None:
    fetcher = ScriptedFetcher()
    fetcher.failures[T0] = [ExchangeRateLimitError("429", http_status=429, retry_after_s=7.0)]
    backfiller, clock, _ = make(storage, fetcher)
    await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    assert clock.slept == [7.0]


async def test_permanent_failure_leaves_the_range_missing_and_others_land(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    fetcher = ScriptedFetcher()
    fetcher.failures[T0 + 10 * I] = [ExchangeUnavailableError("down")] * 3
    backfiller, _, registry = make(storage, fetcher, max_attempts=3)
    with caplog.at_level(logging.INFO, logger="qmtl"):
        report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 30 * I)])
    assert not report.ok
    assert report.failed == [Range(T0 + 10 * I, T0 + 20 * I)]
    assert report.rows == 20
    failed = [r for r in caplog.records if r.getMessage() == "seamless.backfill.failed"]
    assert len(failed) == 1 and "ExchangeUnavailableError: down" in failed[0].error  # type: ignore[attr-defined]
    assert failed[0].attempt == 3 and failed[0].levelno == logging.ERROR
    ledger = await storage.read_ledger(NODE, I)
    assert compute_missing_ranges(ledger, T0, T0 + 30 * I, I) == [Range(T0 + 10 * I, T0 + 20 * I)]
    labels = {"node_id": NODE, "interval": "60"}
    assert registry.get_sample_value("backfill_completion_ratio", labels) == pytest.approx(2 / 3)


async def test_non_retryable_error_fails_at_once(storage: HistoryStorage) -> None:
    fetcher = ScriptedFetcher()
    fetcher.failures[T0] = [ExchangeRequestError("Invalid symbol.")]
    backfiller, clock, _ = make(storage, fetcher)
    report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    assert report.outcomes[0].attempts == 1 and not report.ok
    assert clock.slept == []


async def test_known_empty_and_unvouched_tail(storage: HistoryStorage) -> None:
    fetcher = ScriptedFetcher()
    fetcher.empty = [Range(T0 + 2 * I, T0 + 5 * I)]
    fetcher.covered_until = T0 + 8 * I  # e.g. the forming bar and the future
    backfiller, _, _ = make(storage, fetcher)
    await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    ledger = await storage.read_ledger(NODE, I)
    kinds = [(s.start - T0, s.end - T0, s.kind) for s in ledger]
    assert kinds == [
        (0, 2 * I, SegmentKind.DATA),
        (2 * I, 5 * I, SegmentKind.EMPTY),
        (5 * I, 8 * I, SegmentKind.DATA),
    ]
    assert compute_missing_ranges(ledger, T0, T0 + 10 * I, I) == [Range(T0 + 8 * I, T0 + 10 * I)]


async def test_single_flight_overlapping_callers_fetch_each_window_once(
    storage: HistoryStorage,
) -> None:
    fetcher = ScriptedFetcher()
    backfiller, _, _ = make(storage, fetcher)
    requests = [Range(T0 + k * 3 * I, T0 + (k * 3 + 25) * I) for k in range(10)]
    reports = await asyncio.gather(*(backfiller.backfill(NODE, I, [r]) for r in requests))
    assert all(r.ok for r in reports)
    fetched = Counter(ts for s, e in fetcher.calls for ts in range(s, e, I))
    assert max(fetched.values()) == 1  # no bar was fetched twice
    frame = await storage.read_range(NODE, T0, T0 + 100 * I)
    assert frame["ts"].tolist() == list(range(T0, T0 + 52 * I, I))


async def test_rerun_is_idempotent(storage: HistoryStorage) -> None:
    fetcher = ScriptedFetcher()
    backfiller, _, _ = make(storage, fetcher)
    for _ in range(2):
        await backfiller.backfill(NODE, I, [Range(T0, T0 + 20 * I)])
    frame = await storage.read_range(NODE, T0, T0 + 20 * I)
    assert len(frame) == 20 and frame["ts"].is_unique
    assert len(await storage.read_ledger(NODE, I)) == 1


async def test_an_unproven_empty_answer_is_retried_and_never_known_empty(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a transient empty answer inside settled history used to become a
    permanent EMPTY segment. The vouched part is kept, the rest asked again."""
    fetcher = ScriptedFetcher()
    fetcher.silent_from = T0 + 6 * I
    fetcher.silent[T0] = 1  # the first answer stops at bar 6; the retry is complete
    backfiller, _, _ = make(storage, fetcher)
    with caplog.at_level(logging.INFO, logger="qmtl"):
        report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    assert report.ok and report.rows == 10 and report.outcomes[0].attempts == 2
    assert fetcher.calls == [(T0, T0 + 10 * I), (T0 + 6 * I, T0 + 10 * I)]  # only the rest
    ledger = await storage.read_ledger(NODE, I)
    assert [(s.start, s.end, s.kind) for s in ledger] == [(T0, T0 + 10 * I, SegmentKind.DATA)]
    retry = next(r for r in caplog.records if r.getMessage() == "seamless.backfill.retry")
    assert "returned no bars" in retry.error  # type: ignore[attr-defined]


async def test_a_persistently_empty_answer_stays_missing_with_its_reason(
    storage: HistoryStorage,
) -> None:
    fetcher = ScriptedFetcher()
    fetcher.silent_from = T0 + 6 * I
    fetcher.silent = {T0: 99, T0 + 6 * I: 99}
    backfiller, _, _ = make(storage, fetcher, max_attempts=3)
    report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    assert not report.ok and report.rows == 6
    assert "returned no bars" in report.errors[0]
    assert report.failed == [Range(T0 + 6 * I, T0 + 10 * I)]  # the answered part is kept
    ledger = await storage.read_ledger(NODE, I)
    assert all(s.kind is SegmentKind.DATA for s in ledger)
    assert compute_missing_ranges(ledger, T0, T0 + 10 * I, I) == [Range(T0 + 6 * I, T0 + 10 * I)]


async def test_any_exception_of_a_fetcher_is_a_failed_batch_not_a_crash(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a non-SeamlessError skipped seamless.backfill.failed and failed the
    whole gather (the other batches' outcomes were lost)."""
    fetcher = ScriptedFetcher()
    fetcher.failures[T0 + 10 * I] = [KeyError("bug in a custom fetcher")]
    backfiller, clock, _ = make(storage, fetcher)
    with caplog.at_level(logging.INFO, logger="qmtl"):
        report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 30 * I)])
    assert report.failed == [Range(T0 + 10 * I, T0 + 20 * I)] and report.rows == 20
    failed = [r for r in caplog.records if r.getMessage() == "seamless.backfill.failed"]
    assert len(failed) == 1 and "KeyError" in failed[0].error  # type: ignore[attr-defined]
    assert clock.slept == []  # a bug is not retried


async def test_conformance_errors_are_not_refetched(storage: HistoryStorage) -> None:
    """Regression: ConformanceError was retried by downloading the same bad bars again."""
    fetcher = ScriptedFetcher()
    fetcher.failures[T0] = [ConformanceError("conformance: missing column 'close'")]
    backfiller, clock, _ = make(storage, fetcher)
    report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    assert not report.ok and report.outcomes[0].attempts == 1
    assert len(fetcher.calls) == 1 and clock.slept == []


async def test_a_failing_store_stops_the_exchange_traffic(storage: HistoryStorage) -> None:
    """Regression: with the store down, every batch was downloaded again and again (2,313
    downloads in 52 s). Now a failed write is retried without re-fetching, and once the store
    has failed, later batches are not fetched at all."""
    fetcher = ScriptedFetcher()
    backfiller, _, _ = make(storage, fetcher, max_attempts=3, max_concurrent_requests=2)
    await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    await storage.close()  # every further call raises StorageError
    fetcher.calls.clear()
    report = await backfiller.backfill(NODE, I, [Range(T0 + 10 * I, T0 + 1000 * I)])
    assert not report.ok and report.failed == [Range(T0 + 10 * I, T0 + 1000 * I)]
    assert all("StorageError" in (o.error or "") for o in report.outcomes)
    assert len(report.outcomes) <= PLANNED_PER_SLOT * 2 + 1  # the rest: one outcome
    # Only the batches already planned when the first write failed reached the exchange,
    # each exactly once (the write was retried, never the download).
    assert len(fetcher.calls) <= PLANNED_PER_SLOT * 2
    assert len(set(fetcher.calls)) == len(fetcher.calls)


async def test_exchange_duplicates_are_counted(storage: HistoryStorage) -> None:
    """Regression: duplicates dropped from exchange pages were never counted."""
    fetcher = ScriptedFetcher()
    fetcher.repeat = 5
    backfiller, _, registry = make(storage, fetcher)
    report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    assert report.ok and report.rows == 10
    labels = {"node_id": NODE, "interval": "60", "world_id": "", "flag_type": "duplicate_ts"}
    assert registry.get_sample_value("seamless_conformance_flag_total", labels) == 2


async def test_disjoint_batches_of_one_grid_cell_never_wait_on_each_other(
    storage: HistoryStorage,
) -> None:
    """Regression: single flight keyed by grid cell made a fetch wait on a disjoint batch
    (one it could not have caused) in the same cell."""
    clock = FakeClock(start=T0 + 10_000 * I)
    fetcher = ScriptedFetcher(clock=clock, delay_s=30.0)
    backfiller = DataFetcherAutoBackfiller(
        fetcher, storage, config=BackfillConfig(window_bars=10), clock=clock,
        metrics=SeamlessMetrics(CollectorRegistry()),
    )  # fmt: skip
    slow = asyncio.create_task(backfiller.backfill(NODE, I, [Range(T0, T0 + 3 * I)]))
    for _ in range(10):
        await asyncio.sleep(0)
    fetcher.delay_s = 0.0
    other = asyncio.create_task(backfiller.backfill(NODE, I, [Range(T0 + 5 * I, T0 + 8 * I)]))
    await asyncio.wait_for(other, timeout=10)  # it does not wait for the slow, disjoint batch
    assert other.result().ok and not slow.done()
    clock.advance(30.0)
    await slow


async def test_batches_are_planned_lazily(storage: HistoryStorage) -> None:
    """Regression: every batch task was created up front (10 years of 1s bars: 2.4 GB).
    Here 500 batches never have more than PLANNED_PER_SLOT x max_concurrent_requests batch
    tasks alive."""

    class Counting(ScriptedFetcher):
        peak = 0

        async def fetch_window(
            self, start: int, end: int, *, node_id: str, interval: int
        ) -> FetchWindowResult:
            self.peak = max(self.peak, len(asyncio.all_tasks()))
            return await super().fetch_window(start, end, node_id=node_id, interval=interval)

    fetcher = Counting()
    backfiller, _, _ = make(storage, fetcher, max_concurrent_requests=4)
    report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 5_000 * I)])
    assert report.ok and report.rows == 5_000 and len(report.outcomes) == 500
    # the test, the commit writer, and (wrapper, batch) per planned batch
    assert fetcher.peak <= 2 + PLANNED_PER_SLOT * 4 * 2


async def test_a_stuck_batch_holds_overlapping_callers_back_for_single_flight_ttl_only(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """``single_flight_ttl_ms``: a caller waits for an overlapping batch in flight at most
    that long; a batch stuck longer (an exchange call that never answers) no longer holds it
    back — it fetches the window itself. Within the TTL the window is fetched once."""
    release = asyncio.Event()

    class StuckFirst(ScriptedFetcher):
        async def fetch_window(
            self, start: int, end: int, *, node_id: str, interval: int
        ) -> FetchWindowResult:
            if not self.calls:
                self.calls.append((start, end))
                await release.wait()
                self.calls.pop(0)
            return await super().fetch_window(start, end, node_id=node_id, interval=interval)

    window = Range(T0, T0 + 10 * I)
    fetcher = StuckFirst()
    backfiller, _, _ = make(storage, fetcher, single_flight_ttl_ms=50)
    stuck = asyncio.create_task(backfiller.backfill(NODE, I, [window]))
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="qmtl"):
        second = await asyncio.wait_for(backfiller.backfill(NODE, I, [window]), 5)
    assert second.ok and second.rows == 10
    assert any("single_flight_ttl_ms" in r.getMessage() for r in caplog.records)
    assert not stuck.done()
    release.set()
    assert (await stuck).ok
    patient, _, _ = make(storage, ScriptedFetcher(delay_s=0.2), single_flight_ttl_ms=60_000)
    other = Range(T0 + 50 * I, T0 + 60 * I)
    first, again = await asyncio.gather(
        patient.backfill(NODE, I, [other]), patient.backfill(NODE, I, [other])
    )
    assert first.ok and again.ok and len(patient.fetcher.calls) == 1  # type: ignore[attr-defined]
