"""A storage outage must not burn the exchange budget (regression: with PostgreSQL stopped
mid-run the backfill downloaded the same windows 2,313 times in 52 s).

End to end: the real ccxt client against the simulator, a real PostgreSQL of this test's own
that is stopped while the backfill runs. Exchange requests made after the stop are bounded
by the batches already planned (PLANNED_PER_SLOT x max_concurrent_requests); the backfill
ends promptly with the StorageError as each unfinished batch's reason; once PostgreSQL is
back, a second run fills the rest and the store equals the exchange's bars.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.auto_backfiller import PLANNED_PER_SLOT
from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.backfill_types import BatchOutcome
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.services.exchange_sim import Scenario, generate_bars, run_simulator
from qmtl.testing.servers import PostgresServer

NODE = "ohlcv:binance:BTC/USDT:1m"
I = 60
START = 1_700_000_000 - 1_700_000_000 % (900 * I)
BATCHES = 60
CONCURRENCY = 4


async def test_a_stopped_store_costs_no_re_downloads(own_postgres: PostgresServer) -> None:
    postgres = own_postgres
    dsn = postgres.create_database(f"outage_{time.monotonic_ns()}")
    end = START + BATCHES * 900 * I
    scenario = Scenario.from_dict({"seed": 5, "symbols": ["BTC/USDT"], "latency_ms": 20})
    config = BackfillConfig(
        window_bars=900, max_concurrent_requests=CONCURRENCY, max_attempts=3, retry_backoff_ms=50
    )
    budget = RateLimiterConfig(tokens_per_interval=600_000, burst_tokens=1000)
    async with run_simulator(scenario) as sim:
        metrics = SeamlessMetrics(CollectorRegistry())
        fetcher_config = CcxtBackfillConfig(
            exchange_id="binance", urls={"rest": sim.base_url}, rate_limiter=budget
        )
        provider = EnhancedQuestDBProvider(
            dsn,
            fetcher=CcxtOHLCVFetcher(fetcher_config, metrics=metrics),
            strategy="AUTO_BACKFILL",
            backfill_config=config,
            metrics=metrics,
        )
        stopped = asyncio.Event()
        landed: list[BatchOutcome] = []

        def on_batch(_node: str, outcome: BatchOutcome) -> None:
            landed.append(outcome)
            if len(landed) == 10 and not stopped.is_set():
                stopped.set()

        provider.auto_backfiller.on_batch = on_batch
        async with provider:
            run = asyncio.create_task(
                provider.auto_backfiller.backfill(NODE, I, [Range(START, end)])
            )
            await stopped.wait()
            stop_ms = sim.state.clock.now() * 1000
            await asyncio.to_thread(postgres.stop)
            began = time.monotonic()
            report = await asyncio.wait_for(run, timeout=60)
            took_s = time.monotonic() - began
            after_stop = [
                r
                for r in sim.request_log.requests
                if r.path.endswith("/klines") and r.at_ms > stop_ms
            ]
            assert len(after_stop) <= PLANNED_PER_SLOT * CONCURRENCY, len(after_stop)
            windows = [(k.start_time, k.limit) for k in sim.request_log.klines]
            assert len(windows) == len(set(windows))  # nothing was downloaded twice
            assert not report.ok and took_s < 30
            unfinished = [o for o in report.outcomes if not o.ok]
            assert unfinished and all("StorageError" in (o.error or "") for o in unfinished)
            await asyncio.to_thread(postgres.start)
            assert await provider.ensure_data_available(START, end, node_id=NODE, interval=I)
            stored = await provider.storage.read_range(NODE, START, end)
    expected = generate_bars(5, "BTC/USDT", I, np.arange(START, end, I, dtype=np.int64) * 1000)
    assert stored["ts"].tolist() == list(range(START, end, I))
    assert stored["close"].tolist() == [row[4] for row in expected.ohlcv()]
