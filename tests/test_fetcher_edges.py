"""Edges of ``CcxtOHLCVFetcher``: the bounds it accepts, and what it does with an exchange
page that holds bars before the requested start (regression: the whole page was rejected)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.auto_backfiller import DataFetcherAutoBackfiller
from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.services.exchange_sim import Scenario, run_simulator

I = 60
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
NODE = "ohlcv:binance:BTC/USDT:1m"


async def test_fetch_takes_iso_strings_and_aware_datetimes() -> None:
    clock = FakeClock(start=T0 + 86_400.0, auto_advance=True)
    async with run_simulator(Scenario.from_dict({"symbols": ["BTC/USDT"]}), clock=clock) as sim:
        config = CcxtBackfillConfig(exchange_id="binance", urls={"rest": sim.base_url})
        async with CcxtOHLCVFetcher(config, clock=clock) as fetcher:
            by_epoch = await fetcher.fetch(T0, T0 + 10 * I, node_id=NODE, interval=I)
            by_iso = await fetcher.fetch(
                "2024-01-01T00:00:00Z", "2024-01-01T00:10:00+00:00", node_id=NODE, interval=I
            )
            by_datetime = await fetcher.fetch(
                datetime(2024, 1, 1, tzinfo=UTC),
                datetime(2024, 1, 1, 0, 10, tzinfo=UTC),
                node_id=NODE,
                interval=I,
            )
            with pytest.raises(ValueError, match="naive"):
                await fetcher.fetch(datetime(2024, 1, 1), T0 + I, node_id=NODE, interval=I)
    assert by_epoch["ts"].tolist() == list(range(T0, T0 + 10 * I, I))
    assert by_iso.equals(by_epoch) and by_datetime.equals(by_epoch)


class EarlyBarsExchange:
    """An exchange whose pages start one bar before the asked start (some exchanges round
    ``since`` down). Only what the fetcher calls: markets, the OHLCV call, close."""

    qmtl_on_response: Any = None

    async def load_markets(self) -> dict[str, Any]:
        return {"BTC/USDT": {"symbol": "BTC/USDT"}}

    def market(self, symbol: str) -> dict[str, Any]:
        return {"symbol": symbol}

    async def fetch_ohlcv(self, symbol: str, timeframe: str, since: int, limit: int) -> Any:
        first = since - I * 1000
        return [
            [t, 1.0, 2.0, 0.5, 1.5, 3.0] for t in range(first, first + (limit + 1) * 60_000, 60_000)
        ]

    async def close(self) -> None:
        return None


async def test_bars_before_the_start_are_dropped_with_a_warning_not_the_page() -> None:
    clock = FakeClock(start=T0 + 86_400.0)
    metrics = SeamlessMetrics(CollectorRegistry())
    fetcher = CcxtOHLCVFetcher(
        CcxtBackfillConfig(exchange_id="binance"), clock=clock, exchange=EarlyBarsExchange()
    )
    result = await fetcher.fetch_window(T0, T0 + 10 * I, node_id=NODE, interval=I)
    assert result.frame["ts"].tolist() == list(range(T0, T0 + 10 * I, I))
    assert result.covered_until == T0 + 10 * I and result.empty == ()
    assert result.warnings and "before the requested start" in result.warnings[0]
    async with open_storage("duckdb:///:memory:") as storage:
        backfiller = DataFetcherAutoBackfiller(fetcher, storage, clock=clock, metrics=metrics)
        report = await backfiller.backfill(NODE, I, [Range(T0, T0 + 10 * I)])
    assert report.ok and report.rows == 10
    labels = {"node_id": NODE, "interval": "60", "world_id": ""}
    assert metrics.registry.get_sample_value("seamless_conformance_warning_total", labels) == 1
    await fetcher.aclose()


class ListedExchange(EarlyBarsExchange):
    """A window-paging exchange (every window before the listing answers empty) whose market
    metadata carries the listing time, as OKX's ``listTime`` does."""

    listed_ms = (T0 + 26 * I) * 1000 + 30_000  # mid-bar: the bar holding it is listed

    def market(self, symbol: str) -> dict[str, Any]:
        return {"symbol": symbol, "info": {"listTime": str(self.listed_ms)}}

    async def fetch_ohlcv(self, symbol: str, timeframe: str, since: int, limit: int) -> Any:
        first = max(since, (T0 + 26 * I) * 1000)
        stop = since + limit * 60_000
        return [[t, 1.0, 2.0, 0.5, 1.5, 3.0] for t in range(first, stop, 60_000)]


async def test_the_listing_date_of_the_market_metadata_is_known_empty_evidence() -> None:
    clock = FakeClock(start=T0 + 86_400.0)
    fetcher = CcxtOHLCVFetcher(
        CcxtBackfillConfig(exchange_id="binance", profile={"listing_field": "listTime"}),
        clock=clock,
        exchange=ListedExchange(),
    )
    result = await fetcher.fetch_window(T0, T0 + 40 * I, node_id=NODE, interval=I)
    assert result.empty == (Range(T0, T0 + 26 * I),)
    assert result.frame["ts"].tolist() == list(range(T0 + 26 * I, T0 + 40 * I, I))
    assert result.missing_reason is None and result.requests == 1  # nothing asked before it
    await fetcher.aclose()
