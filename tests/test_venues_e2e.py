"""The end-to-end behaviour suite over every simulated exchange format: Binance spot,
Binance USD-M futures and OKX v5, through the real ccxt client (``binance``,
``binanceusdm``, ``okx``), the profiles' page sizes and weights, real DuckDB.

Per venue: the exact bars across a listing and a halt (known-empty, and not fetched again);
a 5xx outage retried to completion; a 429 in the venue's own format pauses the key (the
penalty is told by the HTTP status, whichever ccxt class carries it) and the fetch still
completes. The simulator and the provider share one auto-advancing fake clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.history_coverage import SegmentKind
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.services.exchange_sim import Scenario, SimulatorServer, generate_bars, run_simulator

I = 60
DAY = 86_400
LISTING = 1_706_745_600  # 2024-02-01T00:00:00Z
NOW = LISTING + 10 * DAY + 37 * I + 20  # mid-bar
HALT = (LISTING + DAY, LISTING + DAY + 60 * I)  # shorter than an OKX page (see README)
VENUES = [
    pytest.param("binance", "spot", "BTC/USDT", id="binance-spot"),
    pytest.param("binanceusdm", "swap", "BTC/USDT:USDT", id="binance-usdm"),
    pytest.param("okx", "spot", "BTC/USDT", id="okx"),
]
#: A venue's own tiny limit, so that the fetcher (with a generous budget) meets a 429.
TIGHT = {
    "binance": {"venues": {"binance": {"weight_limit_per_minute": 22}}},  # exchangeInfo 20
    "binanceusdm": {"venues": {"binanceusdm": {"weight_limit_per_minute": 5}}},
    "okx": {"venues": {"okx": {"rate_limits": {"history_candles": 4}}}},
}

pytestmark = pytest.mark.parametrize(("venue", "market_type", "symbol"), VENUES)
Open = Callable[..., Awaitable[tuple[EnhancedQuestDBProvider, SimulatorServer, SeamlessMetrics]]]


@pytest.fixture
async def rig(venue: str, market_type: str, tmp_path: Any) -> AsyncIterator[Open]:
    async with AsyncExitStack() as stack:

        async def open_(
            extra: dict[str, Any] | None = None,
            profile: dict[str, Any] | None = None,
            **market: Any,
        ) -> tuple[EnhancedQuestDBProvider, SimulatorServer, SeamlessMetrics]:
            clock = FakeClock(start=float(NOW), auto_advance=True)
            scenario = {
                "seed": 42,
                "symbols": {"BTC/USDT": {"listing": LISTING, "halts": [list(HALT)], **market}},
                **(extra or {}),
            }
            sim = await stack.enter_async_context(
                run_simulator(Scenario.from_dict(scenario), clock=clock)
            )
            metrics = SeamlessMetrics(CollectorRegistry())
            fetcher = CcxtOHLCVFetcher(
                CcxtBackfillConfig(
                    exchange_id=venue,
                    market_type=market_type,
                    urls={"rest": sim.base_url},
                    profile=profile or {},
                    rate_limiter=RateLimiterConfig(
                        tokens_per_interval=100_000, interval_ms=1000, burst_tokens=1000
                    ),
                ),
                clock=clock,
                metrics=metrics,
            )
            provider = EnhancedQuestDBProvider(
                f"duckdb:///{tmp_path}/{venue}.duckdb",
                fetcher=fetcher,
                strategy="AUTO_BACKFILL",
                backfill_config=BackfillConfig(retry_backoff_ms=200, max_attempts=8),
                clock=clock,
                metrics=metrics,
            )
            stack.push_async_callback(provider.aclose)
            return provider, sim, metrics

        yield open_


def node(venue: str, symbol: str) -> str:
    return f"ohlcv:{venue}:{symbol}:1m"


def expected(symbol: str, start: int, end: int) -> list[int]:
    ts = np.arange(max(start, LISTING), end, I, dtype=np.int64)
    ts = ts[(ts < HALT[0]) | (ts >= HALT[1])]
    generate_bars(42, symbol, I, ts * 1000)  # the venue's own series exists for these times
    return ts.tolist()


async def test_exact_bars_listing_and_halt_known_empty(
    rig: Open, venue: str, market_type: str, symbol: str
) -> None:
    provider, sim, _ = await rig()
    start, end = LISTING - DAY, LISTING + 2 * DAY
    result = await provider.fetch(start, end, node_id=node(venue, symbol), interval=I)
    assert result.frame["ts"].tolist() == expected(symbol, start, end)
    closes = generate_bars(42, symbol, I, result.frame["ts"].to_numpy() * 1000).ohlcv()[:, 4]
    assert result.frame["close"].tolist() == closes.tolist()
    assert result.metadata.missing_ranges == (), result.metadata.backfill_errors
    ledger = await provider.coverage(node_id=node(venue, symbol), interval=I)
    empties = [(s.start, s.end) for s in ledger if s.kind is SegmentKind.EMPTY]
    assert (start, LISTING) in empties and HALT in empties
    sim.request_log.reset()
    again = await provider.fetch(start, end, node_id=node(venue, symbol), interval=I)
    assert again.metadata.dataset_fingerprint == result.metadata.dataset_fingerprint
    assert len(sim.request_log.klines) == 0  # known-empty is not fetched again


async def test_an_outage_is_retried_to_completion(
    rig: Open, venue: str, market_type: str, symbol: str
) -> None:
    provider, sim, _ = await rig(outages=[{"status": 502, "next_requests": 2}])
    start, end = LISTING + 3 * DAY, LISTING + 3 * DAY + 400 * I
    result = await provider.fetch(start, end, node_id=node(venue, symbol), interval=I)
    assert result.frame["ts"].tolist() == expected(symbol, start, end)
    assert result.metadata.missing_ranges == ()
    assert sim.request_log.count(status=502) == 2


async def test_a_429_pauses_the_key_in_every_format(
    rig: Open, venue: str, market_type: str, symbol: str
) -> None:
    provider, sim, metrics = await rig(TIGHT[venue])
    start, end = LISTING + 4 * DAY, LISTING + 4 * DAY + 2000 * I
    result = await provider.fetch(start, end, node_id=node(venue, symbol), interval=I)
    assert result.frame["ts"].tolist() == expected(symbol, start, end)
    assert result.metadata.missing_ranges == ()
    assert sim.request_log.count(status=429) >= 1
    key = f"ccxt:{venue}"
    penalties = metrics.registry.get_sample_value(
        "seamless_rl_penalty_total", {"key": key, "status": "429"}
    )
    assert penalties is not None and penalties >= 1


async def test_a_permanent_outage_stays_missing_with_its_reason(
    rig: Open, venue: str, market_type: str, symbol: str
) -> None:
    provider, _, _ = await rig(outages=[{"status": 503, "next_requests": 10_000}])
    start, end = LISTING + 5 * DAY, LISTING + 5 * DAY + 300 * I
    result = await provider.fetch(start, end, node_id=node(venue, symbol), interval=I)
    assert result.frame.empty and result.metadata.partial
    assert [(r.start, r.end) for r in result.metadata.missing_ranges] == [(start, end)]
    assert result.metadata.backfill_errors
    ledger = await provider.coverage(node_id=node(venue, symbol), interval=I)
    assert not [s for s in ledger if s.start < end and s.end > start]  # nothing claimed


async def test_history_beyond_the_depth_is_never_known_empty(
    rig: Open, venue: str, market_type: str, symbol: str
) -> None:
    """The exchange serves only its newest 500 bars and the profile says so: the older part
    of a window is not asked for and stays missing with the reason; the rest is exact."""
    provider, _, _ = await rig(history_depth_bars=500, profile={"history_depth_bars": 500})
    forming = NOW - NOW % I
    start, end = forming - 800 * I, forming - 10 * I
    result = await provider.fetch(start, end, node_id=node(venue, symbol), interval=I)
    oldest = forming - 500 * I
    assert result.frame["ts"].tolist() == expected(symbol, oldest, end)
    assert any("history depth (500 bars)" in e for e in result.metadata.backfill_errors)
    ledger = await provider.coverage(node_id=node(venue, symbol), interval=I)
    assert not [s for s in ledger if s.kind is SegmentKind.EMPTY and s.start < oldest]
