"""The whole fetch path end to end: EnhancedQuestDBProvider → backfiller → CcxtOHLCVFetcher →
real ccxt → HTTP → the exchange simulator, stored in real DuckDB and real PostgreSQL.

The simulator, the fetcher's limiter and the backfiller share one auto-advancing fake clock:
retries and forming bars are deterministic and nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.errors import SeamlessCoverageError
from qmtl.runtime.sdk.history_coverage import Range, SegmentKind
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.services.exchange_sim import Scenario, SimulatorServer, generate_bars, run_simulator

I = 60
DAY = 86_400
LISTING = 1_706_745_600  # 2024-02-01T00:00:00Z
NOW = LISTING + 30 * DAY + 37 * I + 20  # mid-bar: a forming bar exists
NODE = "ohlcv:binance:BTC/USDT:1m"

pytestmark = pytest.mark.parametrize("backend", ["duckdb", "postgres"])

Open = Callable[..., Awaitable[tuple[EnhancedQuestDBProvider, SimulatorServer]]]


@pytest.fixture
async def rig(backend: str, request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Open]:
    """Start a simulator with ``scenario`` and a provider on ``backend`` pointed at it."""
    if backend == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
    else:
        dsn = f"duckdb:///{tmp_path}/store.duckdb"
    async with AsyncExitStack() as stack:

        async def open_(
            scenario: dict[str, Any] | None = None, *, strategy: str = "AUTO_BACKFILL", **bf: Any
        ) -> tuple[EnhancedQuestDBProvider, SimulatorServer]:
            clock = FakeClock(start=float(NOW), auto_advance=True)
            sim = await stack.enter_async_context(
                run_simulator(
                    Scenario.from_dict(scenario or {"symbols": ["BTC/USDT"]}), clock=clock
                )
            )
            metrics = SeamlessMetrics(CollectorRegistry())
            fetcher = CcxtOHLCVFetcher(
                CcxtBackfillConfig(
                    exchange_id="binance",
                    symbols=("BTC/USDT",),
                    urls={"rest": sim.base_url, "ws": sim.ws_url},
                    rate_limiter=RateLimiterConfig(tokens_per_interval=6000, burst_tokens=1000),
                ),
                clock=clock,
                metrics=metrics,
            )
            provider = EnhancedQuestDBProvider(
                dsn,
                fetcher=fetcher,
                strategy=strategy,
                backfill_config=BackfillConfig(**{"retry_backoff_ms": 200, **bf}),
                clock=clock,
                metrics=metrics,
            )
            stack.push_async_callback(provider.aclose)
            return provider, sim

        yield open_


def expected_closes(start: int, end: int) -> list[float]:
    bars = generate_bars(42, "BTC/USDT", I, np.arange(start, end, I, dtype=np.int64) * 1000)
    return [row[4] for row in bars.ohlcv()]


def scenario(**market: Any) -> dict[str, Any]:
    return {"seed": 42, "symbols": {"BTC/USDT": {"listing": LISTING, **market}}}


async def test_empty_store_is_filled_exactly_and_the_last_bar_is_kept(rig: Open) -> None:
    provider, sim = await rig(scenario())
    start, end = NOW - NOW % I - 2 * DAY, NOW - NOW % I - DAY
    result = await provider.fetch(start, end, node_id=NODE, interval=I)
    assert result.frame["ts"].tolist() == list(range(start, end, I))
    assert result.frame["close"].tolist() == expected_closes(start, end)
    assert result.metadata.missing_ranges == () and result.metadata.coverage_ratio == 1.0
    assert result.metadata.dataset_fingerprint is not None
    # 1440 bars at 1000 per page on a 900-bar grid: every request within the window.
    assert all(start * 1000 <= a and b < end * 1000 for a, b in sim.request_log.served_windows())


async def test_interior_hole_repaired_with_only_the_hole_fetched(rig: Open) -> None:
    provider, sim = await rig(scenario())
    base = NOW - NOW % (900 * I) - 5 * 900 * I
    await provider.fetch(base, base + 900 * I, node_id=NODE, interval=I)
    await provider.fetch(base + 2 * 900 * I, base + 3 * 900 * I, node_id=NODE, interval=I)
    sim.request_log.reset()
    result = await provider.fetch(base, base + 3 * 900 * I, node_id=NODE, interval=I)
    assert sim.request_log.served_windows() == [
        ((base + 900 * I) * 1000, (base + 2 * 900 * I - I) * 1000)
    ]
    assert result.frame["ts"].tolist() == list(range(base, base + 3 * 900 * I, I))


async def test_listing_and_halt_are_known_empty_and_not_refetched(rig: Open) -> None:
    halt = (LISTING + DAY, LISTING + DAY + 3 * 3600)
    provider, sim = await rig(scenario(halts=[list(halt)]))
    start, end = LISTING - DAY, LISTING + 2 * DAY
    first = await provider.fetch(start, end, node_id=NODE, interval=I)
    ts = first.frame["ts"]
    assert ts.iloc[0] == LISTING and ts.iloc[-1] == end - I
    assert not ((ts >= halt[0]) & (ts < halt[1])).any()
    assert first.metadata.missing_ranges == ()
    ledger = await provider.coverage(node_id=NODE, interval=I)
    empties = [(s.start, s.end) for s in ledger if s.kind is SegmentKind.EMPTY]
    assert (start, LISTING) in empties and halt in empties
    klines = sim.request_log.count("/api/v3/klines")
    again = await provider.fetch(start, end, node_id=NODE, interval=I)
    assert sim.request_log.count("/api/v3/klines") == klines  # nothing asked again
    assert again.metadata.dataset_fingerprint == first.metadata.dataset_fingerprint


async def test_outage_is_retried_with_the_exact_events(
    rig: Open, caplog: pytest.LogCaptureFixture
) -> None:
    provider, _ = await rig(scenario(outages=[{"next_requests": 2, "status": 502}]))
    start = NOW - NOW % (900 * I) - 2 * 900 * I
    with caplog.at_level(logging.INFO, logger="qmtl"):
        result = await provider.fetch(start, start + 900 * I, node_id=NODE, interval=I)
    assert len(result) == 900
    events = [
        (r.getMessage().rsplit(".", 1)[-1], r.attempt)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("seamless.backfill.")
    ]
    assert events == [
        ("attempt", 1),
        ("retry", 1),
        ("attempt", 2),
        ("retry", 2),
        ("attempt", 3),
        ("succeeded", 3),
    ]
    retry = next(r for r in caplog.records if r.getMessage() == "seamless.backfill.retry")
    assert "ExchangeUnavailableError" in retry.error and "502" in retry.error  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["truncated_json", "nan_strings"])
async def test_malformed_window_stores_nothing_and_stays_missing(
    rig: Open, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    start = NOW - NOW % (900 * I) - 3 * 900 * I
    bad = (start + 900 * I + 10 * I, start + 900 * I + 20 * I)
    provider, _ = await rig(
        scenario(malformed=[{"start": bad[0], "end": bad[1], "kind": kind}]), max_attempts=2
    )
    with caplog.at_level(logging.INFO, logger="qmtl"):
        result = await provider.fetch(start, start + 3 * 900 * I, node_id=NODE, interval=I)
    hole = Range(start + 900 * I, start + 2 * 900 * I)
    assert result.metadata.missing_ranges == (hole,)
    assert len(result) == 1800  # the other batches landed
    ts = result.frame["ts"]
    assert not ((ts >= hole.start) & (ts < hole.end)).any()  # nothing from the bad page
    (failed,) = [r for r in caplog.records if r.getMessage() == "seamless.backfill.failed"]
    assert "ExchangeDataError" in failed.error  # type: ignore[attr-defined]


async def test_short_and_duplicate_pages_leave_no_hole_and_no_duplicate(rig: Open) -> None:
    start = NOW - NOW % (900 * I) - 4 * 900 * I
    faults = {
        "short_pages": [{"start": start, "end": start + 3600 * 10}],
        "duplicates": [{"start": start, "end": start + 3600 * 10}],
    }
    provider, _ = await rig(scenario(**faults))
    result = await provider.fetch(start, start + 4 * 900 * I, node_id=NODE, interval=I)
    assert result.frame["ts"].tolist() == list(range(start, start + 4 * 900 * I, I))
    assert result.frame["close"].tolist() == expected_closes(start, start + 4 * 900 * I)
    assert result.metadata.conformance_flags["duplicate_ts"] == 0  # deduplicated before storing


async def test_forming_bar_is_never_stored(rig: Open) -> None:
    provider, _ = await rig(scenario())
    forming = NOW - NOW % I
    result = await provider.fetch(forming - 100 * I, forming + I, node_id=NODE, interval=I)
    assert result.frame["ts"].iloc[-1] == forming - I
    assert result.metadata.missing_ranges == (Range(forming, forming + I),)


async def test_fail_fast_and_partial_fill(rig: Open) -> None:
    provider, sim = await rig(scenario(), strategy="FAIL_FAST")
    start = NOW - NOW % I - DAY
    with pytest.raises(SeamlessCoverageError) as info:
        await provider.fetch(start, start + 60 * I, node_id=NODE, interval=I)
    assert info.value.missing_ranges == [Range(start, start + 60 * I)]
    assert sim.request_log.count("/api/v3/klines") == 0

    partial, _ = await rig(scenario(), strategy="PARTIAL_FILL")
    now_result = await partial.fetch(start, start + 60 * I, node_id=NODE, interval=I)
    assert len(now_result) == 0 and now_result.metadata.partial
    await partial.wait_background()
    later = await partial.fetch(start, start + 60 * I, node_id=NODE, interval=I)
    assert len(later) == 60 and not later.metadata.partial


async def test_concurrent_overlapping_fetches_fetch_each_window_once(rig: Open) -> None:
    provider, sim = await rig(scenario())
    base = NOW - NOW % (900 * I) - 10 * 900 * I
    ranges = [(base + k * 300 * I, base + (k * 300 + 2000) * I) for k in range(10)]
    results = await asyncio.gather(
        *(provider.fetch(a, b, node_id=NODE, interval=I) for a, b in ranges)
    )
    for (a, b), result in zip(ranges, results, strict=True):
        assert result.frame["ts"].tolist() == list(range(a, b, I))
    windows = sorted(sim.request_log.served_windows())
    assert all(left[1] < right[0] for left, right in pairwise(windows))  # no bar twice


async def test_permanent_outage_fails_loudly_and_serves_what_is_stored(
    rig: Open, caplog: pytest.LogCaptureFixture
) -> None:
    start = NOW - NOW % (900 * I) - 4 * 900 * I
    provider, sim = await rig(scenario(), max_attempts=3)
    await provider.fetch(start, start + 900 * I, node_id=NODE, interval=I)  # stored before
    sim.set_scenario(Scenario.from_dict(scenario(outages=[{"next_requests": 1000, "status": 503}])))
    with caplog.at_level(logging.INFO, logger="qmtl"):
        result = await provider.fetch(start, start + 2 * 900 * I, node_id=NODE, interval=I)
    assert result.metadata.missing_ranges == (Range(start + 900 * I, start + 2 * 900 * I),)
    assert len(result) == 900 and result.metadata.coverage_ratio == 0.5
    failed = [r for r in caplog.records if r.getMessage() == "seamless.backfill.failed"]
    assert len(failed) == 1 and failed[0].attempt == 3  # type: ignore[attr-defined]
    assert "503" in failed[0].error  # type: ignore[attr-defined]
    assert any("503" in e for e in result.metadata.backfill_errors)
