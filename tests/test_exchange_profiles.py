"""Exchange profiles: page sizes and weights, budgets under the README rule, ceilings, ccxt
derivation, overrides; the fetcher's use of them (page size, weight, history depth)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from qmtl.cli.main import main
from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.io.exchange_profiles import PUBLISHED, ExchangeProfile, best_page, profile_for
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.history_coverage import SegmentKind, compute_missing_ranges
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.services.exchange_sim import Scenario, run_simulator

I = 60
NOW = 1_704_067_200 + 30  # 2024-01-01T00:00:30Z, mid-bar
NODE = "ohlcv:binance:BTC/USDT:1m"


def test_binance_pages_and_budgets() -> None:
    spot = profile_for("binance", "spot")
    assert (spot.bars_per_page, spot.page_weight, spot.markets_weight) == (1000, 2, 20)
    assert spot.usage_header == "X-MBX-USED-WEIGHT-1m" and spot.ban_statuses == (418,)
    budget = spot.default_budget()
    assert (budget.tokens_per_interval, budget.burst_tokens, budget.interval_ms) == (
        5880,
        120,
        60_000,
    )
    assert spot.ceiling_bars_per_s() == pytest.approx(49_000)
    futures = profile_for("binanceusdm", "swap")
    assert (futures.bars_per_page, futures.page_weight) == (499, 2)  # the most bars per weight
    assert futures.limit == 2400


def test_every_published_profile_keeps_the_readme_rule() -> None:
    for exchange_id, market_type in PUBLISHED:
        profile = profile_for(exchange_id, market_type)
        budget = profile.default_budget()
        assert budget.tokens_per_interval + budget.burst_tokens <= profile.limit
        assert budget.interval_ms == profile.limit_interval_ms
        assert profile.ceiling_bars_per_s() > 0


@given(
    tiers=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 20)), min_size=1, max_size=6).map(
        lambda ts: tuple({b: w for b, w in ts}.items())
    ),
    limit=st.integers(2, 100_000),
    interval_ms=st.integers(100, 600_000),
)
def test_profile_arithmetic(tiers: Any, limit: int, interval_ms: int) -> None:
    profile = ExchangeProfile(
        exchange_id="x", market_type="spot", page_tiers=tiers, limit=limit,
        limit_interval_ms=interval_ms,
    )  # fmt: skip
    bars, weight = best_page(profile.page_tiers)
    assert all(b / w <= bars / weight for b, w in profile.page_tiers)
    assert profile.bars_per_page == bars and profile.page_weight == weight
    budget = profile.default_budget()
    assert budget.tokens_per_interval + budget.burst_tokens <= limit
    expected = budget.tokens_per_interval / weight / (interval_ms / 1000) * bars
    assert profile.ceiling_bars_per_s() == pytest.approx(expected)


def test_exchanges_without_a_published_entry_come_from_ccxt() -> None:
    gate = profile_for("gate", "spot")
    assert gate.source == "ccxt metadata" and gate.bars_per_page == 1000  # features limit
    assert gate.limit >= 1 and gate.limit_interval_ms == 60_000


def test_overrides_and_their_errors() -> None:
    base = profile_for("binanceusdm", "swap")
    assert base.with_overrides({"page_limit": 1000}).page_weight == 5
    assert base.with_overrides({"history_depth_bars": 720}).history_depth_bars == 720
    assert base.with_overrides({"page_tiers": [[1500, 1]]}).bars_per_page == 1500
    with pytest.raises(ValueError, match="unknown field"):
        base.with_overrides({"pages": 3})
    with pytest.raises(ValueError, match="more than binanceusdm swap serves per request"):
        base.with_overrides({"page_limit": 5000})
    config = CcxtBackfillConfig(exchange_id="okx", profile={"page_limit": 50})
    assert config.exchange_profile().bars_per_page == 50


def test_a_default_budget_takes_the_exchanges_own() -> None:
    okx = CcxtBackfillConfig(exchange_id="okx").effective_rate_limiter()
    assert (okx.tokens_per_interval, okx.burst_tokens, okx.interval_ms) == (19, 1, 2000)
    mine = RateLimiterConfig(tokens_per_interval=10, interval_ms=2000, burst_tokens=1)
    assert CcxtBackfillConfig(exchange_id="okx", rate_limiter=mine).effective_rate_limiter() == mine


async def test_history_depth_is_never_known_empty() -> None:
    """Regression: an exchange that only serves recent history had its older windows
    recorded known-empty for good. Beyond the profile's depth, nothing is asked and nothing
    is EMPTY: the range stays missing, with the reason."""
    clock = FakeClock(start=float(NOW), auto_advance=True)
    start, end = NOW - 30 - 300 * I, NOW - 30
    async with run_simulator(Scenario.from_dict({"symbols": ["BTC/USDT"]}), clock=clock) as sim:
        metrics = SeamlessMetrics(CollectorRegistry())
        config = CcxtBackfillConfig(
            exchange_id="binance",
            urls={"rest": sim.base_url},
            profile={"history_depth_bars": 100},
        )
        async with EnhancedQuestDBProvider(
            "duckdb:///:memory:",
            fetcher=CcxtOHLCVFetcher(config, clock=clock, metrics=metrics),
            strategy="AUTO_BACKFILL",
            clock=clock,
            metrics=metrics,
        ) as provider:
            result = await provider.fetch(start, end, node_id=NODE, interval=I)
            ledger = await provider.coverage(node_id=NODE, interval=I)
        asked = [k.start_time for k in sim.request_log.klines]
    oldest = end - 100 * I
    assert result.frame["ts"].tolist() == list(range(oldest, end, I))
    assert all(s.kind is SegmentKind.DATA for s in ledger)
    assert compute_missing_ranges(ledger, start, end, I)[0].start == start
    assert any("history depth (100 bars)" in e for e in result.metadata.backfill_errors)
    assert asked and min(t for t in asked if t is not None) >= oldest * 1000


def test_exchanges_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["exchanges", "binanceusdm:swap", "okx", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["exchange_id"], r["page_limit"], r["page_weight"]) for r in rows] == [
        ("binanceusdm", 499, 2),
        ("okx", 100, 1),
    ]
    assert rows[0]["ceiling_bars_per_s"] == pytest.approx(2352 / 2 / 60 * 499)
    assert main(["exchanges", "nosuchex"]) == 2
    assert "not a ccxt exchange" in capsys.readouterr().err


def test_the_published_table_agrees_with_ccxts_own_tiers() -> None:
    """Derive, then check against the exchange's numbers: ccxt's ``byLimit`` tiers of the
    USD-M klines endpoint have our tier boundaries, in the same 1:2:5:10 proportion."""
    import ccxt

    by_limit = ccxt.binanceusdm().api["fapiPublic"]["get"]["klines"]["byLimit"]
    ours = profile_for("binanceusdm", "swap").page_tiers
    assert [b for b, _ in by_limit[:3]] == [b for b, _ in ours[:3]]
    base = by_limit[0][1]
    assert [w / base for _, w in by_limit] == [w for _, w in ours]


def test_rate_limit_statuses_come_from_ccxts_http_exceptions() -> None:
    import ccxt

    from qmtl.runtime.io.exchange_profiles import rate_limit_statuses

    assert 429 in rate_limit_statuses(ccxt.bitget().httpExceptions)
    assert rate_limit_statuses({"418": ccxt.DDoSProtection, "500": ccxt.ExchangeError}) == (
        418,
        429,
    )
    assert profile_for("bitget", "spot").rate_limit_statuses[-1] >= 429
