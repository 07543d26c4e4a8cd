"""Closing a provider stops everything it started (in-process simulator, real ccxt)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from qmtl.runtime.io import EnhancedQuestDBProvider
from qmtl.runtime.sdk.config import load_config
from qmtl.services.exchange_sim import Scenario, run_simulator
from tests.polling import wait_until

NODE = "ohlcv:binance:BTC/USDT:1m"
JAN1, JAN3 = 1_704_067_200, 1_704_240_000


async def test_closing_a_provider_stops_the_batches_its_cancelled_fetch_left_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Batches are shielded from a fetch that gives up (Ctrl-C, an SLA), so closing the
    provider must stop them: before, they went on retrying against the closed client."""
    scenario = Scenario.from_dict({"seed": 5, "symbols": ["BTC/USDT"], "latency_ms": 200})
    async with run_simulator(scenario) as sim:
        provider = EnhancedQuestDBProvider.from_config(
            load_config(
                {
                    "seamless": {"storage": {"dsn": f"duckdb:///{tmp_path / 'h.duckdb'}"}},
                    "exchanges": {"binance": {"symbols": ["BTC/USDT"],
                                              "urls": {"rest": sim.base_url}}},
                },
                env={},
            ),
            strategy="AUTO_BACKFILL",
        )  # fmt: skip
        fetch = asyncio.create_task(provider.fetch(JAN1, JAN3, node_id=NODE))
        await wait_until(lambda: sim.request_log.count("/api/v3/klines") > 0, timeout_s=10)
        fetch.cancel()
        with caplog.at_level(logging.INFO, logger="qmtl"):
            await provider.aclose()
            after = sim.request_log.count("/api/v3/klines")
            await asyncio.sleep(0.5)
        assert sim.request_log.count("/api/v3/klines") == after  # nothing runs any more
        assert not [r for r in caplog.records if "closed" in str(getattr(r, "error", ""))]
