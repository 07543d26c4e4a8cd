"""Simulator scenario loading, weight accounting and bar selection (pure; no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmtl.runtime.sdk.errors import ConfigError
from qmtl.services.exchange_sim.klines import (
    FaultCounters,
    asked_window,
    select_open_times,
    take_empty_page,
)
from qmtl.services.exchange_sim.scenario import MarketScenario, PageFault, Scenario, TimeSpan
from qmtl.services.exchange_sim.weights import WeightLimiter

EXAMPLE = """
seed: 42
weight_limit_per_minute: 1200
ban_after_violations: 2
retry_after_s: 7
ban_seconds: 300
latency_ms: 5
now: "2024-03-01T00:00:00Z"
ws_push_interval_ms: 100
symbols:
  BTC/USDT:
    listing: 2024-01-01
    halts:
      - ["2024-02-01T00:00:00Z", "2024-02-01T06:00:00Z"]
      - {start: 1707350400, end: 1707354000}
    outages:
      - {start: "2024-02-10T00:00:00Z", end: "2024-02-10T00:05:00Z", status: 502}
      - {next_requests: 2, status: 503, body: json}
    malformed:
      - {start: 1706745600, end: 1706749200, kind: truncated_json, requests: 1}
      - {start: 1706832000, end: 1706835600, kind: nan_strings}
    short_pages: [{start: 1706918400, end: 1706922000}]
    empty_pages: [{start: "2024-02-04T00:00:00Z", end: 1707008400, requests: 2}]
    duplicates: [{start: 1707004800, end: 1707008400, requests: 3}]
    latency_ms: 20
  ETH/USDT: {}
  SOL/USDT:
"""


def test_example_yaml_loads_into_frozen_objects(tmp_path: Path) -> None:
    scenario = Scenario.from_yaml(EXAMPLE)
    assert scenario.seed == 42
    assert scenario.symbols == ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    assert scenario.now_ms == 1_709_251_200_000
    btc = scenario.market("BTCUSDT")
    assert btc is not None
    assert btc.listing == 1_704_067_200
    assert btc.halts[0] == TimeSpan(start=1_706_745_600, end=1_706_767_200)
    assert btc.outages[0].status == 502 and btc.outages[0].span is not None
    assert btc.outages[1].next_requests == 2 and btc.outages[1].body == "json"
    assert btc.malformed[0].kind == "truncated_json" and btc.malformed[0].requests == 1
    assert btc.short_pages[0].requests is None
    assert btc.empty_pages == (
        PageFault(span=TimeSpan(start=1_707_004_800, end=1_707_008_400), requests=2),
    )
    assert scenario.market("ETHUSDT").empty_pages == ()  # type: ignore[union-attr]
    assert btc.latency_ms == 20
    assert scenario.market("NOPE") is None
    path = tmp_path / "scenario.yaml"
    path.write_text(EXAMPLE)
    assert Scenario.from_yaml(path) == scenario
    assert Scenario.from_yaml(str(path)) == scenario
    with pytest.raises(AttributeError):
        scenario.seed = 1  # type: ignore[misc]


def test_defaults_and_list_form() -> None:
    assert Scenario().symbols == ("BTC/USDT", "ETH/USDT")
    assert Scenario.from_yaml("") == Scenario()
    scenario = Scenario.from_dict({"symbols": ["BTC/USDT", "XRP/BTC"]})
    assert [m.exchange_symbol for m in scenario.markets] == ["BTCUSDT", "XRPBTC"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sed": 1}, "sed: unknown key (did you mean 'seed'?)"),
        ({"seed": "x"}, "seed: must be an integer"),
        ({"weight_limit_per_minute": 0}, "weight_limit_per_minute: must be an integer >= 1"),
        ({"symbols": ["btc-usdt"]}, "symbols[0]"),
        ({"symbols": [1]}, "symbols[0]: expected a symbol string"),
        ({"symbols": "BTC/USDT"}, "symbols: expected a list"),
        ({"symbols": ["BTC/USDT", "BTC/USDT"]}, "symbols: duplicate"),
        ({"symbols": {"BTC/USDT": {"listng": 0}}}, "symbols.BTC/USDT.listng: unknown key"),
        ({"symbols": {"BTC/USDT": {"halts": [[5, 1]]}}}, "symbols.BTC/USDT.halts[0]: end"),
        ({"symbols": {"BTC/USDT": {"halts": [[5]]}}}, "halts[0]: expected [start, end]"),
        ({"symbols": {"BTC/USDT": {"halts": [["2024-01-01T00:00:00", 9]]}}}, "has no timezone"),
        ({"symbols": {"BTC/USDT": {"outages": [{"status": 503}]}}}, "outages[0]: give either"),
        (
            {"symbols": {"BTC/USDT": {"outages": [{"next_requests": 1, "status": 404}]}}},
            "outages[0].status: must be a 5xx",
        ),
        (
            {"symbols": {"BTC/USDT": {"malformed": [{"start": 0, "end": 9, "kind": "bad"}]}}},
            "malformed[0].kind: must be one of",
        ),
        ({"symbols": {"BTC/USDT": {"malformed": [{"start": 0, "end": 9}]}}}, "kind: required"),
        (
            {"symbols": {"BTC/USDT": {"short_pages": [{"start": 0, "end": 9, "requests": 0}]}}},
            "short_pages[0].requests: must be an integer >= 1",
        ),
        (
            {"symbols": {"BTC/USDT": {"empty_page": [{"start": 0, "end": 9}]}}},
            "symbols.BTC/USDT.empty_page: unknown key (did you mean 'empty_pages'?)",
        ),
        ({"symbols": {"BTC/USDT": {"empty_pages": {"start": 0}}}}, "empty_pages: expected a list"),
        (
            {"symbols": {"BTC/USDT": {"empty_pages": [{"start": 0}]}}},
            "empty_pages[0].end: required",
        ),
        (
            {"symbols": {"BTC/USDT": {"empty_pages": [{"start": 9, "end": 9}]}}},
            "symbols.BTC/USDT.empty_pages[0]: end must be > start",
        ),
        (
            {"symbols": {"BTC/USDT": {"empty_pages": [{"start": 0, "end": 9, "requests": 0}]}}},
            "symbols.BTC/USDT.empty_pages[0].requests: must be an integer >= 1",
        ),
        (
            {"symbols": {"BTC/USDT": {"empty_pages": [{"start": 0, "end": 9, "request": 1}]}}},
            "empty_pages[0].request: unknown key (did you mean 'requests'?)",
        ),
        ({"symbols": {"BTC/USDT": {"latency_ms": -1}}}, "symbols.BTC/USDT.latency_ms"),
        ({"now": -5}, "now: must be epoch milliseconds"),
        ({"symbols": []}, "symbols: at least one"),
    ],
)
def test_bad_scenarios_name_the_key_path(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Scenario.from_dict(data)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_yaml_and_missing_files_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        Scenario.from_yaml("seed: [1\n")
    with pytest.raises(ConfigError, match="neither a file nor a YAML mapping"):
        Scenario.from_yaml("no-such-file.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        Scenario.from_yaml("- 1\n- 2\n")


def test_weight_budget_fixed_minute_and_rejections_consume_nothing() -> None:
    limiter = WeightLimiter(limit_per_minute=10, ban_after_violations=2, ban_seconds=30)
    t = 1_700_000_040.0  # start of a minute
    assert limiter.admit(6, t).used_weight == 6
    assert limiter.admit(4, t + 1).status == 200
    verdict = limiter.admit(2, t + 20.5)
    assert verdict.status == 429 and verdict.retry_after_s == 40
    assert limiter.used(t + 21) == 10  # the rejected request took nothing
    assert limiter.admit(1, t + 60).used_weight == 1  # new minute, full budget


def test_repeated_violations_escalate_to_a_ban_that_ends() -> None:
    limiter = WeightLimiter(
        limit_per_minute=2, ban_after_violations=2, ban_seconds=100, retry_after_s=7
    )
    t = 1_700_000_040.0
    assert limiter.admit(2, t).allowed
    assert [limiter.admit(1, t + 1).status for _ in range(2)] == [429, 429]
    ban = limiter.admit(1, t + 2)
    assert ban.status == 418 and ban.retry_after_s == 100
    assert limiter.admit(1, t + 90).status == 418  # a new minute does not lift a ban...
    still = limiter.admit(1, t + 101.5)
    assert still.status == 418 and still.retry_after_s == 1
    assert limiter.admit(1, t + 102).allowed  # ...its end does
    assert limiter.admit(5, t + 103).status == 429  # counters start afresh


def test_zero_tolerance_bans_on_the_first_violation() -> None:
    limiter = WeightLimiter(limit_per_minute=1, ban_after_violations=0, ban_seconds=5)
    assert limiter.admit(1, 0.0).allowed
    assert limiter.admit(1, 0.5).status == 418


MARKET = MarketScenario(
    symbol="BTC/USDT",
    listing=1_000_030,  # inside the minute [1_000_020, 1_000_080)
    halts=(TimeSpan(start=1_000_200, end=1_000_500),),
)


def _select(start: int | None, end: int | None, limit: int, now_s: int = 2_000_000) -> list[int]:
    found = select_open_times(
        MARKET, 60, start_time=start, end_time=end, limit=limit, now_ms=now_s * 1000
    )
    return [int(t) // 1000 for t in found]


def test_first_bar_contains_the_listing_and_halts_remove_whole_bars() -> None:
    bars = _select(0, None, 10)
    assert bars[0] == 1_000_020
    assert 1_000_200 not in bars and 1_000_440 not in bars  # bars entirely in the halt
    assert 1_000_140 in bars  # [1_000_140, 1_000_200) ends where the halt starts
    assert bars[3] == 1_000_500  # the page skips the halt
    assert bars == sorted(bars)


def test_binance_paging_semantics() -> None:
    assert _select(1_000_021 * 1000, None, 2) == [1_000_080, 1_000_140]  # open >= startTime
    assert _select(None, 1_000_560 * 1000, 2) == [1_000_500, 1_000_560]  # newest up to endTime
    assert _select(None, None, 2, now_s=1_000_650) == [1_000_560, 1_000_620]  # up to now
    assert _select(5 * 10**12, None, 10) == []  # the future
    assert _select(0, 1_000_019 * 1000, 10) == []  # before listing


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(990_000, 1_010_000),
    width=st.integers(0, 5_000),
    limit=st.integers(1, 50),
    forward=st.booleans(),
)
def test_selection_matches_a_brute_force_model(
    start: int, width: int, limit: int, forward: bool
) -> None:
    end = start + width
    now_s = 1_006_000
    existing = [
        t
        for t in range(0, now_s + 1, 60)
        if t + 60 > MARKET.listing  # type: ignore[operator]
        and not (t >= 1_000_200 and t + 60 <= 1_000_500)
    ]
    in_range = [t for t in existing if start <= t <= end]
    expected = in_range[:limit] if forward else in_range[-limit:]
    got = select_open_times(
        MARKET,
        60,
        start_time=start * 1000 if forward else None,
        end_time=end * 1000,
        limit=limit,
        now_ms=now_s * 1000,
    )
    if not forward:
        expected = [t for t in existing if t <= end][-limit:]
    assert (np.asarray(got) // 1000).tolist() == expected


WEEK = 604_800
MONDAY = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday
WEEKLY = MarketScenario(
    symbol="BTC/USDT",
    listing=MONDAY + 2 * 86_400 + 3600,  # Wednesday: the first bar opens that Monday
    halts=(
        TimeSpan(start=MONDAY + 3 * WEEK, end=MONDAY + 5 * WEEK),  # two whole weeks
        TimeSpan(start=MONDAY + 7 * WEEK + 3600, end=MONDAY + 9 * WEEK),  # one whole week
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(MONDAY - 3 * WEEK, MONDAY + 14 * WEEK),
    width=st.integers(0, 12 * WEEK),
    limit=st.integers(1, 20),
    forward=st.booleans(),
)
def test_weekly_selection_opens_on_mondays_and_matches_a_model(
    start: int, width: int, limit: int, forward: bool
) -> None:
    end = start + width
    now_s = MONDAY + 12 * WEEK + 5
    mondays = range(345_600, now_s + 1, WEEK)  # 1970-01-05, then every Monday
    existing = [
        t
        for t in mondays
        if t + WEEK > WEEKLY.listing  # type: ignore[operator]
        and not (t >= MONDAY + 3 * WEEK and t + WEEK <= MONDAY + 5 * WEEK)
        and not (t >= MONDAY + 7 * WEEK + 3600 and t + WEEK <= MONDAY + 9 * WEEK)
    ]
    assert existing[0] == MONDAY and MONDAY + 8 * WEEK not in existing
    assert MONDAY + 7 * WEEK in existing  # the halt starts inside that week
    got = select_open_times(
        WEEKLY,
        WEEK,
        start_time=start * 1000 if forward else None,
        end_time=end * 1000,
        limit=limit,
        now_ms=now_s * 1000,
    )
    in_range = [t for t in existing if t <= end and (not forward or t >= start)]
    expected = in_range[:limit] if forward else in_range[-limit:]
    assert (np.asarray(got) // 1000).tolist() == expected


def test_weekly_bars_start_at_the_first_monday_after_the_epoch() -> None:
    market = MarketScenario(symbol="BTC/USDT")
    first = select_open_times(market, WEEK, start_time=0, end_time=None, limit=2, now_ms=10**12)
    assert first.tolist() == [345_600_000, 345_600_000 + WEEK * 1000]  # 1970-01-05, -12
    early = select_open_times(
        market, WEEK, start_time=None, end_time=345_599_999, limit=5, now_ms=10**12
    )
    assert early.size == 0  # nothing opens before the first Monday


def test_asked_window_is_the_requested_bar_slots_whether_or_not_bars_exist() -> None:
    now_ms = 2_000_000 * 1000

    def asked(start: int | None, end: int | None, limit: int) -> tuple[int, int] | None:
        found = asked_window(60, start_time=start, end_time=end, limit=limit, now_ms=now_ms)
        return None if found is None else (found[0] // 1000, found[1] // 1000)

    assert asked(1_000_021_000, None, 3) == (1_000_080, 1_000_260)  # from the next open
    assert asked(1_000_080_000, 1_000_140_000, 10) == (1_000_080, 1_000_200)  # endTime cuts
    assert asked(None, 1_000_140_000, 2) == (1_000_080, 1_000_200)  # back from endTime
    assert asked(None, None, 2) == (1_999_920, 2_000_040)  # back from now: the forming bar
    assert asked(1_999_950_000, None, 100) == (1_999_980, 2_000_040)  # now cuts
    assert asked(1_999_990_000, None, 100) is None  # opens after now
    assert asked(None, 60_000, 5) == (0, 120)  # nothing before the epoch
    assert asked(5 * 10**12, None, 10) is None  # the future
    week = asked_window(604_800, start_time=0, end_time=None, limit=2, now_ms=now_ms)
    assert week == (345_600_000, 345_600_000 + 2 * 604_800_000)  # from the first Monday


def test_empty_pages_match_the_asked_window_and_count_their_requests() -> None:
    market = MarketScenario(
        symbol="BTC/USDT",
        empty_pages=(
            PageFault(span=TimeSpan(start=1_000_200, end=1_000_260), requests=2),
            PageFault(span=TimeSpan(start=5_000_000, end=5_000_060)),
        ),
    )
    counters = FaultCounters()
    first = market.empty_pages[0]
    # [1_000_080, 1_000_200) ends where the span starts: not hit, nothing counted
    assert take_empty_page(market, (1_000_080_000, 1_000_200_000), counters) is None
    hits = [take_empty_page(market, (1_000_140_000, 1_000_260_000), counters) for _ in range(3)]
    assert hits == [first, first, None]  # two requests, then served correctly
    unlimited = market.empty_pages[1]
    for _ in range(5):
        assert take_empty_page(market, (4_999_000_000, 5_000_010_000), counters) is unlimited
    assert take_empty_page(market, None, counters) is None


VENUES_EXAMPLE = """
seed: 7
latency_ms: 5
symbols:
  BTC/USDT: {listing: 2024-01-01, history_depth_bars: 2000}
  ETH/USDT: {}
  ETH/BTC: {}
venues:
  binance: {weight_limit_per_minute: 1200, retry_after_s: 9, history_depth_bars: 720}
  binanceusdm:
    weight_limit_per_minute: 2400
    ban_seconds: 60
    latency_ms: 0
    symbols:
      BTC/USDT:USDT: {listing: 2019-09-08}
      DOGE/USDC:USDC: {history_depth_bars: 99}
  okx:
    rate_limits: {candles: 30, history_candles: 10}
    recent_candles: 1000
    history_candles_max_limit: 300
    latency_ms: 30
"""


def test_venues_shape_loads_with_defaults_from_the_top_level() -> None:
    scenario = Scenario.from_yaml(VENUES_EXAMPLE)
    assert (scenario.weight_limit_per_minute, scenario.retry_after_s) == (1200, 9)  # spot
    usdm, okx = scenario.venues.binanceusdm, scenario.venues.okx
    assert (usdm.weight_limit_per_minute, usdm.ban_seconds, usdm.ban_after_violations) == (
        2400,
        60,
        3,
    )
    assert (okx.rate_limits.candles, okx.rate_limits.history_candles) == (30, 10)
    assert (okx.rate_limits.instruments, okx.rate_limits.time) == (20, 10)  # defaults
    assert (okx.recent_candles, okx.history_candles_max_limit, okx.candles_max_limit) == (
        1000,
        300,
        300,
    )
    spot = scenario.venue_markets("binance")
    assert [(m.symbol, m.history_depth_bars) for m in spot] == [
        ("BTC/USDT", 2000),  # the symbol's own depth wins ...
        ("ETH/USDT", 720),  # ... over the venue's default
        ("ETH/BTC", 720),
    ]
    assert [m.history_depth_bars for m in scenario.venue_markets("okx")] == [2000, None, None]
    perps = scenario.venue_markets("binanceusdm")
    assert [(m.symbol, m.exchange_symbol, m.settle) for m in perps] == [
        ("BTC/USDT:USDT", "BTCUSDT", "USDT"),
        ("DOGE/USDC:USDC", "DOGEUSDC", "USDC"),
    ]
    assert scenario.market("BTC-USDT", "okx") is scenario.venue_markets("okx")[0]
    assert scenario.market("BTCUSDT", "binanceusdm") is perps[0]
    assert scenario.market("BTC-USDT") is None  # Binance spot ids have no dash
    assert [scenario.venue_latency_ms(v) for v in ("binance", "binanceusdm", "okx")] == [5, 0, 30]


def test_perpetuals_default_to_the_usdt_and_usdc_symbols() -> None:
    scenario = Scenario.from_dict(
        {"symbols": {"BTC/USDT": {"halts": [[10, 20]]}, "ETH/BTC": {}, "SOL/USDC": {}}}
    )
    perps = scenario.venue_markets("binanceusdm")
    assert [m.symbol for m in perps] == ["BTC/USDT:USDT", "SOL/USDC:USDC"]
    assert perps[0].halts == scenario.markets[0].halts  # same listing, halts and faults
    assert Scenario().venue_markets("okx") == Scenario().markets
    assert Scenario.from_dict({"symbols": ["ETH/BTC"]}).venue_markets("binanceusdm") == ()


def test_keyword_construction_of_venues() -> None:
    from qmtl.services.exchange_sim import BinanceUsdmSettings, OkxRateLimits, OkxSettings, Venues

    scenario = Scenario(
        venues=Venues(
            binanceusdm=BinanceUsdmSettings(weight_limit_per_minute=100),
            okx=OkxSettings(rate_limits=OkxRateLimits(candles=2), history_depth_bars=10),
        )
    )
    assert scenario.venues.binanceusdm.weight_limit_per_minute == 100
    assert [m.history_depth_bars for m in scenario.venue_markets("okx")] == [10, 10]
    assert scenario == Scenario.from_dict(
        {
            "venues": {
                "binanceusdm": {"weight_limit_per_minute": 100},
                "okx": {"rate_limits": {"candles": 2}, "history_depth_bars": 10},
            }
        }
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"venue": {}}, "venue: unknown key (did you mean 'venues'?)"),
        ({"venues": {"okc": {}}}, "venues.okc: unknown key (did you mean 'okx'?)"),
        ({"venues": []}, "venues: expected a mapping"),
        (
            {"venues": {"okx": {"rate_limits": {"candels": 5}}}},
            "venues.okx.rate_limits.candels: unknown key (did you mean 'candles'?)",
        ),
        (
            {"venues": {"okx": {"rate_limits": {"candles": 0}}}},
            "venues.okx.rate_limits.candles: must be an integer >= 1",
        ),
        (
            {"venues": {"okx": {"weight_limit_per_minute": 5}}},
            "venues.okx.weight_limit_per_minute: unknown key",
        ),
        (
            {"venues": {"binanceusdm": {"rate_limits": {}}}},
            "venues.binanceusdm.rate_limits: unknown key",
        ),
        (
            {"venues": {"binance": {"weight_limit_per_minut": 5}}},
            "venues.binance.weight_limit_per_minut: unknown key (did you mean "
            "'weight_limit_per_minute'?)",
        ),
        (
            {"venues": {"binance": {"weight_limit_per_minute": 0}}},
            "venues.binance.weight_limit_per_minute: must be an integer >= 1",
        ),
        (
            {"venues": {"binance": {"ban_seconds": "x"}}},
            "venues.binance.ban_seconds: must be an integer",
        ),
        (
            {"ban_seconds": 5, "venues": {"binance": {"ban_seconds": 6}}},
            "venues.binance.ban_seconds: also given at the top level (ban_seconds)",
        ),
        (
            {"venues": {"binanceusdm": {"weight_limit_per_minute": -1}}},
            "venues.binanceusdm.weight_limit_per_minute: must be an integer >= 1",
        ),
        (
            {"venues": {"binanceusdm": {"symbols": ["BTC/USDT"]}}},
            "venues.binanceusdm.symbols: USD-M markets are linear perpetuals",
        ),
        (
            {"venues": {"binanceusdm": {"symbols": ["BTC/USDT:BTC"]}}},
            "venues.binanceusdm.symbols: USD-M markets are linear perpetuals",
        ),
        (
            {"venues": {"okx": {"symbols": {"BTC/USDT:USDT": {}}}}},
            "venues.okx.symbols: spot venues take spot symbols",
        ),
        (
            {"venues": {"okx": {"symbols": {"BTC/USDT": {"listng": 1}}}}},
            "venues.okx.symbols.BTC/USDT.listng: unknown key (did you mean 'listing'?)",
        ),
        ({"venues": {"okx": {"symbols": []}}}, "venues.okx.symbols: give at least one"),
        ({"venues": {"okx": {"latency_ms": 70_000}}}, "venues.okx.latency_ms: must be within"),
        ({"venues": {"okx": {"recent_candles": 0}}}, "venues.okx.recent_candles: must be"),
        (
            {"venues": {"binanceusdm": {"history_depth_bars": 0}}},
            "venues.binanceusdm.history_depth_bars: must be an integer >= 1",
        ),
        (
            {"symbols": {"BTC/USDT": {"history_depth_bars": "deep"}}},
            "symbols.BTC/USDT.history_depth_bars: must be an integer",
        ),
        (
            {"symbols": {"BTC/USDT": {"history_depth_bar": 5}}},
            "symbols.BTC/USDT.history_depth_bar: unknown key (did you mean 'history_depth_bars'?)",
        ),
        ({"symbols": ["BTC/USDT:USDT"]}, "symbols: top-level symbols are spot symbols"),
        (
            {"venues": {"binanceusdm": {"symbols": ["BTC/USDT:USDT", "BTC/USDT:USDT"]}}},
            "venues.binanceusdm.symbols: duplicate exchange symbols ['BTCUSDT']",
        ),
    ],
)
def test_bad_venue_settings_name_the_key_path(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Scenario.from_dict(data)
    assert message in str(info.value)


MINUTE = 60


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(1_000_000, 1_010_000),
    width=st.integers(0, 4_000),
    limit=st.integers(1, 60),
    forward=st.booleans(),
    depth=st.none() | st.integers(1, 200),
    recent=st.none() | st.integers(1, 200),
)
def test_selection_with_depth_matches_a_brute_force_model(
    start: int,
    width: int,
    limit: int,
    forward: bool,
    depth: int | None,
    recent: int | None,
) -> None:
    """Depth cuts at ``now - depth`` bar slots (``recent``: the newest ``recent`` slots); a
    forward page asked from before the cut covers only its own slots."""
    now_s = 1_006_000 + 37
    market = MarketScenario(
        symbol="BTC/USDT",
        listing=MARKET.listing,
        halts=MARKET.halts,
        history_depth_bars=depth,
    )
    now_open = now_s // MINUTE * MINUTE
    floors = [now_open - depth * MINUTE] if depth else []
    floors += [now_open - (recent - 1) * MINUTE] if recent else []
    floor = max(floors, default=0)
    end = start + width
    existing = [
        t
        for t in range(0, now_s + 1, MINUTE)
        if t + MINUTE > MARKET.listing  # type: ignore[operator]
        and not (t >= 1_000_200 and t + MINUTE <= 1_000_500)
    ]
    if forward:
        first_slot = -(-start // MINUTE) * MINUTE
        in_range = [t for t in existing if start <= t <= end and t >= floor]
        if first_slot < floor:
            in_range = [t for t in in_range if t < first_slot + limit * MINUTE]
        expected = in_range[:limit]
    else:
        expected = [t for t in existing if floor <= t <= end][-limit:]
    got = select_open_times(
        market,
        MINUTE,
        start_time=start * 1000 if forward else None,
        end_time=end * 1000,
        limit=limit,
        now_ms=now_s * 1000,
        recent_bars=recent,
    )
    assert (np.asarray(got) // 1000).tolist() == expected


def test_the_documented_example_loads() -> None:
    import textwrap

    from qmtl.services.exchange_sim import scenario as module

    assert module.__doc__ is not None
    block = module.__doc__.split("::\n", 1)[1].split("\nTime conventions")[0]
    scenario = Scenario.from_yaml(textwrap.dedent(block))
    assert scenario.venue_markets("binanceusdm")[0].symbol == "BTC/USDT:USDT"
    assert scenario.venues.okx.history_candles_max_limit == 100
