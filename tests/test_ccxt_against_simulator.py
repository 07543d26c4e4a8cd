"""The REAL ccxt client (via ``create_exchange``) against the simulator.

Every malformed payload kind raises ``ccxt.BadResponse`` through ``create_exchange`` (the
``parse_json`` and ``parse_ohlcvs`` hooks). Also pins down what stock ccxt 4.5 does without
the hooks, which is why they exist: ``truncated_json`` → ``[]``, ``wrong_types`` → object rows
dropped and list-valued prices parsed as ``None``, ``nan_strings`` → ``float('nan')`` prices,
all silently.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import ccxt
import ccxt.async_support
import numpy as np
import pytest

from qmtl.runtime.io.ccxt_exchange import (
    create_exchange,
    http_status_of,
    parse_retry_after,
    retry_after_of,
    rewrite_urls,
)
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.services.exchange_sim import Scenario, SimulatorServer, generate_bars, run_simulator

T0 = 1_700_000_040
Open = Callable[..., Awaitable[tuple[SimulatorServer, Any]]]


@pytest.fixture
async def connect() -> AsyncIterator[Open]:
    """Start a simulator and a ccxt exchange pointed at it; both closed at teardown."""
    async with AsyncExitStack() as stack:

        async def _open(
            scenario: dict[str, Any] | None = None,
            clock: FakeClock | None = None,
            **kwargs: Any,
        ) -> tuple[SimulatorServer, Any]:
            sim = await stack.enter_async_context(
                run_simulator(
                    Scenario.from_dict(scenario or {}), clock=clock or FakeClock(T0 + 0.0)
                )
            )
            ex = create_exchange("binance", urls={"rest": sim.base_url, "ws": sim.ws_url}, **kwargs)
            ex.timeout_on_exit = 0  # plain HTTP on loopback: no TLS shutdown to wait for
            stack.push_async_callback(ex.close)
            return sim, ex

        yield _open


async def test_load_markets_makes_exactly_one_request(connect: Open) -> None:
    sim, ex = await connect({"symbols": ["BTC/USDT", "ETH/BTC"]})
    markets = await ex.load_markets()
    assert set(markets) == {"BTC/USDT", "ETH/BTC"}
    assert markets["ETH/BTC"]["spot"] and markets["ETH/BTC"]["id"] == "ETHBTC"
    assert sim.request_log.by_path() == {"/api/v3/exchangeInfo": 1}


async def test_paged_fetch_reproduces_the_simulator_bars(connect: Open) -> None:
    sim, ex = await connect({"seed": 11})
    since = (T0 - 10 * 86_400) * 1000
    total, page = 3500, 1000
    rows: list[list[float]] = []
    cursor = since
    while len(rows) < total:
        batch = await ex.fetch_ohlcv("BTC/USDT", "1m", since=cursor, limit=page)
        rows += batch[: total - len(rows)]
        cursor = batch[-1][0] + 60_000
    times = np.arange(total, dtype=np.int64) * 60_000 + since
    expected = generate_bars(11, "BTC/USDT", 60, times).ohlcv()
    assert np.array_equal(np.array(rows, dtype=np.float64), expected)  # bit for bit
    log = sim.request_log
    assert log.klines_count("BTCUSDT", "1m", limit=page) == 4
    windows = log.served_windows("BTCUSDT", "1m")
    assert len(set(windows)) == len(windows) == 4  # every window fetched exactly once
    assert log.count(status=429) == 0


async def test_429_and_418_are_ddos_protection_with_status_and_retry_after(
    connect: Open,
) -> None:
    clock = FakeClock(T0 + 20.0)
    scenario = {"weight_limit_per_minute": 4, "ban_after_violations": 2, "ban_seconds": 120}
    _, ex = await connect(scenario, clock)
    results: list[tuple[int | None, float | None]] = []
    for _ in range(5):
        try:
            await ex.public_get_klines({"symbol": "BTCUSDT", "interval": "1m", "limit": 1})
            results.append((200, None))
        except ccxt.DDoSProtection as exc:
            results.append((http_status_of(exc), retry_after_of(exc)))
    assert results == [(200, None), (200, None), (429, 40.0), (429, 40.0), (418, 120.0)]


async def test_rate_limit_errors_carry_their_own_status_under_concurrency(
    connect: Open,
) -> None:
    clock = FakeClock(T0 + 0.0)
    scenario = {
        "weight_limit_per_minute": 20,
        "ban_after_violations": 15,
        "retry_after_s": 7,
        "ban_seconds": 300,
    }
    sim, ex = await connect(scenario, clock)

    async def one(i: int) -> tuple[str, int | None, float | None]:
        try:
            await ex.public_get_klines({"symbol": "BTCUSDT", "interval": "1m", "limit": i % 5 + 1})
        except ccxt.NetworkError as exc:  # DDoSProtection is in the NetworkError family
            return type(exc).__name__, http_status_of(exc), retry_after_of(exc)
        return "ok", 200, None

    outcomes = await asyncio.gather(*(one(i) for i in range(60)))
    ddos = "DDoSProtection"
    assert set(outcomes) == {("ok", 200, None), (ddos, 429, 7.0), (ddos, 418, 300.0)}
    assert outcomes.count(("ok", 200, None)) == 10  # 20 weight / 2 per klines request
    assert outcomes.count((ddos, 429, 7.0)) == 15
    assert sim.request_log.statuses() == {200: 10, 429: 15, 418: 35}


async def test_bad_symbol(connect: Open) -> None:
    _, ex = await connect()
    with pytest.raises(ccxt.BadSymbol):
        await ex.fetch_ohlcv("NOPE/USDT", "1m")  # refused by ccxt from the market list
    with pytest.raises(ccxt.BadSymbol) as info:
        await ex.public_get_klines({"symbol": "NOPEUSDT", "interval": "1m"})
    assert http_status_of(info.value) == 400 and retry_after_of(info.value) is None
    with pytest.raises(ccxt.BadRequest) as bad:
        await ex.public_get_klines({"symbol": "BTCUSDT", "interval": "7m"})
    assert http_status_of(bad.value) == 400


@pytest.mark.parametrize(
    ("outage", "error", "status"),
    [
        ({"status": 502}, ccxt.ExchangeNotAvailable, 502),
        ({"status": 503}, ccxt.ExchangeNotAvailable, 503),
        ({"status": 500}, ccxt.ExchangeNotAvailable, 500),
        ({"status": 504}, ccxt.RequestTimeout, 504),
        ({"status": 503, "body": "json"}, ccxt.OperationFailed, 503),  # ccxt maps -1001 so
    ],
)
async def test_outages_raise_network_family_with_status(
    connect: Open, outage: dict[str, Any], error: type[Exception], status: int
) -> None:
    scenario = {"symbols": {"BTC/USDT": {"outages": [{"next_requests": 1, **outage}]}}}
    _, ex = await connect(scenario)
    with pytest.raises(error) as info:
        await ex.fetch_ohlcv("BTC/USDT", "1m", limit=3)
    assert http_status_of(info.value) == status
    assert len(await ex.fetch_ohlcv("BTC/USDT", "1m", limit=3)) == 3  # the outage is over


def _malformed(kind: str) -> dict[str, Any]:
    window = {"start": T0 - 3600, "end": T0 - 3000, "kind": kind}
    return {"symbols": {"BTC/USDT": {"malformed": [window]}}}


async def test_truncated_json_raises_bad_response(connect: Open) -> None:
    _, ex = await connect(_malformed("truncated_json"))
    with pytest.raises(ccxt.BadResponse, match="malformed JSON"):
        await ex.fetch_ohlcv("BTC/USDT", "1m", since=(T0 - 3600) * 1000, limit=5)


@pytest.mark.parametrize(
    ("kind", "since_s", "message"),
    [
        # the page starts two bars before the window: rows 2.. are broken, row 2 an object
        ("wrong_types", T0 - 3720, r"^binance OHLCV row 2: timestamp is None$"),
        ("nan_strings", T0 - 3720, r"^binance OHLCV row 2: open is nan$"),
        # one bar inside the window, and the page starts at it
        ("wrong_types", T0 - 3600, r"^binance OHLCV row 0: timestamp is None$"),
    ],
)
async def test_malformed_rows_raise_bad_response(
    connect: Open, kind: str, since_s: int, message: str
) -> None:
    sim, ex = await connect(_malformed(kind))
    with pytest.raises(ccxt.BadResponse, match=message):
        await ex.fetch_ohlcv("BTC/USDT", "1m", since=since_s * 1000, limit=5)
    assert sim.request_log.klines[-1].fault == kind  # the simulator did send that kind
    clean = await ex.fetch_ohlcv("BTC/USDT", "1m", since=(T0 - 3000) * 1000, limit=5)
    expected = generate_bars(0, "BTC/USDT", 60, np.arange(5, dtype=np.int64) * 60_000 + clean[0][0])
    assert clean == expected.ohlcv().tolist()  # pages outside the window are untouched


async def test_a_list_valued_price_alone_raises_bad_response() -> None:
    ex = create_exchange("binance")
    try:
        good = [T0 * 1000, "1.5", "2.0", "1.0", "1.8", "10.0", T0 * 1000 + 59_999, "15", 3]
        bad = [(T0 + 60) * 1000, ["1.8"], "2.0", "1.0", "1.9", "10.0", 0, "15", 3]
        assert ex.parse_ohlcvs([good]) == [[T0 * 1000, 1.5, 2.0, 1.0, 1.8, 10.0]]
        with pytest.raises(ccxt.BadResponse, match=r"^binance OHLCV row 1: open is None$"):
            ex.parse_ohlcvs([good, bad])
        for value, shown in (("Infinity", "inf"), ("-inf", "-inf"), (None, "None")):
            row = [*good[:5], value, *good[6:]]
            with pytest.raises(ccxt.BadResponse, match=rf"row 0: volume is {shown}$"):
                ex.parse_ohlcvs([row])
        with pytest.raises(ccxt.BadResponse, match="expected a list of rows, got str"):
            ex.parse_ohlcvs("[]")
        assert ex.parse_ohlcvs(None) == []
        assert ex.parse_ohlcvs([]) == []
    finally:
        await ex.close()


async def test_valid_pages_pass_through_the_base_parser_unchanged(connect: Open) -> None:
    _, ex = await connect({"seed": 3})
    stock = ccxt.async_support.binance()
    try:
        since = (T0 - 7200) * 1000
        raw = await ex.public_get_klines(
            {"symbol": "BTCUSDT", "interval": "1m", "startTime": since, "limit": 50}
        )
        market = (await ex.load_markets())["BTC/USDT"]
        for args in ((since, None), (since + 600_000, 7), (None, 3)):
            ours = ex.parse_ohlcvs(raw, market, "1m", *args)
            assert ours == stock.parse_ohlcvs(raw, market, "1m", *args) and ours
        assert ex.parse_ohlcvs(raw, market, "1m", None, 2, True) == stock.parse_ohlcvs(
            raw, market, "1m", None, 2, True
        )
    finally:
        await stock.close()


async def test_stock_ccxt_drops_object_rows_and_passes_nan_silently() -> None:
    """Why the ``parse_ohlcvs`` hook exists: without it nothing fails."""
    for kind in ("wrong_types", "nan_strings"):
        async with run_simulator(
            Scenario.from_dict(_malformed(kind)), clock=FakeClock(T0 + 0.0)
        ) as sim:
            ex = ccxt.async_support.binance(
                {"enableRateLimit": False, "options": {"fetchMarkets": {"types": ["spot"]}}}
            )
            try:
                ex.urls["api"] = rewrite_urls(ex.urls["api"], sim.base_url, sim.ws_url)
                rows = await ex.fetch_ohlcv("BTC/USDT", "1m", since=(T0 - 3600) * 1000, limit=5)
            finally:
                await ex.close()
        if kind == "wrong_types":
            assert len(rows) == 2  # three object rows lost their timestamp and were dropped
            assert all(r[1] is None for r in rows)  # list-valued opens parsed as None
        else:
            assert len(rows) == 5 and all(math.isnan(v) for r in rows for v in r[1:5])


async def test_weekly_ohlcv_opens_on_mondays(connect: Open) -> None:
    _, ex = await connect({"seed": 8})
    since = (T0 - 30 * 7 * 86_400) * 1000
    rows = await ex.fetch_ohlcv("BTC/USDT", "1w", since=since, limit=20)
    assert len(rows) == 20
    week_ms = 7 * 86_400_000
    assert rows[0][0] == 1_682_294_400_000  # Monday 2023-04-24, the first one after `since`
    for row in rows:
        opened = datetime.fromtimestamp(row[0] / 1000, tz=UTC)
        assert (opened.weekday(), opened.hour, opened.minute, opened.second) == (0, 0, 0, 0)
    times = np.arange(20, dtype=np.int64) * week_ms + rows[0][0]
    assert rows == generate_bars(8, "BTC/USDT", 604_800, times).ohlcv().tolist()


async def test_watch_ohlcv_over_the_simulated_websocket(connect: Open) -> None:
    clock = FakeClock(T0 + 30.0)
    _, ex = await connect({"seed": 4, "ws_push_interval_ms": 20}, clock, pro=True)
    assert ex.urls["api"]["ws"]["spot"].endswith("/stream/ws")
    candles = await asyncio.wait_for(ex.watch_ohlcv("BTC/USDT", "1m"), 10)
    assert candles[-1][0] == T0 * 1000
    clock.advance(45)
    final = generate_bars(4, "BTC/USDT", 60, np.array([T0 * 1000], np.int64)).ohlcv()[0]
    by_ts: dict[int, list[float]] = {}
    while (T0 + 60) * 1000 not in by_ts:  # each call returns what arrived since the last
        candles = await asyncio.wait_for(ex.watch_ohlcv("BTC/USDT", "1m"), 10)
        by_ts.update((c[0], c) for c in candles)
    assert by_ts[T0 * 1000] == final.tolist()  # the closed bar came before the next one


async def test_weekly_websocket_bar_opens_on_monday(connect: Open) -> None:
    _, ex = await connect({"seed": 8, "ws_push_interval_ms": 20}, pro=True)
    candles = await asyncio.wait_for(ex.watch_ohlcv("BTC/USDT", "1w"), 10)
    assert candles[-1][0] == 1_699_833_600_000  # Monday 2023-11-13: the week containing T0


def test_every_url_is_rewritten_and_spot_sockets_keep_stream() -> None:
    ex = create_exchange(
        "binance", urls={"rest": "http://127.0.0.1:9/", "ws": "ws://127.0.0.1:9"}, pro=True
    )
    flat: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, str):
            flat.append(node)

    walk(ex.urls["api"])
    assert flat and all(u.startswith(("http://127.0.0.1:9/", "ws://127.0.0.1:9/")) for u in flat)
    api = ex.urls["api"]
    assert api["public"] == "http://127.0.0.1:9/api/v3"
    assert api["fapiPublic"] == "http://127.0.0.1:9/fapi/v1"
    assert api["ws"]["spot"] == "ws://127.0.0.1:9/stream/ws"
    assert api["ws"]["linear"] == "ws://127.0.0.1:9/ws"
    assert api["ws"]["ws-api"]["spot"] == "ws://127.0.0.1:9/ws-api/v3"
    assert ex.enableRateLimit is False
    assert ex.options["fetchMarkets"]["types"] == ["spot"]
    assert ex.options["fetchCurrencies"] is False and ex.options["fetchMargins"] is False


def test_exchange_options_and_argument_checks() -> None:
    ex = create_exchange(
        "binance",
        urls={"rest": "https://sim.example:8443"},
        sandbox=True,
        options={"fetchMarkets": {"types": ["spot", "linear"]}, "recvWindow": 7000},
    )
    assert ex.urls["api"]["public"] == "https://sim.example:8443/api/v3"  # testnet path kept
    assert ex.options["fetchMarkets"]["types"] == ["spot", "linear"]
    assert ex.options["recvWindow"] == 7000 and ex.options["fetchMargins"] is False
    assert type(ex) is type(create_exchange("binance"))  # one subclass per ccxt class
    swap = create_exchange("binance", market_type="swap")
    assert swap.options["defaultType"] == "swap"
    with pytest.raises(ValueError, match="is not a ccxt exchange"):
        create_exchange("no_such_exchange")
    with pytest.raises(ValueError, match="did you mean 'binance'"):
        create_exchange("binanse")
    with pytest.raises(ValueError, match="not a ccxt exchange id"):
        create_exchange("../binance")
    with pytest.raises(ValueError, match=r"urls\.rest"):
        create_exchange("binance", urls={"rest": "ftp://x"})
    with pytest.raises(ValueError, match=r"urls\.ws"):
        create_exchange("binance", urls={"rest": "http://x:1", "ws": "http://x:1"})
    with pytest.raises(ValueError, match="expected keys"):
        create_exchange("binance", urls={"rest": "http://x:1", "wss": "ws://x"})


def test_missing_ccxt_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ccxt.async_support", None)
    with pytest.raises(ImportError, match=r"pip install 'qmtl-seamless\[ccxt\]'"):
        create_exchange("binance")


def test_status_helpers_follow_the_cause_chain() -> None:
    inner = ccxt.DDoSProtection("x")
    inner.http_status = 429
    inner.retry_after_s = 3.0
    outer = RuntimeError("wrapped")
    outer.__cause__ = inner
    assert http_status_of(outer) == 429 and retry_after_of(outer) == 3.0
    assert http_status_of(ValueError()) is None and retry_after_of(ValueError()) is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("nan") is None
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(date, now=1_445_412_470.0) == 10.0
