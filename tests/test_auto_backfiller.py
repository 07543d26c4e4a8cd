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

from qmtl.runtime.io.auto_backfiller import DataFetcherAutoBackfiller, retry_delay_s
from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.errors import (
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
