"""The simulator over real sockets with a raw aiohttp client: wire format, errors, limits,
scenario faults, request log and the kline websocket."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime
from datetime import time as dt_time
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import pytest

from qmtl.cli.simulator_cmd import serve  # imported here: rich reads the cwd on import
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.node_id import TIMEFRAMES, alignment_origin
from qmtl.services.exchange_sim import (
    USED_WEIGHT_HEADER,
    Scenario,
    generate_bars,
)
from tests.sim_http import T0, Start, http, start
from tests.sim_http import get as _get

KLINES = "/api/v3/klines"

__all__ = ["http", "start"]  # the shared fixtures, used by name


async def test_ping_time_and_exchange_info(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start({"symbols": ["BTC/USDT", "ETH/BTC"]})
    assert (await _get(http, sim, "/api/v3/ping"))[:2] == (200, {})
    assert (await _get(http, sim, "/api/v3/time"))[:2] == (200, {"serverTime": T0 * 1000})
    status, info, _ = await _get(http, sim, "/api/v3/exchangeInfo")
    assert status == 200
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHBTC"]
    eth = info["symbols"][1]
    assert (eth["baseAsset"], eth["quoteAsset"], eth["status"]) == ("ETH", "BTC", "TRADING")
    assert {f["filterType"] for f in eth["filters"]} >= {"PRICE_FILTER", "LOT_SIZE"}
    one = await _get(http, sim, "/api/v3/exchangeInfo", "symbol=ETHBTC")
    assert [s["symbol"] for s in one[1]["symbols"]] == ["ETHBTC"]
    many = await _get(http, sim, "/api/v3/exchangeInfo", "symbols=" + quote('["BTCUSDT"]'))
    assert [s["symbol"] for s in many[1]["symbols"]] == ["BTCUSDT"]
    bad = await _get(http, sim, "/api/v3/exchangeInfo", "symbol=NOPE")
    assert bad[:2] == (400, {"code": -1121, "msg": "Invalid symbol."})
    both = await _get(http, sim, "/api/v3/exchangeInfo", "symbol=ETHBTC&symbols=x")
    assert both[1]["code"] == -1128
    garbage = await _get(http, sim, "/api/v3/exchangeInfo", "symbols=" + quote("[1,"))
    assert garbage[1]["code"] == -1100


async def test_klines_wire_format_matches_the_generator(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"seed": 5})
    since = (T0 - 86_400) * 1000
    status, rows, headers = await _get(
        http, sim, KLINES, f"symbol=ETHUSDT&interval=1m&startTime={since}&limit=1000"
    )
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    times = np.arange(1000, dtype=np.int64) * 60_000 + since
    assert rows == generate_bars(5, "ETH/USDT", 60, times).wire_rows()
    row = rows[0]
    assert len(row) == 12 and row[6] == row[0] + 59_999 and row[11] == "0"
    assert all(isinstance(row[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10))


@pytest.mark.parametrize("interval", ["1s", "1m", "5m", "1h", "1d", "1w"])
async def test_every_interval_is_served_aligned(
    start: Start, http: aiohttp.ClientSession, interval: str
) -> None:
    sim = await start()
    status, rows, _ = await _get(http, sim, KLINES, f"symbol=BTCUSDT&interval={interval}&limit=3")
    assert status == 200 and len(rows) == 3
    step = rows[1][0] - rows[0][0]
    assert step == TIMEFRAMES[interval] * 1000
    origin_ms = alignment_origin(TIMEFRAMES[interval]) * 1000
    assert all((r[0] - origin_ms) % step == 0 for r in rows)


async def test_weekly_bars_open_on_monday_midnight_utc(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"seed": 6})
    newest = await _get(http, sim, KLINES, "symbol=BTCUSDT&interval=1w&limit=5")
    since = await _get(
        http, sim, KLINES, f"symbol=BTCUSDT&interval=1w&startTime={(T0 - 40 * 86_400) * 1000}"
    )
    for status, rows, _ in (newest, since):
        assert status == 200 and rows
        for row in rows:
            opened = datetime.fromtimestamp(row[0] / 1000, tz=UTC)
            assert (opened.weekday(), opened.time()) == (0, dt_time(0, 0))
            assert row[6] == row[0] + 7 * 86_400_000 - 1
    # the newest bar is the one containing "now" (T0 is Tuesday 2023-11-14)
    assert newest[1][-1][0] == 1_699_833_600_000  # Monday 2023-11-13
    # startTime rounds up to the next Monday; endTime down to the Monday at or before it
    assert since[1][0][0] == 1_696_809_600_000  # Monday 2023-10-09
    monday_ms = since[1][0][0]
    _, exact, _ = await _get(
        http, sim, KLINES, f"symbol=BTCUSDT&interval=1w&startTime={monday_ms}&endTime={monday_ms}"
    )
    _, inside, _ = await _get(
        http,
        sim,
        KLINES,
        f"symbol=BTCUSDT&interval=1w&endTime={monday_ms + 6 * 86_400_000}&limit=1",
    )
    assert [r[0] for r in exact] == [r[0] for r in inside] == [monday_ms]
    closed = np.array([r[0] for r in since[1][:-1]], np.int64)  # the last one is forming
    assert since[1][-1][0] == newest[1][-1][0]
    assert since[1][:-1] == generate_bars(6, "BTC/USDT", 604_800, closed).wire_rows()


async def test_concurrent_distinct_pages_are_each_served_exactly(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"seed": 12, "weight_limit_per_minute": 10_000})
    starts = [(T0 - 86_400 * k) * 1000 for k in range(1, 13)]
    answers = await asyncio.gather(
        *(
            _get(http, sim, KLINES, f"symbol=BTCUSDT&interval=1m&startTime={s}&limit=1000")
            for s in starts
        )
    )
    for since, (status, rows, _) in zip(starts, answers, strict=True):
        times = np.arange(1000, dtype=np.int64) * 60_000 + since
        assert status == 200 and rows == generate_bars(12, "BTC/USDT", 60, times).wire_rows()
    assert sim.request_log.count(KLINES, status=200) == 12


async def test_klines_paging_semantics(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start()
    q = "symbol=BTCUSDT&interval=1m"
    rows = (await _get(http, sim, KLINES, f"{q}&startTime={(T0 - 600) * 1000 + 1}&limit=2"))[1]
    assert [r[0] // 1000 for r in rows] == [T0 - 540, T0 - 480]  # open >= startTime
    end = (T0 - 600) * 1000
    rows = (await _get(http, sim, KLINES, f"{q}&startTime={end - 120_000}&endTime={end}"))[1]
    assert [r[0] for r in rows] == [end - 120_000, end - 60_000, end]  # endTime inclusive
    rows = (await _get(http, sim, KLINES, f"{q}&endTime={end}&limit=2"))[1]
    assert [r[0] for r in rows] == [end - 60_000, end]  # newest first-cut, oldest first
    default = (await _get(http, sim, KLINES, q))[1]
    assert len(default) == 500 and default[-1][0] == T0 * 1000  # up to the forming bar
    future = (await _get(http, sim, KLINES, f"{q}&startTime={(T0 + 600) * 1000}"))[1]
    assert future == []


HOSTILE: list[tuple[str, int]] = [
    ("interval=1m", -1102),
    ("symbol=&interval=1m", -1102),
    ("symbol=BTCUSDT", -1102),
    ("symbol=BTCUSDT&interval=2m", -1120),
    ("symbol=BTCUSDT&interval=3d", -1120),
    ("symbol=BTCUSDT&interval=1M", -1120),
    ("symbol=btcusdt&interval=1m", -1100),
    ("symbol=NOPEUSDT&interval=1m", -1121),
    ("symbol=BTC%00USDT&interval=1m", -1100),
    ("symbol=%E2%82%BFUSDT&interval=1m", -1100),
    ("symbol=BTCUSDT%FF&interval=1m", -1100),
    ("symbol=BTCUSDT&interval=1m&startTime=abc", -1100),
    ("symbol=BTCUSDT&interval=1m&startTime=-5", -1100),
    ("symbol=BTCUSDT&interval=1m&startTime=1.5", -1100),
    ("symbol=BTCUSDT&interval=1m&startTime=", -1100),
    ("symbol=BTCUSDT&interval=1m&endTime=99999999999999999999", -1130),
    ("symbol=BTCUSDT&interval=1m&endTime=999999999999999999999", -1100),
    ("symbol=BTCUSDT&interval=1m&limit=0", -1130),
    ("symbol=BTCUSDT&interval=1m&limit=1001", -1130),
    ("symbol=BTCUSDT&interval=1m&limit=10000000000", -1130),
    ("symbol=BTCUSDT&interval=1m&startTime=20&endTime=10", -1023),
    ("symbol=BTCUSDT&symbol=ETHUSDT&interval=1m", -1101),
    ("symbol=BTCUSDT&interval=1m&foo=bar", -1104),
    ("symbol=BTCUSDT&interval=1m&limit=" + "9" * 3000, -1100),
    ("symbol=BTCUSDT&interval=1m&x=" + "A" * 5000, -1101),
]


@pytest.mark.parametrize(("query", "code"), HOSTILE)
async def test_bad_parameters_get_binance_errors(
    start: Start, http: aiohttp.ClientSession, query: str, code: int
) -> None:
    sim = await start()
    status, body, _ = await _get(http, sim, KLINES, query)
    assert status == 400
    assert body["code"] == code and isinstance(body["msg"], str)


async def test_random_garbage_never_causes_a_500(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start({"weight_limit_per_minute": 10**6})
    rng = random.Random(1234)
    alphabet = "abcXYZ019-_.=&%?/#+ \x00\x7f\u00e9\u20bf\U0001f600"
    keys = ["symbol", "interval", "startTime", "endTime", "limit", "symbols", "zz"]
    for _ in range(150):
        parts = []
        for _ in range(rng.randint(0, 6)):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            parts.append(f"{rng.choice(keys)}={quote(value, safe='')}")
        raw = "&".join(parts)
        for path in (KLINES, "/api/v3/exchangeInfo", "/api/v3/ping"):
            status, body, _ = await _get(http, sim, path, raw)
            assert status < 500, (path, raw, body)
    huge = await _get(http, sim, KLINES, "symbol=" + "A" * 100_000)
    assert 400 <= huge[0] < 500
    assert sim.request_log.count(status=500) == 0


async def test_unknown_paths_are_404_json(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start()
    for path in ("/api/v3/nope", "/fapi/v1/nope", "/dapi/v1/klines", "/", "/api/v3/klines/../x"):
        status, body, _ = await _get(http, sim, path)
        assert status == 404 and body["code"] == -1000
    status, body, _ = await _get(http, sim, "/api/v5/market/nope")  # OKX's envelope
    assert status == 404 and body["code"] == "50000" and body["data"] == []
    async with http.post(f"{sim.base_url}{KLINES}") as resp:
        assert resp.status == 404 and (await resp.json())["code"] == -1000


async def test_used_weight_header_counts_per_fixed_minute(
    start: Start, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock(T0 + 10.0)
    sim = await start(clock=clock)
    used = []
    for path, query in [
        ("/api/v3/ping", ""),
        ("/api/v3/time", ""),
        ("/api/v3/exchangeInfo", ""),
        (KLINES, "symbol=BTCUSDT&interval=1m&limit=1"),
        (KLINES, "symbol=NOPE&interval=1m"),  # refused requests still weigh
    ]:
        used.append(int((await _get(http, sim, path, query))[2][USED_WEIGHT_HEADER]))
    assert used == [1, 2, 22, 24, 26]
    clock.advance(50)  # T0 + 60: a new minute
    assert (await _get(http, sim, "/api/v3/ping"))[2][USED_WEIGHT_HEADER] == "1"


async def test_429_then_418_with_retry_after_and_recovery(
    start: Start, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock(T0 + 15.0)
    sim = await start({"weight_limit_per_minute": 4, "ban_seconds": 90}, clock)
    q = "symbol=BTCUSDT&interval=1m&limit=1"
    assert [(await _get(http, sim, KLINES, q))[0] for _ in range(2)] == [200, 200]
    for _ in range(3):
        status, body, headers = await _get(http, sim, KLINES, q)
        assert (status, body["code"]) == (429, -1003)
        assert headers["Retry-After"] == "45" and headers[USED_WEIGHT_HEADER] == "4"
    status, body, headers = await _get(http, sim, "/api/v3/ping")
    assert (status, headers["Retry-After"]) == (418, "90")
    assert "banned until" in body["msg"]
    clock.advance(60)  # a new minute does not lift the ban
    assert (await _get(http, sim, "/api/v3/time"))[2]["Retry-After"] == "30"
    clock.advance(30)
    assert (await _get(http, sim, KLINES, q))[0] == 200
    log = sim.request_log
    assert log.statuses() == {200: 3, 429: 3, 418: 2}
    assert sum(r.weight for r in log.requests) == 6  # rejections consumed nothing
    assert [k.status for k in log.klines] == [200, 200, 429, 429, 429, 200]


async def test_listing_and_halts_are_known_empty(start: Start, http: aiohttp.ClientSession) -> None:
    listing = T0 - 3 * 3600 + 30  # inside a minute
    halt = (T0 - 3600, T0 - 1800)
    sim = await start({"symbols": {"BTC/USDT": {"listing": listing, "halts": [list(halt)]}}})
    q = "symbol=BTCUSDT&interval=1m"
    rows = (await _get(http, sim, KLINES, f"{q}&startTime=0&limit=3"))[1]
    assert rows[0][0] // 1000 == listing - 30  # the bar containing the listing
    rows = (await _get(http, sim, KLINES, f"{q}&startTime={(halt[0] - 120) * 1000}&limit=4"))[1]
    assert [r[0] // 1000 for r in rows] == [halt[0] - 120, halt[0] - 60, halt[1], halt[1] + 60]
    inside = f"{q}&startTime={halt[0] * 1000}&endTime={(halt[1] - 60) * 1000}"
    assert (await _get(http, sim, KLINES, inside))[1] == []
    hours = (await _get(http, sim, KLINES, "symbol=BTCUSDT&interval=1h&startTime=0&limit=5"))[1]
    assert hours[0][0] // 1000 == T0 // 3600 * 3600 - 3 * 3600  # the 1h bar holding the listing


async def test_outages_by_count_and_by_wall_time(start: Start, http: aiohttp.ClientSession) -> None:
    clock = FakeClock(T0 + 0.0)
    sim = await start(
        {
            "symbols": {
                "BTC/USDT": {
                    "outages": [
                        {"next_requests": 2, "status": 502},
                        {"start": T0 + 100, "end": T0 + 200, "status": 503, "body": "json"},
                    ]
                },
                "ETH/USDT": {},
            }
        },
        clock,
    )
    q = "symbol=BTCUSDT&interval=1m&limit=2"
    first, second, third = [await _get(http, sim, KLINES, q) for _ in range(3)]
    assert first[0] == second[0] == 502 and "Bad Gateway" in first[1]
    assert third[0] == 200
    assert (await _get(http, sim, KLINES, "symbol=ETHUSDT&interval=1m"))[0] == 200
    clock.advance(150)
    status, body, _ = await _get(http, sim, KLINES, q)
    assert (status, body["code"]) == (503, -1001)
    assert (await _get(http, sim, "/api/v3/ping"))[0] == 200  # only klines are out
    clock.advance(50)
    assert (await _get(http, sim, KLINES, q))[0] == 200
    assert [k.fault for k in sim.request_log.klines if k.status >= 500] == ["outage"] * 3


async def test_malformed_pages(start: Start, http: aiohttp.ClientSession) -> None:
    w = [(T0 - h * 3600, T0 - h * 3600 + 600) for h in (5, 4, 3)]
    sim = await start(
        {
            "symbols": {
                "BTC/USDT": {
                    "malformed": [
                        {"start": w[0][0], "end": w[0][1], "kind": "truncated_json", "requests": 1},
                        {"start": w[1][0], "end": w[1][1], "kind": "wrong_types"},
                        {"start": w[2][0], "end": w[2][1], "kind": "nan_strings"},
                    ]
                }
            }
        }
    )

    def q(start_s: int) -> str:
        return f"symbol=BTCUSDT&interval=1m&startTime={(start_s - 120) * 1000}&limit=5"

    status, text, _ = await _get(http, sim, KLINES, q(w[0][0]))
    assert status == 200 and isinstance(text, str)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert isinstance((await _get(http, sim, KLINES, q(w[0][0])))[1], list)  # only once
    rows = (await _get(http, sim, KLINES, q(w[1][0])))[1]
    assert isinstance(rows[0], list) and isinstance(rows[2], dict) and rows[3][1][0]
    rows = (await _get(http, sim, KLINES, q(w[2][0])))[1]
    assert rows[1][1] != "NaN" and rows[2][1:5] == ["NaN"] * 4
    faults = [k.fault for k in sim.request_log.klines]
    assert faults == ["truncated_json", None, "wrong_types", "nan_strings"]


async def test_short_pages_and_duplicates(start: Start, http: aiohttp.ClientSession) -> None:
    short = (T0 - 7200, T0 - 7000)
    dup = (T0 - 3600, T0 - 3500)
    sim = await start(
        {
            "symbols": {
                "BTC/USDT": {
                    "short_pages": [{"start": short[0], "end": short[1], "requests": 1}],
                    "duplicates": [{"start": dup[0], "end": dup[1]}],
                }
            }
        }
    )
    q = "symbol=BTCUSDT&interval=1m&limit=10&startTime="
    page = (await _get(http, sim, KLINES, q + str((short[0] - 60) * 1000)))[1]
    assert len(page) == 9
    assert len((await _get(http, sim, KLINES, q + str((short[0] - 60) * 1000)))[1]) == 10
    page = (await _get(http, sim, KLINES, q + str((dup[0] - 60) * 1000)))[1]
    opens = [r[0] // 1000 for r in page]
    assert len(page) == 10 and opens[1] == opens[2] == dup[0]
    assert opens[-1] == dup[0] + 7 * 60  # the page still holds `limit` rows


async def test_empty_pages_answer_an_empty_list_then_recover(
    start: Start, http: aiohttp.ClientSession
) -> None:
    span = (T0 - 7200, T0 - 7140)  # exactly one bar
    sim = await start(
        {
            "symbols": {
                "BTC/USDT": {
                    "empty_pages": [{"start": span[0], "end": span[1], "requests": 2}],
                    "outages": [{"next_requests": 1, "status": 503}],
                }
            }
        }
    )
    q = "symbol=BTCUSDT&interval=1m&limit=10&startTime="
    asking = q + str((span[0] - 9 * 60) * 1000)  # the span is the 10th slot asked
    assert (await _get(http, sim, KLINES, asking))[0] == 503  # an outage answers first...
    for _ in range(2):  # ...and leaves the empty-page count alone
        status, body, headers = await _get(http, sim, KLINES, asking)
        assert (status, body) == (200, [])
        assert headers["Content-Type"].startswith("application/json")
    # a window asked before the span is served whole, the span's own bar too once recovered
    before = (await _get(http, sim, KLINES, q + str((span[0] - 10 * 60) * 1000)))[1]
    assert [r[0] // 1000 for r in before] == list(range(span[0] - 600, span[0], 60))
    page = (await _get(http, sim, KLINES, asking))[1]
    times = np.arange(10, dtype=np.int64) * 60_000 + (span[0] - 540) * 1000
    assert page == generate_bars(0, "BTC/USDT", 60, times).wire_rows()
    records = [(k.status, k.rows, k.fault) for k in sim.request_log.klines]
    assert records == [
        (503, 0, "outage"),
        (200, 0, "empty_page"),
        (200, 0, "empty_page"),
        (200, 10, None),
        (200, 10, None),
    ]


async def test_empty_pages_hit_requests_by_window_asked_not_bars_served(
    start: Start, http: aiohttp.ClientSession
) -> None:
    listing = T0 - 3600
    sim = await start(
        {
            "symbols": {
                "BTC/USDT": {
                    "listing": listing,  # the span lies before it: no bars there
                    "empty_pages": [{"start": listing - 120, "end": listing - 60}],
                }
            }
        }
    )
    q = "symbol=BTCUSDT&interval=1m&limit=5"
    # without the fault this page would start later than asked, at the listing
    asks_span = f"{q}&startTime={(listing - 180) * 1000}"
    assert (await _get(http, sim, KLINES, asks_span))[1] == []
    assert (await _get(http, sim, KLINES, asks_span))[1] == []  # no `requests`: always
    after = (await _get(http, sim, KLINES, f"{q}&startTime={(listing - 60) * 1000}"))[1]
    assert after[0][0] == listing * 1000
    backward = (await _get(http, sim, KLINES, f"{q}&endTime={(listing - 1) * 1000}"))[1]
    assert backward == []  # five slots back from endTime reach into the span
    faults = [k.fault for k in sim.request_log.klines]
    assert faults == ["empty_page", "empty_page", None, "empty_page"]


async def test_forming_bar_changes_until_it_closes(
    start: Start, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock(T0 + 5.0)
    sim = await start({"seed": 3}, clock)
    q = f"symbol=BTCUSDT&interval=1m&startTime={T0 * 1000}"
    seen = []
    for _ in range(4):
        rows = (await _get(http, sim, KLINES, q))[1]
        assert len(rows) == 1 and rows[0][6] == T0 * 1000 + 59_999 > clock.now() * 1000
        seen.append(rows[0])
        clock.advance(13)
    assert len({r[4] for r in seen}) > 1  # close moves
    assert [float(r[5]) for r in seen] == sorted(float(r[5]) for r in seen)
    clock.advance(60)
    final = (await _get(http, sim, KLINES, q + "&limit=1"))[1]
    expected = generate_bars(3, "BTC/USDT", 60, np.array([T0 * 1000], np.int64)).wire_rows()
    assert final == expected


async def test_pinned_now_and_latency(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(
        {"now": (T0 + 30) * 1000, "latency_ms": 40, "symbols": {"BTC/USDT": {"latency_ms": 60}}}
    )
    began = time.perf_counter()
    assert (await _get(http, sim, "/api/v3/time"))[1] == {"serverTime": (T0 + 30) * 1000}
    assert time.perf_counter() - began >= 0.04
    began = time.perf_counter()
    await _get(http, sim, KLINES, "symbol=BTCUSDT&interval=1m&limit=1")
    assert time.perf_counter() - began >= 0.1


async def test_request_log_debug_routes_and_scenario_swap(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start()
    q = f"symbol=BTCUSDT&interval=1m&startTime={(T0 - 6000) * 1000}&limit=100"
    for _ in range(2):
        await _get(http, sim, KLINES, q)
    await _get(http, sim, KLINES, "symbol=ETHUSDT&interval=5m&limit=3")
    log = sim.request_log
    assert log.klines_count("BTCUSDT", "1m", start_time=(T0 - 6000) * 1000, limit=100) == 2
    assert log.klines_count("ETHUSDT", "5m") == 1
    window = ((T0 - 6000) * 1000, (T0 - 6000 + 99 * 60) * 1000)
    assert log.served_windows("BTCUSDT", "1m") == [window, window]
    assert log.klines_by_params()[("ETHUSDT", "5m", None, None, 3)] == 1
    status, debug, _ = await _get(http, sim, "/_sim/requests")
    assert status == 200 and debug["by_path"] == {KLINES: 3} and debug["statuses"] == {"200": 3}
    async with http.post(f"{sim.base_url}/_sim/reset") as resp:
        assert resp.status == 200
    assert log.count() == 0
    sim.set_scenario(Scenario.from_dict({"symbols": ["SOL/USDT"]}))
    assert (await _get(http, sim, KLINES, "symbol=BTCUSDT&interval=1m"))[1]["code"] == -1121
    assert (await _get(http, sim, KLINES, "symbol=SOLUSDT&interval=1m&limit=1"))[0] == 200


async def _ws_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    message = await asyncio.wait_for(ws.receive(), 5)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return json.loads(message.data)


async def test_websocket_subscribe_push_close_and_unsubscribe(
    start: Start, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock(T0 + 50.0)
    sim = await start({"ws_push_interval_ms": 20, "seed": 9}, clock)
    async with http.ws_connect(f"{sim.ws_url}/stream/ws/0") as ws:
        await ws.send_str("not json")
        assert (await _ws_json(ws))["error"]["code"] == 3
        await ws.send_json({"method": "SUBSCRIBE", "params": ["nopeusdt@kline_1m"], "id": 7})
        assert (await _ws_json(ws))["error"]["code"] == 2
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 1})
        assert await _ws_json(ws) == {"result": None, "id": 1}
        event = await _ws_json(ws)
        assert event["e"] == "kline" and event["s"] == "BTCUSDT"
        k = event["k"]
        assert (k["t"], k["T"], k["i"], k["x"]) == (T0 * 1000, T0 * 1000 + 59_999, "1m", False)
        clock.advance(15)  # crosses into the next minute
        closed = await _ws_json(ws)
        while closed["k"]["t"] != T0 * 1000 or not closed["k"]["x"]:
            closed = await _ws_json(ws)
        final = generate_bars(9, "BTC/USDT", 60, np.array([T0 * 1000], np.int64)).wire_rows()[0]
        assert [closed["k"][f] for f in "ohlcv"] == final[1:6]
        following = await _ws_json(ws)
        assert (following["k"]["t"], following["k"]["x"]) == ((T0 + 60) * 1000, False)
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 2})
        reply = await _ws_json(ws)
        while "result" not in reply:
            reply = await _ws_json(ws)
        assert reply == {"result": ["btcusdt@kline_1m"], "id": 2}
        await ws.send_json({"method": "UNSUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 3})
        reply = await _ws_json(ws)
        while "result" not in reply:
            reply = await _ws_json(ws)
        assert reply == {"result": None, "id": 3}
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.2)


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /api/v3/klines?symbol=\xff\xfe&interval=1m HTTP/1.1",
        b"GET /api/v3/klines?symbol=BTC\x01USDT&interval=1m HTTP/1.1",
        b"GET /api/v3/klines?symbol=%&interval=%zz HTTP/1.1",
        b"GET /api/v3/%00 HTTP/1.1",
    ],
)
async def test_raw_bytes_on_the_wire_never_cause_a_500(start: Start, request_line: bytes) -> None:
    sim = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    try:
        writer.write(request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(status_line.split()[1])
    assert 400 <= status < 500, status_line


async def test_cli_serve_prints_urls_and_stops(capsys: pytest.CaptureFixture[str]) -> None:
    started, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(Scenario(), host="127.0.0.1", port=0, started=started, stop=stop)
    )
    await asyncio.wait_for(started.wait(), 5)
    out = capsys.readouterr().out
    rest = next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("rest:"))
    assert "ws: ws://127.0.0.1:" in out and out.rstrip().endswith("BTC/USDT, ETH/USDT")
    async with aiohttp.ClientSession() as http, http.get(f"{rest}/api/v3/ping") as resp:
        assert resp.status == 200
    stop.set()
    await asyncio.wait_for(task, 5)


def test_cli_arguments_and_errors(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from qmtl.cli.main import build_parser, main

    args = build_parser().parse_args(["simulator", "serve"])
    assert (args.host, args.port, args.scenario) == ("127.0.0.1", 8080, None)
    assert main(["simulator", "serve", "--scenario", str(tmp_path / "missing.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("sed: 1\n")
    assert main(["simulator", "serve", "--scenario", str(bad)]) == 2
    assert main(["simulator", "serve", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "sed: unknown key" in err and "--port" in err
    assert main(["simulator"]) == 2
