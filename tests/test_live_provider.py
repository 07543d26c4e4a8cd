"""A live session through the public provider, with the websocket feed on (ccxt.pro against
the simulator): the newest closed bar comes from the feed (not the exchange's REST API, here
3 s slow), is stored, and a feed that stalls past ``max_lag_seconds`` turns the session's
results into HOLD (``freshness_breach``) with the downgrade logged — then fresh again once
the feed resumes."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from qmtl.runtime.io.composition import build_provider
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.config import load_config
from qmtl.runtime.sdk.events import DOMAIN_GATE_DOWNGRADE
from qmtl.runtime.sdk.fetch_result import SeamlessFetchResult
from qmtl.runtime.sdk.history_coverage import compute_missing_ranges
from qmtl.services.exchange_sim import Scenario, run_simulator

NODE = "ohlcv:binance:BTC/USDT:1s"
MAX_LAG_S = 2.0


async def _at_close(provider: EnhancedQuestDBProvider) -> tuple[int, SeamlessFetchResult]:
    """Wait for the next bar close ``t``; fetch the 3 bars before it in a live session (all
    of them within the feed's reach once it has run for 3 s: it starts at subscription)."""
    t = int(time.time()) + 1
    await asyncio.sleep(t - time.time() + 0.02)
    result = await provider.fetch(
        t - 3, t, node_id=NODE, world_id="w1", execution_domain="live",
        max_lag_seconds=MAX_LAG_S,
    )  # fmt: skip
    return t, result


async def test_live_session_holds_while_the_feed_stalls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = Scenario.from_dict(
        {"seed": 9, "symbols": ["BTC/USDT"], "latency_ms": 3000, "ws_push_interval_ms": 50}
    )
    async with run_simulator(scenario) as sim:
        config = load_config(
            {
                "seamless": {
                    "storage": {"dsn": f"duckdb:///{tmp_path / 'live.duckdb'}"},
                    "live": {"ws": {"enabled": True}},
                    "sla": {
                        "max_wait_backfill_ms": 100,
                        "max_wait_live_ms": 500,
                        "total_deadline_ms": 1500,
                    },
                },
                "exchanges": {
                    "binance": {
                        "symbols": ["BTC/USDT"],
                        "timeframes": ["1s"],
                        "urls": {"rest": sim.base_url, "ws": sim.ws_url},
                    }
                },
            },
            env={},
        )
        provider = build_provider(config, strategy="SEAMLESS")
        async with provider:
            fresh = None
            for _ in range(8):  # the socket subscribes on the first fetch
                t, result = await _at_close(provider)
                if not result.metadata.downgraded and int(result.frame["ts"].max()) == t - 1:
                    fresh = result
                    break
            assert fresh is not None, "the feed never served the newest bar"
            assert fresh.metadata.live_rows >= 1  # from the feed: REST takes 3 s here
            ledger = await provider.storage.read_ledger(NODE, 1)
            assert compute_missing_ranges(ledger, t - 1, t, 1) == []  # and stored
            sim.pause_websockets(4.0)
            with caplog.at_level(logging.WARNING, logger="qmtl"):
                held = None
                for _ in range(4):
                    _, result = await _at_close(provider)
                    if result.metadata.downgrade_mode == "HOLD":
                        held = result
                        break
            assert held is not None, "a stalled feed never turned the session to HOLD"
            meta = held.metadata
            assert meta.downgrade_mode == "HOLD" and meta.downgrade_reason == "freshness_breach"
            assert meta.staleness_ms is not None and meta.staleness_ms > MAX_LAG_S * 1000
            logged = [r for r in caplog.records if getattr(r, "event", "") == DOMAIN_GATE_DOWNGRADE]
            reasons = {getattr(r, "reason", None) for r in logged}
            assert "freshness_breach" in reasons, reasons
            sim.pause_websockets(0)  # the feed resumes
            for _ in range(8):
                t, result = await _at_close(provider)
                if not result.metadata.downgraded:
                    break
            assert not result.metadata.downgraded, "fresh again once the feed resumed"
