"""The simulator's Binance USD-M futures wire format over real sockets (raw aiohttp client):
exchangeInfo of perpetuals, klines with futures limits, weight tiers by ``limit``, its own
budget with 429/418, and what venues share and do not share (bars, budgets, fault counts,
the request log)."""

from __future__ import annotations

import json

import aiohttp
import numpy as np
import pytest

from qmtl.runtime.sdk.clock import FakeClock
from qmtl.services.exchange_sim import (
    USED_WEIGHT_HEADER,
    generate_bars,
)
from tests.sim_http import T0, Start, http, start
from tests.sim_http import get as _get

FAPI_KLINES = "/fapi/v1/klines"

__all__ = ["http", "start"]  # the shared fixtures, used by name


async def test_ping_time_and_perpetuals_exchange_info(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(
        {"symbols": {"BTC/USDT": {}, "ETH/BTC": {}, "SOL/USDC": {"listing": T0 + 60}}}
    )
    assert (await _get(http, sim, "/fapi/v1/ping"))[:2] == (200, {})
    assert (await _get(http, sim, "/fapi/v1/time"))[:2] == (200, {"serverTime": T0 * 1000})
    status, info, headers = await _get(http, sim, "/fapi/v1/exchangeInfo")
    assert status == 200 and headers[USED_WEIGHT_HEADER] == "3"  # 1 + 1 + 1
    assert info["rateLimits"][0]["limit"] == 2400
    # the USDT/USDC symbols become perpetuals; ETH/BTC has none
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "SOLUSDC"]
    btc, sol = info["symbols"]
    assert (btc["contractType"], btc["marginAsset"], btc["status"]) == (
        "PERPETUAL",
        "USDT",
        "TRADING",
    )
    assert (sol["marginAsset"], sol["status"]) == ("USDC", "PENDING_TRADING")
    assert {a["asset"] for a in info["assets"]} == {"USDT", "USDC"}


async def test_klines_are_the_perpetuals_own_bars_up_to_1500(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"seed": 5})
    since = (T0 - 2 * 86_400) * 1000
    q = f"symbol=BTCUSDT&interval=1m&startTime={since}"
    status, rows, _ = await _get(http, sim, FAPI_KLINES, f"{q}&limit=1500")
    times = np.arange(1500, dtype=np.int64) * 60_000 + since
    assert status == 200 and rows == generate_bars(5, "BTC/USDT:USDT", 60, times).wire_rows()
    spot = (await _get(http, sim, "/api/v3/klines", f"{q}&limit=3"))[1]
    assert spot == generate_bars(5, "BTC/USDT", 60, times[:3]).wire_rows()
    assert spot != rows[:3]  # a perpetual is not its spot market
    assert len((await _get(http, sim, FAPI_KLINES, "symbol=BTCUSDT&interval=1m"))[1]) == 500
    for limit in ("0", "1501"):
        status, body, _ = await _get(http, sim, FAPI_KLINES, f"{q}&limit={limit}")
        assert (status, body["code"]) == (400, -1130)
    status, body, _ = await _get(http, sim, "/api/v3/klines", f"{q}&limit=1001")
    assert (status, body["code"]) == (400, -1130)  # spot stays at 1000
    status, body, _ = await _get(http, sim, FAPI_KLINES, "symbol=XRPUSDT&interval=1m")
    assert (status, body["code"]) == (400, -1121)


WEIGHT_TIERS: list[tuple[str | None, int]] = [
    ("1", 1),
    ("99", 1),
    ("100", 2),
    ("499", 2),
    ("500", 5),
    ("1000", 5),
    ("1001", 10),
    ("1500", 10),
    (None, 5),  # the default limit, 500
    ("abc", 5),  # refused after being charged as the default
    ("0", 1),
]


@pytest.mark.parametrize(("limit", "weight"), WEIGHT_TIERS)
async def test_klines_weight_tiers_by_limit(
    start: Start, http: aiohttp.ClientSession, limit: str | None, weight: int
) -> None:
    sim = await start(clock=FakeClock(T0 + 1.0))
    q = "symbol=ETHUSDT&interval=1m" + (f"&limit={limit}" if limit is not None else "")
    _, _, headers = await _get(http, sim, FAPI_KLINES, q)
    assert headers[USED_WEIGHT_HEADER] == str(weight)
    assert sim.request_log.requests[-1].weight == weight


async def test_futures_budget_429_418_apart_from_spot(
    start: Start, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock(T0 + 15.0)
    sim = await start(
        {"venues": {"binanceusdm": {"weight_limit_per_minute": 10, "ban_seconds": 90}}}, clock
    )
    q = "symbol=BTCUSDT&interval=1m&limit=500"  # weight 5
    assert [(await _get(http, sim, FAPI_KLINES, q))[0] for _ in range(2)] == [200, 200]
    for _ in range(3):
        status, body, headers = await _get(http, sim, FAPI_KLINES, q)
        assert (status, body["code"]) == (429, -1003) and "limit is 10 " in body["msg"]
        assert headers["Retry-After"] == "45" and headers[USED_WEIGHT_HEADER] == "10"
    status, _, headers = await _get(http, sim, "/fapi/v1/ping")
    assert (status, headers["Retry-After"]) == (418, "90")
    spot = await _get(http, sim, "/api/v3/ping")  # spot has its own budget: unaffected
    assert (spot[0], spot[2][USED_WEIGHT_HEADER]) == (200, "1")
    clock.advance(90)
    assert (await _get(http, sim, FAPI_KLINES, q))[0] == 200
    log = sim.request_log
    assert log.statuses(venue="binanceusdm") == {200: 3, 429: 3, 418: 1}
    assert log.statuses(venue="binance") == {200: 1}
    assert log.count(FAPI_KLINES, status=429, venue="binanceusdm") == 3
    assert [k.fault for k in log.klines if k.status == 429] == ["rate_limit"] * 3
    assert {(k.venue, k.path) for k in log.klines} == {("binanceusdm", FAPI_KLINES)}


async def test_a_perpetual_list_of_its_own(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(
        {
            "symbols": ["BTC/USDT"],
            "venues": {
                "binanceusdm": {
                    "symbols": {"DOGE/USDT:USDT": {"listing": T0 - 120}},
                    "history_depth_bars": 10,
                }
            },
        }
    )
    info = (await _get(http, sim, "/fapi/v1/exchangeInfo"))[1]
    assert [s["symbol"] for s in info["symbols"]] == ["DOGEUSDT"]
    q = f"symbol=DOGEUSDT&interval=1m&startTime={(T0 - 300) * 1000}"
    rows = (await _get(http, sim, FAPI_KLINES, q))[1]
    assert [r[0] // 1000 for r in rows] == [T0 - 120, T0 - 60, T0]  # from the listing
    hours = (await _get(http, sim, FAPI_KLINES, "symbol=DOGEUSDT&interval=1h&limit=50"))[1]
    assert len(hours) == 1  # listed two minutes ago: one hourly bar
    btc = await _get(http, sim, FAPI_KLINES, "symbol=BTCUSDT&interval=1m")
    assert btc[1]["code"] == -1121  # the venue's list replaces the top-level one


async def test_faults_count_per_venue_in_each_format(
    start: Start, http: aiohttp.ClientSession
) -> None:
    """One scenario fault, three venues: each suffers it ``requests`` times, in its own
    representation."""
    span = (T0 - 7200, T0 - 7140)
    sim = await start(
        {
            "symbols": {
                "BTC/USDT": {
                    "outages": [{"next_requests": 1, "status": 503}],
                    "malformed": [
                        {"start": span[0], "end": span[1], "kind": "truncated_json", "requests": 1}
                    ],
                }
            }
        }
    )
    binance_q = f"symbol=BTCUSDT&interval=1m&limit=5&startTime={(span[0] - 120) * 1000}"
    okx_q = f"instId=BTC-USDT&limit=5&after={(span[0] + 180) * 1000}"
    for path, query in (
        ("/api/v3/klines", binance_q),
        (FAPI_KLINES, binance_q),
        ("/api/v5/market/history-candles", okx_q),
    ):
        status, body, headers = await _get(http, sim, path, query)
        assert status == 503 and headers["Content-Type"].startswith("text/html"), path
        status, text, _ = await _get(http, sim, path, query)
        assert status == 200 and isinstance(text, str), path  # truncated: not JSON
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
        status, body, _ = await _get(http, sim, path, query)
        assert status == 200 and not isinstance(body, str), path
    by_venue: dict[str, list[str | None]] = {}
    for k in sim.request_log.klines:
        by_venue.setdefault(k.venue, []).append(k.fault)
    assert by_venue == {
        v: ["outage", "truncated_json", None] for v in ("binance", "binanceusdm", "okx")
    }


async def test_history_depth_on_binance_formats(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(
        {
            "symbols": {"BTC/USDT": {"history_depth_bars": 100}, "ETH/USDT": {}},
            "venues": {"binance": {"history_depth_bars": 20}},
        }
    )
    for path in ("/api/v3/klines", FAPI_KLINES):
        q = "symbol=BTCUSDT&interval=1m&limit=1000"
        newest = (await _get(http, sim, path, q))[1]
        assert len(newest) == 101 and newest[0][0] // 1000 == T0 - 100 * 60, path
        old_q = f"symbol=BTCUSDT&interval=1m&startTime={(T0 - 86_400) * 1000}&limit=500"
        old = (await _get(http, sim, path, old_q))[1]
        assert old == [], path  # asked wholly before the floor: nothing, no skipping ahead
        straddle = f"symbol=BTCUSDT&interval=1m&startTime={(T0 - 110 * 60) * 1000}&limit=20"
        rows = (await _get(http, sim, path, straddle))[1]
        assert [r[0] // 1000 for r in rows] == [T0 - (100 - k) * 60 for k in range(10)], path
        back = f"symbol=BTCUSDT&interval=1m&endTime={(T0 - 95 * 60) * 1000}&limit=20"
        rows = (await _get(http, sim, path, back))[1]
        assert len(rows) == 6 and rows[0][0] // 1000 == T0 - 100 * 60, path
    # the venue default applies to symbols without their own depth: spot ETH has 20 ...
    eth = (await _get(http, sim, "/api/v3/klines", "symbol=ETHUSDT&interval=1m&limit=1000"))[1]
    assert len(eth) == 21
    # ... but not to another venue's markets
    eth_perp = (await _get(http, sim, FAPI_KLINES, "symbol=ETHUSDT&interval=1m&limit=1000"))[1]
    assert len(eth_perp) == 1000
