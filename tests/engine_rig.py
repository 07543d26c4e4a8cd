"""The engine rig shared by the provider tests: a ``SeamlessDataProvider`` over real
in-memory DuckDB, the real backfiller and a scripted fetcher (a real implementation of the
fetcher port), all on one fake clock, with a fresh metrics registry."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.auto_backfiller import DataFetcherAutoBackfiller
from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.backfill_config import BackfillConfig, BackfillMode
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.fetch_result import SeamlessFetchResult
from qmtl.runtime.sdk.history_storage import HistoryStorage
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.seamless_data_provider import SeamlessDataProvider
from qmtl.runtime.sdk.sla import SLAPolicy
from tests.fetchers import ScriptedFetcher

NODE = "ohlcv:binance:BTC/USDT:1m"
I = 60
T0 = 1_700_000_400  # on the 10-bar grid
END = T0 + 30 * I
NOW = T0 + 10_000 * I


@pytest.fixture
async def storage() -> AsyncIterator[HistoryStorage]:
    async with open_storage("duckdb:///:memory:") as store:
        yield store


class Rig:
    def __init__(
        self,
        storage: HistoryStorage,
        *,
        strategy: str = "SEAMLESS",
        sla: SLAPolicy | None = None,
        delay_s: float = 0.0,
        mode: BackfillMode = "background",
    ) -> None:
        self.clock = FakeClock(start=NOW)
        self.registry = CollectorRegistry()
        metrics = SeamlessMetrics(self.registry)
        self.fetcher = ScriptedFetcher(clock=self.clock, delay_s=delay_s)
        self.backfiller = DataFetcherAutoBackfiller(
            self.fetcher,
            storage,
            config=BackfillConfig(window_bars=10, max_attempts=2, retry_backoff_ms=100),
            clock=self.clock,
            metrics=metrics,
            rng=random.Random(1),
        )
        self.provider = SeamlessDataProvider(
            strategy=strategy,
            storage=storage,
            backfiller=self.backfiller,
            sla=sla,
            clock=self.clock,
            metrics=metrics,
            backfill_config=BackfillConfig(mode=mode),
        )

    async def fetch(self, start: int = T0, end: int = END, **kw: object) -> SeamlessFetchResult:
        task = asyncio.create_task(
            self.provider.fetch(start, end, node_id=NODE, interval=I, **kw)  # type: ignore[arg-type]
        )
        await self.clock.run_until(task.done)
        return task.result()

    async def settle(self) -> None:
        """Drive the fake clock until every background backfill is done."""
        task = asyncio.create_task(self.provider.wait_background())
        await self.clock.run_until(task.done)

    async def ensure(self) -> bool:
        task = asyncio.create_task(
            self.provider.ensure_data_available(T0, END, node_id=NODE, interval=I)
        )
        await self.clock.run_until(task.done)
        return task.result()
