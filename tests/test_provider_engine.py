"""SeamlessDataProvider over real DuckDB storage and the real backfiller, with a scripted
fetcher and a fake clock, so strategies and SLA budgets are checked exactly."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from qmtl.runtime.sdk.errors import (
    ExchangeUnavailableError,
    SeamlessCoverageError,
    SeamlessSLAExceeded,
)
from qmtl.runtime.sdk.fingerprint import compute_fingerprint
from qmtl.runtime.sdk.history_coverage import Range, compute_missing_ranges
from qmtl.runtime.sdk.history_storage import HistoryStorage, LedgerUpdate
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.seamless_data_provider import (
    DataAvailabilityStrategy,
    SeamlessDataProvider,
)
from qmtl.runtime.sdk.sla import SLAPolicy, SLAViolationMode
from tests.engine_rig import END, NODE, NOW, T0, I, Rig, storage

__all__ = ["storage"]  # the fixture, used by name


async def test_fail_fast_raises_with_missing_ranges(storage: HistoryStorage) -> None:
    rig = Rig(storage, strategy="FAIL_FAST")
    with pytest.raises(SeamlessCoverageError) as info:
        await rig.fetch()
    assert info.value.missing_ranges == [Range(T0, END)]
    assert rig.fetcher.calls == []


async def test_auto_backfill_serves_everything_with_provenance(storage: HistoryStorage) -> None:
    rig = Rig(storage, strategy=DataAvailabilityStrategy.AUTO_BACKFILL)
    result = await rig.fetch()
    meta = result.metadata
    assert len(result) == 30 == meta.rows
    assert result.frame["ts"].iloc[-1] == END - I  # the last bar of the range is served
    assert list(result.frame.columns) == ["ts", "open", "high", "low", "close", "volume"]
    assert meta.missing_ranges == () and meta.coverage_ratio == 1.0 and not meta.partial
    assert meta.coverage_bounds == Range(T0, END)
    expected = compute_fingerprint(
        result.frame,
        {"node_id": NODE, "interval": I, "range": [T0, END], "conformance_version": "v2"},
    )
    assert meta.dataset_fingerprint == expected
    assert set(meta.sla_phases_ms) == {"storage_wait", "backfill_wait", "total"}
    assert result.to_arrow().num_rows == 30
    # Same request again: served from storage, nothing fetched, same fingerprint.
    calls = len(rig.fetcher.calls)
    again = await rig.fetch()
    assert len(rig.fetcher.calls) == calls
    assert again.metadata.dataset_fingerprint == expected
    labels = {"node_id": NODE, "interval": "60", "world_id": ""}
    assert rig.registry.get_sample_value("coverage_ratio", labels) == 1.0
    assert rig.registry.get_sample_value("seamless_total_ms_count", labels) == 2
    # Served from storage (nothing sleeps): fetch in this task, which then sees its metadata.
    direct = await rig.provider.fetch(T0, END, node_id=NODE, interval=I)
    assert rig.provider.last_fetch_metadata == direct.metadata


async def test_last_fetch_metadata_is_per_task(storage: HistoryStorage) -> None:
    """Concurrent fetches on one shared provider never overwrite each other's metadata: each
    task sees the metadata of its own newest fetch (regression: one attribute for all)."""
    rig = Rig(storage, strategy=DataAvailabilityStrategy.AUTO_BACKFILL)
    await rig.fetch()  # store everything first
    assert rig.provider.last_fetch_metadata is None  # this task has not fetched itself
    release = asyncio.Event()

    async def fetch_then_read(start: int, end: int) -> tuple[object, object]:
        result = await rig.provider.fetch(start, end, node_id=NODE, interval=I)
        await release.wait()  # the other task's fetch finishes in between
        return result.metadata, rig.provider.last_fetch_metadata

    tasks = [
        asyncio.create_task(fetch_then_read(T0, T0 + 10 * I)),
        asyncio.create_task(fetch_then_read(T0 + 10 * I, END)),
    ]
    for _ in range(50):
        await asyncio.sleep(0)
    release.set()
    for own, seen in await asyncio.gather(*tasks):
        assert seen is own
    assert rig.provider.last_fetch_metadata is None


async def test_interior_hole_is_repaired(storage: HistoryStorage) -> None:
    rig = Rig(storage, strategy="AUTO_BACKFILL")
    await rig.fetch(T0, T0 + 10 * I)
    await rig.fetch(T0 + 20 * I, END)
    rig.fetcher.calls.clear()
    result = await rig.fetch()
    assert rig.fetcher.calls == [(T0 + 10 * I, T0 + 20 * I)]
    assert result.frame["ts"].tolist() == list(range(T0, END, I))


async def test_partial_fill_returns_now_and_backfills_in_background(
    storage: HistoryStorage,
) -> None:
    rig = Rig(storage, strategy="PARTIAL_FILL", delay_s=5.0)
    # Awaited directly: the fetch must return while the backfill sleeps on the fake clock.
    result = await rig.provider.fetch(T0, END, node_id=NODE, interval=I)
    assert len(result) == 0 and result.metadata.partial
    assert result.metadata.missing_ranges == (Range(T0, END),)
    assert rig.clock.now() == NOW  # returned without waiting on the backfill
    await rig.settle()
    complete = await rig.fetch()
    assert len(complete) == 30 and not complete.metadata.partial


async def test_seamless_budget_breach_serves_partial_and_keeps_backfilling(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    sla = SLAPolicy(max_wait_backfill_ms=1000, total_deadline_ms=None)
    rig = Rig(storage, sla=sla, delay_s=5.0)
    with caplog.at_level(logging.INFO, logger="qmtl"):
        result = await rig.fetch()
    meta = result.metadata
    assert meta.partial and meta.downgraded and meta.downgrade_mode == "PARTIAL_FILL"
    assert meta.sla_violation == "backfill_wait" and meta.downgrade_reason == "sla_backfill_wait"
    assert meta.sla_phases_ms["backfill_wait"] == pytest.approx(1000.0)
    names = [r.getMessage() for r in caplog.records]
    assert "seamless.sla.phase_exceeded" in names and "seamless.sla.downgrade" in names
    exceeded = next(r for r in caplog.records if r.getMessage() == "seamless.sla.phase_exceeded")
    assert (exceeded.phase, exceeded.budget_ms, exceeded.mode) == (  # type: ignore[attr-defined]
        "backfill_wait",
        1000.0,
        "PARTIAL_FILL",
    )
    labels = {"node_id": NODE, "world_id": "", "reason": "sla_backfill_wait"}
    assert rig.registry.get_sample_value("partial_fill_returns_total", labels) == 1.0
    await rig.settle()
    assert len(await rig.fetch()) == 30


async def test_seamless_hold_and_fail_fast_modes(storage: HistoryStorage) -> None:
    hold = Rig(
        storage,
        sla=SLAPolicy(max_wait_backfill_ms=100, on_violation=SLAViolationMode.HOLD),
        delay_s=1.0,
    )
    meta = (await hold.fetch()).metadata
    assert meta.downgrade_mode == "HOLD" and meta.downgraded
    labels = {"node_id": NODE, "world_id": "", "reason": "sla_backfill_wait"}
    assert hold.registry.get_sample_value("domain_gate_holds_total", labels) == 1.0
    await hold.settle()

    strict = Rig(
        storage,
        sla=SLAPolicy(max_wait_backfill_ms=100, on_violation=SLAViolationMode.FAIL_FAST),
        delay_s=1.0,
    )
    with pytest.raises(SeamlessSLAExceeded) as info:
        await strict.fetch(END, END + 20 * I)
    assert info.value.phase == "backfill_wait" and info.value.budget_ms == 100
    await strict.settle()


async def test_large_gaps_never_fill_synchronously(storage: HistoryStorage) -> None:
    rig = Rig(storage, sla=SLAPolicy(max_sync_gap_bars=5, total_deadline_ms=None), delay_s=1.0)
    result = await rig.provider.fetch(T0, END, node_id=NODE, interval=I)
    assert rig.clock.now() == NOW and len(result) == 0 and result.metadata.partial
    await rig.settle()
    assert len(await rig.fetch()) == 30


async def test_backfill_mode_sync_waits_for_large_gaps_too(storage: HistoryStorage) -> None:
    """``seamless.backfill.mode: sync``: the gap over ``max_sync_gap_bars`` is waited for."""
    sla = SLAPolicy(max_sync_gap_bars=5, total_deadline_ms=None, max_wait_backfill_ms=None)
    rig = Rig(storage, sla=sla, mode="sync", delay_s=1.0)  # each batch takes 1 s (fake clock)
    waits = await rig.fetch()
    assert len(waits) == 30 and not waits.metadata.partial
    assert rig.clock.now() >= NOW + 1.0  # it waited for the backfill it would have deferred


async def test_permanent_failure_is_reported_missing_and_the_rest_served(
    storage: HistoryStorage,
) -> None:
    rig = Rig(storage, strategy="AUTO_BACKFILL")
    rig.fetcher.failures[T0 + 10 * I] = [ExchangeUnavailableError("down")] * 4
    result = await rig.fetch()
    meta = result.metadata
    assert meta.missing_ranges == (Range(T0 + 10 * I, T0 + 20 * I),)
    assert meta.coverage_ratio == pytest.approx(2 / 3) and meta.partial
    assert len(result) == 20 and any("down" in e for e in meta.backfill_errors)
    assert not await rig.ensure()
    rig.fetcher.failures.clear()
    assert await rig.ensure()


class TailFeed:
    """A LiveDataFeed that knows the newest bars (plain protocol implementation)."""

    def __init__(self, bars: pd.DataFrame) -> None:
        self.bars = bars
        self.asked: list[int] = []

    async def latest_bars(self, node_id: str, interval: int, since: int) -> pd.DataFrame:
        self.asked.append(since)
        return self.bars[self.bars["ts"] >= since]


async def test_live_feed_supplies_the_newest_bars(storage: HistoryStorage) -> None:
    rig = Rig(storage, strategy="PARTIAL_FILL", delay_s=5.0)
    ts = list(range(T0, END, I))
    rig.provider.live_feed = TailFeed(
        pd.DataFrame({"ts": ts, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3.0})
    )
    result = await rig.provider.fetch(T0, END, node_id=NODE, interval=I)
    assert result.metadata.live_rows == 30 and len(result) == 30
    assert result.metadata.missing_ranges == ()
    assert "live_wait" in result.metadata.sla_phases_ms
    assert rig.fetcher.calls == []  # asked before any backfill: the exchange was not
    # ... and stored, bars and ledger: the next fetch serves them from the store
    ledger = await storage.read_ledger(NODE, I)
    assert compute_missing_ranges(ledger, T0, END, I) == []
    rig.provider.live_feed = TailFeed(result.frame.iloc[:0])
    again = await rig.provider.fetch(T0, END, node_id=NODE, interval=I)
    assert again.metadata.live_rows == 0 and len(again) == 30
    pd.testing.assert_frame_equal(again.frame, result.frame)
    await rig.settle()


async def test_bad_arguments(storage: HistoryStorage) -> None:
    rig = Rig(storage)
    with pytest.raises(ValueError, match="does not match timeframe"):
        await rig.provider.fetch(T0, END, node_id=NODE, interval=300)
    with pytest.raises(ValueError, match="invalid symbol"):
        await rig.provider.fetch(T0, END, node_id="ohlcv:binance:../x:1m", interval=I)
    with pytest.raises(ValueError, match="after end"):
        await rig.provider.fetch(END, T0, node_id=NODE, interval=I)
    with pytest.raises(ValueError, match="strategy must be one of"):
        SeamlessDataProvider(strategy="YOLO", storage=storage)
    with pytest.raises(ValueError, match="unknown compute_context keys"):
        await rig.provider.fetch(T0, END, node_id=NODE, interval=I, compute_context={"wrld": 1})


async def test_partial_ok_false_refuses_partial_results(storage: HistoryStorage) -> None:
    rig = Rig(storage, strategy="AUTO_BACKFILL")
    rig.provider.partial_ok = False
    rig.fetcher.failures[T0 + 10 * I] = [ExchangeUnavailableError("down")] * 2
    with pytest.raises(SeamlessCoverageError) as info:
        await rig.fetch()
    assert info.value.missing_ranges == [Range(T0 + 10 * I, T0 + 20 * I)]
    assert len(await rig.fetch()) == 30  # the failure was transient: complete now


async def test_auto_backfill_has_no_budget(storage: HistoryStorage) -> None:
    """Regression: a complete AUTO_BACKFILL fetch under a tight SLA reported a downgrade
    (``sla_backfill_wait``) although it serves only after the whole backfill."""
    rig = Rig(storage, strategy=DataAvailabilityStrategy.AUTO_BACKFILL)
    rig.provider.sla = SLAPolicy(max_wait_storage_ms=0, max_wait_backfill_ms=1, total_deadline_ms=1)
    rig.fetcher.delay_s = 5.0
    meta = (await rig.fetch()).metadata
    assert meta.rows == 30 and not meta.partial
    assert not meta.downgraded and meta.sla_violation is None and meta.downgrade_mode is None
    assert meta.sla_phases_ms["backfill_wait"] >= 5000.0


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(0, 29), st.integers(1, 10), st.floats(1, 9)),
            st.tuples(st.just("fetch"), st.integers(0, 29), st.integers(1, 30), st.just(0.0)),
        ),
        min_size=1,
        max_size=12,
    )
)
async def test_served_fingerprint_is_always_the_served_frames(
    storage: HistoryStorage, steps: list[tuple[str, int, int, float]]
) -> None:
    """Whatever writes land between fetches, a fetch's fingerprint is the fingerprint of
    exactly the frame it serves, and the frame is what the store holds — the provider's
    memo of stored windows (keyed by the store's revision) never serves a stale one."""
    node = "ohlcv:binance:ETH/USDT:1m"
    await storage.delete_node(node)
    provider = SeamlessDataProvider(
        storage=storage, strategy="FAIL_FAST", metrics=SeamlessMetrics(CollectorRegistry())
    )
    await storage.write_bars(
        node, _bars(T0, 30, 1.0), ledger_update=LedgerUpdate(interval=I, data=(Range(T0, END),))
    )
    for kind, first, count, price in steps:
        start = T0 + first * I
        if kind == "write":
            await storage.write_bars(node, _bars(start, min(count, 30 - first), price))
            continue
        end = min(END, start + count * I)
        result = await provider.fetch(start, end, node_id=node, interval=I)
        meta = {"node_id": node, "interval": I, "range": [start, end], "conformance_version": "v2"}
        assert result.metadata.dataset_fingerprint == compute_fingerprint(result.frame, meta)
        stored = await storage.read_range(node, start, end)
        pd.testing.assert_frame_equal(result.frame, stored)


def _bars(start: int, n: int, price: float) -> pd.DataFrame:
    ts = np.arange(start, start + n * I, I, dtype=np.int64)
    px = np.full(len(ts), price)
    return pd.DataFrame(
        {"ts": ts, "open": px, "high": px + 1, "low": px - 1, "close": px, "volume": px}
    )
