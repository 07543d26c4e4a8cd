"""``seamless.observability``'s thresholds have readers: a fetch that crosses one logs
``seamless.observability.threshold_crossed`` (the Prometheus alerts use the same numbers), and
a backfiller whose completion ratio falls under ``backfill_completion_ratio_min`` logs it once
per crossing. Also: a fetcher warns about configured symbols its exchange does not list."""

from __future__ import annotations

import logging
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from qmtl.runtime.io.ccxt_exchange import unlisted
from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.sdk._config_models import ObservabilityConfig
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.errors import ExchangeUnavailableError
from qmtl.runtime.sdk.events import THRESHOLD_CROSSED
from qmtl.runtime.sdk.fetch_metrics import crossed_thresholds
from qmtl.runtime.sdk.history_storage import HistoryStorage
from qmtl.services.exchange_sim import Scenario, run_simulator
from tests.engine_rig import END, NODE, T0, I, Rig, storage

__all__ = ["storage"]


def crossings(caplog: pytest.LogCaptureFixture) -> list[tuple[str, Any, Any]]:
    return [
        (r.measure, r.value, r.threshold)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == THRESHOLD_CROSSED
    ]


async def test_a_partial_fetch_logs_its_coverage_crossing(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(storage, strategy="PARTIAL_FILL")
    with caplog.at_level(logging.WARNING, logger="qmtl"):
        result = await rig.fetch()
    assert result.metadata.coverage_ratio == 0.0
    assert crossings(caplog) == [("coverage_ratio", 0.0, 0.98)]
    (record,) = (r for r in caplog.records if r.getMessage() == THRESHOLD_CROSSED)
    assert record.node_id == NODE and record.interval == I  # type: ignore[attr-defined]
    await rig.settle()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qmtl"):
        assert (await rig.fetch()).metadata.coverage_ratio == 1.0
    assert crossings(caplog) == []  # complete: nothing crossed


async def test_wait_thresholds_are_read_from_the_settings(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(storage, strategy="AUTO_BACKFILL", delay_s=1.0)  # 1 s per batch (fake clock)
    rig.provider.observability = ObservabilityConfig(backfill_wait_warn_ms=999)
    with caplog.at_level(logging.WARNING, logger="qmtl"):
        result = await rig.fetch()
    waited = result.metadata.sla_phases_ms["backfill_wait"]
    assert waited >= 1000 and crossings(caplog) == [("backfill_wait_ms", waited, 999.0)]
    caplog.clear()
    rig.provider.observability = ObservabilityConfig()  # default: warn over 5,000 ms
    with caplog.at_level(logging.WARNING, logger="qmtl"):
        await rig.fetch(END, END + 10 * I)
    assert crossings(caplog) == []
    slow_read = replace(result.metadata, sla_phases_ms={"storage_wait": 301.0, "total": 301.0})
    assert crossed_thresholds(slow_read, ObservabilityConfig()) == [
        ("storage_wait_ms", 301.0, 300.0)
    ]
    assert crossed_thresholds(slow_read, ObservabilityConfig(storage_wait_warn_ms=301)) == []


async def test_completion_ratio_under_the_minimum_is_logged_once_per_crossing(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(storage, strategy="AUTO_BACKFILL")
    down = [ExchangeUnavailableError("down")] * 2  # both attempts of the batch fail
    rig.fetcher.failures[T0 + 10 * I] = list(down)
    with caplog.at_level(logging.WARNING, logger="qmtl"):
        await rig.fetch()
    # 3 batches, 1 failed for good: under 0.95 once all are finished (when the failure
    # finishes first it is 0/1): one line, not one per batch.
    (crossed,) = [c for c in crossings(caplog) if c[0] == "backfill_completion_ratio"]
    assert crossed[1] in (0.0, 0.5, pytest.approx(2 / 3)) and crossed[2] == 0.95
    caplog.clear()
    rig.fetcher.failures[T0 + 40 * I] = list(down)
    with caplog.at_level(logging.WARNING, logger="qmtl"):
        await rig.fetch(END, END + 30 * I)  # still under: no new line
    assert [c for c in crossings(caplog) if c[0] == "backfill_completion_ratio"] == []
    ratio = rig.registry.get_sample_value(
        "backfill_completion_ratio", {"node_id": NODE, "interval": str(I)}
    )
    assert ratio == pytest.approx(4 / 6)


def test_unlisted_names_unknown_symbols_and_timeframes() -> None:
    exchange = SimpleNamespace(markets={"BTC/USDT": {}}, timeframes={"1m": "1m", "1h": "1h"})
    assert unlisted(exchange, ["BTC/USDT", "NOPE/USDT"], "5m") == [
        "symbol 'NOPE/USDT'",
        "timeframe '5m'",
    ]
    assert unlisted(exchange, ["BTC/USDT"], "1h") == []
    assert unlisted(SimpleNamespace(markets={}, timeframes=None), [], "1m") == []


async def test_the_fetcher_warns_about_configured_symbols_the_exchange_lacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(T0 + 0.0)
    async with run_simulator(Scenario.from_dict({}), clock=clock) as sim:
        config = CcxtBackfillConfig(
            exchange_id="binance",
            symbols=("BTC/USDT", "DOGE/USDT"),
            urls={"rest": sim.base_url},
        )
        async with CcxtOHLCVFetcher(config, clock=clock) as fetcher:
            with caplog.at_level(logging.WARNING, logger="qmtl"):
                frame = await fetcher.fetch(T0 - 600, T0 - 60, node_id=NODE, interval=I)
    assert len(frame) == 9  # the listed symbol is served as ever
    assert [r.getMessage() for r in caplog.records if r.name.endswith("ccxt_fetcher")] == [
        "binance does not list the configured symbol 'DOGE/USDT': its fetches will fail"
    ]
