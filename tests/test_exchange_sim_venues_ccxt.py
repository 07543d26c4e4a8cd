"""The REAL ccxt ``binanceusdm`` and ``okx`` clients (via ``create_exchange``) against the
simulator: which requests ``load_markets`` makes, exact bars through ``fetch_ohlcv`` across
listing, halts and history depth, weight headers, how a 429 reaches the caller, malformed
pages and the forming bar.

Facts pinned here, which a fetcher for these venues has to live with (ccxt 4.5):

- ``binanceusdm`` (``market_type="swap"``) loads markets with exactly one request,
  ``GET /fapi/v1/exchangeInfo``; ``okx`` (spot) with exactly one,
  ``GET /api/v5/public/instruments?instType=SPOT``.
- ``binanceusdm.fetch_ohlcv`` caps ``limit`` at 1000. ``params={"limit": 1500}`` does send
  1500 (weight 10), but ccxt then keeps only its own limit's worth of rows (500 by default,
  1000 at most): through ccxt the 1500-row page is never worth its weight.
- ``okx.fetch_ohlcv(since=S)`` asks ``history-candles`` whenever ``S`` is older than 1439
  bars before ccxt's *wall clock* (always, under a fake clock in the past), with
  ``before=S-1&after=S+limit*bar``; without ``limit`` it asks for 300. History-candles
  serves at most 100 rows, the *newest* 100 of that window: a page asked for 300 bars
  returns bars 200..299 of it, not 0..99.
- A 429 is ``DDoSProtection`` on binanceusdm (Binance's own handler, 418 too) and
  ``RateLimitExceeded`` on okx — OKX's body code ``50011`` is mapped before the status
  (``httpExceptions['429']`` would say ``ExchangeNotAvailable``, but only for a body without
  an OKX code). Either way the adapter attaches ``http_status``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import ccxt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.io.ccxt_exchange import create_exchange, http_status_of, retry_after_of
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.services.exchange_sim import (
    USED_WEIGHT_HEADER,
    Scenario,
    SimulatorServer,
    forming_bar,
    generate_bars,
    run_simulator,
)

T0 = 1_700_000_040  # 2023-11-14T22:14:00Z, a minute boundary
VENUES = [("binanceusdm", "swap", "BTC/USDT:USDT"), ("okx", "spot", "BTC/USDT")]
Open = Callable[..., Awaitable[tuple[SimulatorServer, Any]]]


@pytest.fixture
async def connect() -> AsyncIterator[Open]:
    """A simulator for ``scenario`` and a ccxt ``exchange_id`` pointed at it; both closed."""
    async with AsyncExitStack() as stack:

        async def _open(
            exchange_id: str,
            scenario: dict[str, Any] | None = None,
            clock: FakeClock | None = None,
            market_type: str = "spot",
        ) -> tuple[SimulatorServer, Any]:
            sim = await stack.enter_async_context(
                run_simulator(Scenario.from_dict(scenario or {}), clock=clock or FakeClock(T0))
            )
            ex = create_exchange(exchange_id, urls={"rest": sim.base_url}, market_type=market_type)
            ex.timeout_on_exit = 0
            stack.push_async_callback(ex.close)
            return sim, ex

        yield _open


def _bars(seed: int, symbol: str, times_s: list[int] | range) -> list[list[float]]:
    times = np.array(list(times_s), np.int64) * 1000
    rows: list[list[float]] = generate_bars(seed, symbol, 60, times).ohlcv().tolist()
    return rows


async def test_load_markets_makes_exactly_the_expected_requests(connect: Open) -> None:
    scenario = {"symbols": ["BTC/USDT", "ETH/BTC"]}
    sim, usdm = await connect("binanceusdm", scenario, market_type="swap")
    markets = await usdm.load_markets()
    assert set(markets) == {"BTC/USDT:USDT"}  # ETH/BTC has no USD-M perpetual
    btc = markets["BTC/USDT:USDT"]
    assert (btc["id"], btc["type"], btc["swap"], btc["linear"], btc["settle"]) == (
        "BTCUSDT",
        "swap",
        True,
        True,
        "USDT",
    )
    assert [(r.path, r.query) for r in sim.request_log.requests] == [("/fapi/v1/exchangeInfo", "")]
    sim, okx = await connect("okx", scenario)
    markets = await okx.load_markets()
    assert set(markets) == {"BTC/USDT", "ETH/BTC"}
    assert (markets["ETH/BTC"]["id"], markets["ETH/BTC"]["spot"]) == ("ETH-BTC", True)
    assert [(r.path, r.query) for r in sim.request_log.requests] == [
        ("/api/v5/public/instruments", "instType=SPOT")
    ]


@pytest.mark.parametrize(("venue", "market_type", "symbol"), VENUES)
async def test_fetch_ohlcv_returns_the_exact_window_across_listing_and_halts(
    connect: Open, venue: str, market_type: str, symbol: str
) -> None:
    listing = T0 - 6 * 3600 + 30  # inside a minute: its bar opens 30 s earlier
    halt = (T0 - 3 * 3600, T0 - 3 * 3600 + 1800)
    scenario = {"seed": 13, "symbols": {"BTC/USDT": {"listing": listing, "halts": [list(halt)]}}}
    sim, ex = await connect(venue, scenario, market_type=market_type)
    first = listing - 30
    plain = await ex.fetch_ohlcv(symbol, "1m", since=(first + 600) * 1000, limit=100)
    assert plain == _bars(13, symbol, range(first + 600, first + 600 + 6000, 60))
    # from before the listing: Binance skips to the listing bar, OKX serves the window's part
    rows = await ex.fetch_ohlcv(symbol, "1m", since=(first - 1200) * 1000, limit=100)
    if venue == "okx":
        assert rows == _bars(13, symbol, range(first, first - 1200 + 6000, 60))
    else:
        assert rows == _bars(13, symbol, range(first, first + 6000, 60))
    # across the halt: the halted bars do not exist
    since = halt[0] - 1200
    rows = await ex.fetch_ohlcv(symbol, "1m", since=since * 1000, limit=100)
    end = since + 6000 if venue == "okx" else since + 6000 + 1800
    expected = [t for t in range(since, end, 60) if not halt[0] <= t < halt[1]]
    assert rows == _bars(13, symbol, expected)
    windows = sim.request_log.served_windows(venue=venue)
    assert len(windows) == 3 and sim.request_log.count(status=429) == 0


@pytest.mark.parametrize(("venue", "market_type", "symbol"), VENUES)
async def test_history_depth_answers_empty_for_older_windows(
    connect: Open, venue: str, market_type: str, symbol: str
) -> None:
    scenario = {"seed": 3, "symbols": {"BTC/USDT": {"history_depth_bars": 500}}}
    sim, ex = await connect(venue, scenario, market_type=market_type)
    oldest = T0 - 500 * 60
    assert await ex.fetch_ohlcv(symbol, "1m", since=(oldest - 100 * 60) * 1000, limit=100) == []
    rows = await ex.fetch_ohlcv(symbol, "1m", since=oldest * 1000, limit=100)
    assert rows == _bars(3, symbol, range(oldest, oldest + 6000, 60))
    straddle = await ex.fetch_ohlcv(symbol, "1m", since=(oldest - 50 * 60) * 1000, limit=100)
    assert straddle == rows[:50]  # only the asked slots at or after the floor
    assert [k.rows for k in sim.request_log.klines] == [0, 100, 50]


async def test_okx_history_pages_are_the_newest_100_of_what_ccxt_asks(connect: Open) -> None:
    sim, ex = await connect("okx", {"seed": 6})
    since = T0 - 2 * 86_400
    rows = await ex.fetch_ohlcv("BTC/USDT", "1m", since=since * 1000, limit=300)
    assert rows == _bars(6, "BTC/USDT", range(since + 200 * 60, since + 300 * 60, 60))
    record = sim.request_log.klines[-1]
    assert (record.path, record.limit, record.start_time, record.end_time) == (
        "/api/v5/market/history-candles",
        300,
        since * 1000 - 1,
        (since + 300 * 60) * 1000,
    )
    # without a limit ccxt asks for 300 rows of a 100-slot window: exactly its first 100 bars
    rows = await ex.fetch_ohlcv("BTC/USDT", "1m", since=since * 1000)
    assert rows == _bars(6, "BTC/USDT", range(since, since + 100 * 60, 60))
    record = sim.request_log.klines[-1]
    assert (record.limit, record.end_time) == (300, (since + 100 * 60) * 1000)
    # the recent-candles endpoint, on request, serves 300 at once
    recent = T0 - 600 * 60
    rows = await ex.fetch_ohlcv(
        "BTC/USDT", "1m", since=recent * 1000, limit=300, params={"type": "Candles"}
    )
    assert rows == _bars(6, "BTC/USDT", range(recent, recent + 300 * 60, 60))
    assert sim.request_log.klines[-1].path == "/api/v5/market/candles"
    daily = await ex.fetch_ohlcv("BTC/USDT", "1d", since=(T0 - 10 * 86_400) * 1000, limit=5)
    assert sim.request_log.klines[-1].interval == "1Dutc"  # what ccxt sends for 1d
    assert all(r[0] % 86_400_000 == 0 for r in daily) and len(daily) == 5


@pytest.mark.parametrize(("venue", "market_type", "symbol"), VENUES)
async def test_the_forming_bar_is_served_live(
    connect: Open, venue: str, market_type: str, symbol: str
) -> None:
    clock = FakeClock(T0 + 25.0)
    _, ex = await connect(venue, {"seed": 9}, clock, market_type=market_type)
    rows = await ex.fetch_ohlcv(symbol, "1m", since=(T0 - 240) * 1000, limit=10)
    assert rows[:-1] == _bars(9, symbol, range(T0 - 240, T0, 60))
    live = forming_bar(9, symbol, 60, T0 * 1000, T0 * 1000 + 25_000).ohlcv().tolist()
    assert rows[-1] == live[0]
    if venue == "okx":  # confirm is "0" on the wire; ccxt drops it from the row
        raw = await ex.publicGetMarketHistoryCandles({"instId": "BTC-USDT", "limit": "2"})
        assert [r[8] for r in raw["data"]] == ["0", "1"]


async def test_usdm_weight_header_follows_the_limit_tiers(connect: Open) -> None:
    clock = FakeClock(T0 + 1.0)
    sim, ex = await connect("binanceusdm", {}, clock, market_type="swap")
    seen: list[int] = []
    ex.qmtl_on_response = lambda code, headers: seen.append(int(headers[USED_WEIGHT_HEADER]))
    await ex.load_markets()
    since = (T0 - 3 * 86_400) * 1000
    for limit in (99, 100, 499, 500, 1000, 1500):
        await ex.fetch_ohlcv("BTC/USDT:USDT", "1m", since=since, limit=limit)
    # a 1500-row page is served (weight 10), but ccxt keeps at most 1000 of its rows
    rows = await ex.fetch_ohlcv("BTC/USDT:USDT", "1m", since=since, params={"limit": 1500})
    assert len(rows) == 500 and sim.request_log.klines[-1].rows == 1500
    assert np.diff(seen).tolist() == [1, 2, 2, 5, 5, 5, 10]  # ccxt sent 1000 for limit=1500
    assert [k.limit for k in sim.request_log.klines] == [99, 100, 499, 500, 1000, 1000, 1500]


async def test_429_and_418_reach_the_caller_with_their_status(connect: Open) -> None:
    clock = FakeClock(T0 + 15.0)
    usdm_limits = {"weight_limit_per_minute": 6, "ban_after_violations": 1, "ban_seconds": 90}
    scenario = {
        "venues": {"binanceusdm": usdm_limits, "okx": {"rate_limits": {"history_candles": 2}}}
    }
    sim, usdm = await connect("binanceusdm", scenario, clock, market_type="swap")
    await usdm.load_markets()  # weight 1
    since = (T0 - 86_400) * 1000
    await usdm.fetch_ohlcv("BTC/USDT:USDT", "1m", since=since, limit=500)  # weight 5: full
    with pytest.raises(ccxt.DDoSProtection) as info:
        await usdm.fetch_ohlcv("BTC/USDT:USDT", "1m", since=since, limit=10)
    assert type(info.value) is ccxt.DDoSProtection
    assert (http_status_of(info.value), retry_after_of(info.value)) == (429, 45.0)
    with pytest.raises(ccxt.DDoSProtection) as info:
        await usdm.fetch_ohlcv("BTC/USDT:USDT", "1m", since=since, limit=10)
    assert (http_status_of(info.value), retry_after_of(info.value)) == (418, 90.0)

    sim, okx = await connect("okx", scenario, clock)
    await okx.load_markets()
    for _ in range(2):
        await okx.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=100)
    with pytest.raises(ccxt.RateLimitExceeded) as info:
        await okx.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=100)
    assert not isinstance(info.value, ccxt.ExchangeNotAvailable)
    assert (http_status_of(info.value), retry_after_of(info.value)) == (429, None)
    assert sim.request_log.count(status=429, venue="okx") == 1


@pytest.mark.parametrize(("venue", "market_type", "symbol"), VENUES)
@pytest.mark.parametrize("kind", ["truncated_json", "wrong_types", "nan_strings"])
async def test_malformed_pages_are_bad_response(
    connect: Open, venue: str, market_type: str, symbol: str, kind: str
) -> None:
    span = (T0 - 7200, T0 - 6600)
    fault = {"start": span[0], "end": span[1], "kind": kind, "requests": 1}
    sim, ex = await connect(
        venue, {"symbols": {"BTC/USDT": {"malformed": [fault]}}}, market_type=market_type
    )
    since = (span[0] - 1200) * 1000
    with pytest.raises(ccxt.BadResponse):
        await ex.fetch_ohlcv(symbol, "1m", since=since, limit=40)
    rows = await ex.fetch_ohlcv(symbol, "1m", since=since, limit=40)  # served once broken
    assert rows == _bars(0, symbol, range(span[0] - 1200, span[0] + 1200, 60))
    assert [k.fault for k in sim.request_log.klines] == [kind, None]


@pytest.mark.parametrize(("venue", "market_type", "symbol"), VENUES)
async def test_an_html_outage_is_exchange_not_available_with_its_status(
    connect: Open, venue: str, market_type: str, symbol: str
) -> None:
    scenario = {"symbols": {"BTC/USDT": {"outages": [{"next_requests": 1, "status": 502}]}}}
    _, ex = await connect(venue, scenario, market_type=market_type)
    with pytest.raises(ccxt.ExchangeNotAvailable) as info:
        await ex.fetch_ohlcv(symbol, "1m", since=(T0 - 3600) * 1000, limit=10)
    assert http_status_of(info.value) == 502


LISTING = T0 - 3000 * 60 + 7
HALTS = [(T0 - 2000 * 60, T0 - 1950 * 60), (T0 - 700 * 60 + 1, T0 - 640 * 60)]


def _existing(symbol_bars_until: int) -> list[int]:
    return [
        t
        for t in range(LISTING - 7, symbol_bars_until, 60)
        if not any(a <= t and t + 60 <= b for a, b in HALTS)
    ]


@pytest.fixture
async def both(connect: Open) -> dict[str, Any]:
    scenario = {
        "seed": 17,
        "symbols": {"BTC/USDT": {"listing": LISTING, "halts": [list(h) for h in HALTS]}},
        "venues": {
            "binanceusdm": {"weight_limit_per_minute": 10**9},
            "okx": {"rate_limits": {"history_candles": 10**6, "instruments": 10**6}},
        },
    }
    _, usdm = await connect("binanceusdm", scenario, market_type="swap")
    _, okx = await connect("okx", scenario)
    await usdm.load_markets()
    await okx.load_markets()
    return {"binanceusdm": usdm, "okx": okx}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    since_s=st.integers(LISTING - 200 * 60, T0 - 120 * 60),
    offset_ms=st.integers(0, 59_999),
    limit=st.integers(1, 100),
    venue=st.sampled_from(["binanceusdm", "okx"]),
)
async def test_any_since_and_limit_give_exactly_the_model_bars(
    both: dict[str, Any], since_s: int, offset_ms: int, limit: int, venue: str
) -> None:
    """Binance: the first ``limit`` existing bars at or after ``since`` (skipping gaps).
    OKX (ccxt's window ``(since - 1, since + limit bars)``): the existing bars in those
    ``limit`` slots. Both ascending after ccxt, values exact."""
    since_ms = since_s * 1000 + offset_ms
    symbol = "BTC/USDT:USDT" if venue == "binanceusdm" else "BTC/USDT"
    existing = [t for t in _existing(T0) if t * 1000 >= since_ms]
    if venue == "okx":
        expected = [t for t in existing if t * 1000 < since_ms + limit * 60_000]
    else:
        expected = existing[:limit]
    rows = await both[venue].fetch_ohlcv(symbol, "1m", since=since_ms, limit=limit)
    assert rows == _bars(17, symbol, expected)
