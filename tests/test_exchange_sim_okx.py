"""The simulator's OKX v5 wire format over real sockets (raw aiohttp client): the envelope,
instruments, candles and history-candles paging, limits, errors and scenario faults in OKX's
representation. The real ccxt ``okx`` client against it is in
``test_exchange_sim_venues_ccxt.py``."""

from __future__ import annotations

import json

import aiohttp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.sdk.clock import FakeClock
from qmtl.services.exchange_sim import SimulatorServer, forming_bar, generate_bars
from qmtl.services.exchange_sim.bars import E8, Bars
from tests.sim_http import T0, Start, http, start
from tests.sim_http import get as _get

CANDLES = "/api/v5/market/candles"
HISTORY = "/api/v5/market/history-candles"

__all__ = ["http", "start"]  # the shared fixtures, used by name


def _parsed(rows: list[list[str]]) -> list[tuple[int, float, float, float, float, float, str]]:
    """Wire rows as ``(ts, o, h, l, c, vol, confirm)``."""
    return [(int(r[0]), *(float(v) for v in r[1:6]), r[8]) for r in rows]  # type: ignore[misc]


def _expected(bars: Bars, now_ms: int) -> list[tuple[int, float, float, float, float, float, str]]:
    """What the wire rows of ``bars`` (ascending) must parse to: newest first."""
    values = bars.ohlcv().tolist()
    confirm = ["1" if t + bars.interval_ms <= now_ms else "0" for t in bars.open_time.tolist()]
    return [(int(v[0]), *v[1:], c) for v, c in zip(values, confirm, strict=True)][::-1]


def _minutes(seed: int, first_s: int, n: int, symbol: str = "BTC/USDT") -> Bars:
    times = np.arange(n, dtype=np.int64) * 60_000 + first_s * 1000
    return generate_bars(seed, symbol, 60, times)


async def test_time_and_spot_instruments(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start(
        {
            "symbols": {
                "BTC/USDT": {},
                "ETH/BTC": {"listing": T0 + 3600},
                "SOL/USDT": {"halts": [[T0 - 60, T0 + 60]]},
            }
        }
    )
    status, body, headers = await _get(http, sim, "/api/v5/public/time")
    assert (status, body) == (200, {"code": "0", "msg": "", "data": [{"ts": str(T0 * 1000)}]})
    assert "X-MBX-USED-WEIGHT-1m" not in headers and "Retry-After" not in headers
    status, body, _ = await _get(http, sim, "/api/v5/public/instruments", "instType=SPOT")
    assert status == 200 and body["code"] == "0"
    insts = body["data"]
    assert [i["instId"] for i in insts] == ["BTC-USDT", "ETH-BTC", "SOL-USDT"]
    assert [i["state"] for i in insts] == ["live", "preopen", "suspend"]
    eth = insts[1]
    assert (eth["instType"], eth["baseCcy"], eth["quoteCcy"]) == ("SPOT", "ETH", "BTC")
    assert eth["listTime"] == str((T0 + 3600) * 1000) and float(eth["tickSz"]) > 0
    one = await _get(http, sim, "/api/v5/public/instruments", "instType=SPOT&instId=ETH-BTC")
    assert [i["instId"] for i in one[1]["data"]] == ["ETH-BTC"]
    assert (await _get(http, sim, "/api/v5/public/instruments", "instType=SWAP"))[1]["data"] == []
    missing = await _get(http, sim, "/api/v5/public/instruments")
    assert missing[:2] == (
        400,
        {"code": "50014", "msg": "Parameter instType can not be empty", "data": []},
    )
    bad = await _get(http, sim, "/api/v5/public/instruments", "instType=NOPE")
    assert (bad[0], bad[1]["code"]) == (400, "51000")
    unknown = await _get(http, sim, "/api/v5/public/instruments", "instType=SPOT&instId=X-Y")
    assert (unknown[0], unknown[1]["code"]) == (200, "51001")


async def test_candles_rows_are_newest_first_strings_with_confirm(
    start: Start, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock(T0 + 25.0)  # the bar opening at T0 is forming
    sim = await start({"seed": 4}, clock)
    status, body, headers = await _get(http, sim, CANDLES, "instId=BTC-USDT&bar=1m&limit=5")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert (body["code"], body["msg"]) == ("0", "")
    rows = body["data"]
    assert len(rows) == 5 and all(len(r) == 9 and all(isinstance(v, str) for v in r) for r in rows)
    assert [r[8] for r in rows] == ["0", "1", "1", "1", "1"]  # only the newest is forming
    closed = _minutes(4, T0 - 240, 4)
    assert _parsed(rows[1:]) == _expected(closed, T0 * 1000 + 25_000)
    live = forming_bar(4, "BTC/USDT", 60, T0 * 1000, T0 * 1000 + 25_000)
    assert _parsed(rows[:1]) == _expected(live, T0 * 1000 + 25_000)
    # volCcy and volCcyQuote are the quote volume (spot); no trailing zeros on the wire
    assert rows[1][6] == rows[1][7] and float(rows[1][6]) == closed.quote_volume[-1] / E8
    assert not any(v.endswith("0") and "." in v for r in rows for v in r[1:8])


async def test_after_before_limit_semantics(start: Start, http: aiohttp.ClientSession) -> None:
    sim = await start({"seed": 8})
    q = "instId=ETH-USDT&bar=1m"

    async def opens(query: str, path: str = HISTORY) -> list[int]:
        status, body, _ = await _get(http, sim, path, f"{q}&{query}")
        assert status == 200 and body["code"] == "0", body
        return [int(r[0]) // 1000 for r in body["data"]]

    t = T0 - 3600
    assert await opens(f"after={t * 1000}&limit=3") == [t - 60, t - 120, t - 180]  # < after
    assert await opens(f"after={t * 1000 + 1}&limit=2") == [t, t - 60]
    assert await opens(f"before={(T0 - 180) * 1000}") == [T0, T0 - 60, T0 - 120]  # newest, > before
    window = await opens(f"before={(t - 1) * 1000}&after={(t + 300) * 1000}&limit=100")
    assert window == [t + 240, t + 180, t + 120, t + 60, t]  # the bars strictly between
    assert len(await opens("")) == 100  # default limit
    assert len(await opens("limit=1000")) == 100  # history-candles clamps to 100
    assert len(await opens("limit=1000", CANDLES)) == 300  # candles to 300
    rows = await opens(f"after={(T0 - 600) * 1000}&limit=300")  # ccxt's page: the newest 100
    assert rows[0] == T0 - 660 and rows[-1] == T0 - 660 - 99 * 60
    assert await opens(f"before={T0 * 1000}") == []  # nothing newer than the forming bar


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("bar=1m", 400, "50014"),
        ("instId=&bar=1m", 400, "50014"),
        ("instId=NOPE-USDT", 200, "51001"),
        ("instId=btc-usdt", 200, "51001"),
        ("instId=BTCUSDT", 200, "51001"),
        ("instId=BTC-USDT&bar=1h", 400, "51000"),  # OKX spells it 1H
        ("instId=BTC-USDT&bar=2m", 400, "51000"),
        ("instId=BTC-USDT&limit=0", 400, "51000"),
        ("instId=BTC-USDT&limit=-1", 400, "51000"),
        ("instId=BTC-USDT&limit=abc", 400, "51000"),
        ("instId=BTC-USDT&after=1.5", 400, "51000"),
        ("instId=BTC-USDT&before=%E2%82%BF", 400, "51000"),
        ("instId=BTC-USDT&after=" + "9" * 40, 400, "51000"),
        ("instId=BTC-USDT&x=" + "A" * 5000, 400, "51000"),
    ],
)
async def test_bad_parameters_get_okx_errors_in_the_envelope(
    start: Start, http: aiohttp.ClientSession, query: str, status: int, code: str
) -> None:
    sim = await start()
    for path in (CANDLES, HISTORY):
        got_status, body, _ = await _get(http, sim, path, query)
        assert (got_status, body["code"], body["data"]) == (status, code, [])
        assert isinstance(body["msg"], str) and body["msg"]
    assert sim.request_log.count(status=500) == 0
    assert [k.fault for k in sim.request_log.klines] == [f"code {code}"] * 2


async def test_unknown_parameters_are_ignored_as_okx_does(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start()
    status, body, _ = await _get(http, sim, CANDLES, "instId=BTC-USDT&limit=2&foo=bar")
    assert status == 200 and len(body["data"]) == 2


async def test_candles_serve_only_the_recent_1440_bars(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"venues": {"okx": {"recent_candles": 1440}}})
    q = "instId=BTC-USDT&bar=1m&limit=300"
    oldest = T0 - 1439 * 60  # the forming bar is the 1440th
    edge = f"{q}&after={(oldest + 120) * 1000}"
    rows = (await _get(http, sim, CANDLES, edge))[1]["data"]
    assert [int(r[0]) // 1000 for r in rows] == [oldest + 60, oldest]
    older = f"{q}&after={oldest * 1000}"
    assert (await _get(http, sim, CANDLES, older))[1] == {"code": "0", "msg": "", "data": []}
    assert len((await _get(http, sim, HISTORY, older))[1]["data"]) == 100  # history has them
    hours = (await _get(http, sim, CANDLES, f"instId=BTC-USDT&bar=1H&after={oldest * 1000}"))[1]
    assert len(hours["data"]) == 100  # 1440 recent bars of *that* bar size


@pytest.mark.parametrize(
    ("bar", "newest"),
    [
        ("1H", 1_699_999_200),  # 22:00Z
        ("6H", 1_699_999_200),  # Hong Kong: 06:00 HKT = 22:00Z
        ("6Hutc", 1_699_984_800),  # 18:00Z
        ("12H", 1_699_977_600),  # 00:00 HKT = 16:00Z
        ("1D", 1_699_977_600),  # 2023-11-15 00:00 HKT
        ("1Dutc", 1_699_920_000),  # 2023-11-14 00:00Z
        ("1W", 1_699_804_800),  # Monday 00:00 HKT = Sunday 16:00Z
        ("1Wutc", 1_699_833_600),  # Monday 2023-11-13 00:00Z
        ("1s", T0),
    ],
)
async def test_bar_alignment_utc_and_hong_kong(
    start: Start, http: aiohttp.ClientSession, bar: str, newest: int
) -> None:
    sim = await start({"seed": 2})
    status, body, _ = await _get(http, sim, HISTORY, f"instId=BTC-USDT&bar={bar}&limit=3")
    assert status == 200, body
    opens = [int(r[0]) // 1000 for r in body["data"]]
    step = opens[0] - opens[1]
    assert opens[0] == newest and opens == [newest, newest - step, newest - 2 * step]
    assert [r[8] for r in body["data"]] == ["0", "1", "1"]


async def test_hong_kong_bars_keep_listing_and_halts_in_real_time(
    start: Start, http: aiohttp.ClientSession
) -> None:
    day = 86_400
    listing = 1_699_977_600 - 10 * day + 3600  # 01:00 HKT: inside that HK day
    sim = await start({"symbols": {"BTC/USDT": {"listing": listing}}})
    rows = (await _get(http, sim, HISTORY, "instId=BTC-USDT&bar=1D&limit=100"))[1]["data"]
    assert int(rows[-1][0]) // 1000 == listing - 3600  # the HK day containing the listing
    utc = (await _get(http, sim, HISTORY, "instId=BTC-USDT&bar=1Dutc&limit=100"))[1]["data"]
    assert int(utc[-1][0]) // 1000 == (listing // day) * day


async def test_rate_limits_per_endpoint_answer_50011(
    start: Start, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock(T0 + 0.5)
    sim = await start({"venues": {"okx": {"rate_limits": {"candles": 3, "time": 2}}}}, clock)
    q = "instId=BTC-USDT&limit=1"
    assert [(await _get(http, sim, CANDLES, q))[0] for _ in range(3)] == [200] * 3
    status, body, headers = await _get(http, sim, CANDLES, q)
    assert (status, body) == (429, {"code": "50011", "msg": "Too Many Requests", "data": []})
    assert "Retry-After" not in headers and "X-MBX-USED-WEIGHT-1m" not in headers
    assert (await _get(http, sim, HISTORY, q))[0] == 200  # another endpoint, another count
    assert [(await _get(http, sim, "/api/v5/public/time"))[0] for _ in range(3)] == [200, 200, 429]
    for _ in range(5):  # no escalation to a ban, and refusals do not count
        assert (await _get(http, sim, CANDLES, q))[0] == 429
    clock.advance(1.5)  # T0 + 2: the next 2-second window
    assert (await _get(http, sim, CANDLES, q))[0] == 200
    log = sim.request_log
    assert log.count(CANDLES, status=429, venue="okx") == 6
    assert log.count(status=429, venue="binance") == 0
    assert {r.weight for r in log.requests if r.status == 429} == {0}
    refused = [k for k in log.klines if k.status == 429]
    assert len(refused) == 6 and {k.fault for k in refused} == {"rate_limit"}
    assert (refused[0].symbol, refused[0].limit, refused[0].venue) == ("BTC-USDT", 1, "okx")


async def test_default_candles_limit_is_40_per_2_seconds(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(clock=FakeClock(T0 + 0.0))
    statuses = [(await _get(http, sim, CANDLES, "instId=BTC-USDT&limit=1"))[0] for _ in range(41)]
    assert statuses == [200] * 40 + [429]
    statuses = [(await _get(http, sim, HISTORY, "instId=BTC-USDT&limit=1"))[0] for _ in range(21)]
    assert statuses == [200] * 20 + [429]


async def test_outages_empty_pages_short_pages_and_duplicates(
    start: Start, http: aiohttp.ClientSession
) -> None:
    empty = (T0 - 7200, T0 - 7140)
    short = (T0 - 5400, T0 - 5340)
    dup = (T0 - 3600, T0 - 3540)
    sim = await start(
        {
            "symbols": {
                "BTC/USDT": {
                    "outages": [
                        {"next_requests": 1, "status": 502},
                        {"next_requests": 1, "status": 503, "body": "json"},
                    ],
                    "empty_pages": [{"start": empty[0], "end": empty[1], "requests": 1}],
                    "short_pages": [{"start": short[0], "end": short[1], "requests": 1}],
                    "duplicates": [{"start": dup[0], "end": dup[1], "requests": 1}],
                }
            }
        }
    )

    def around(span: tuple[int, int]) -> str:
        return f"instId=BTC-USDT&limit=5&after={(span[0] + 180) * 1000}"

    status, body, headers = await _get(http, sim, HISTORY, around(empty))
    assert (
        status == 502 and "Bad Gateway" in body and headers["Content-Type"].startswith("text/html")
    )
    status, body, _ = await _get(http, sim, HISTORY, around(empty))
    assert (status, body["code"]) == (503, "50001")
    assert (await _get(http, sim, HISTORY, around(empty)))[1]["data"] == []  # empty page
    full = (await _get(http, sim, HISTORY, around(empty)))[1]["data"]
    assert [int(r[0]) // 1000 for r in full] == [empty[0] + 120 - 60 * k for k in range(5)]
    page = (await _get(http, sim, HISTORY, around(short)))[1]["data"]
    assert [int(r[0]) // 1000 for r in page] == [short[0] + 60 - 60 * k for k in range(4)]
    page = (await _get(http, sim, HISTORY, around(dup)))[1]["data"]
    opens = [int(r[0]) // 1000 for r in page]  # the newest bar pushed out, as on Binance
    assert opens == [dup[0] + 60, dup[0], dup[0], dup[0] - 60, dup[0] - 120]
    faults = [k.fault for k in sim.request_log.klines]
    assert faults == ["outage", "outage", "empty_page", None, "short_page", "duplicates"]
    assert {k.venue for k in sim.request_log.klines} == {"okx"}


async def test_malformed_pages_in_okx_representation(
    start: Start, http: aiohttp.ClientSession
) -> None:
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

    def q(start_s: int) -> str:  # ascending: start - 120, start - 60, start, +60, +120
        return f"instId=BTC-USDT&limit=5&after={(start_s + 180) * 1000}"

    status, text, _ = await _get(http, sim, HISTORY, q(w[0][0]))
    assert status == 200 and isinstance(text, str) and text.startswith('{"code":"0"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert isinstance((await _get(http, sim, HISTORY, q(w[0][0])))[1], dict)  # only once
    rows = (await _get(http, sim, HISTORY, q(w[1][0])))[1]["data"]  # newest first
    assert isinstance(rows[0], dict) and isinstance(rows[1][1], list) and isinstance(rows[3], list)
    rows = (await _get(http, sim, HISTORY, q(w[2][0])))[1]["data"]
    assert rows[2][1:5] == ["NaN"] * 4 and rows[3][1] != "NaN"
    faults = [k.fault for k in sim.request_log.klines]
    assert faults == ["truncated_json", None, "wrong_types", "nan_strings"]


async def test_listing_halts_and_history_depth(start: Start, http: aiohttp.ClientSession) -> None:
    listing = T0 - 3 * 3600 + 30
    halt = (T0 - 3600, T0 - 1800)
    sim = await start(
        {
            "symbols": {
                "BTC/USDT": {"listing": listing, "halts": [list(halt)]},
                "ETH/USDT": {"history_depth_bars": 50},
            }
        }
    )
    q = "instId=BTC-USDT&bar=1m"
    rows = (await _get(http, sim, HISTORY, f"{q}&after={(listing + 300) * 1000}"))[1]["data"]
    assert int(rows[-1][0]) // 1000 == listing - 30  # the bar containing the listing, then none
    assert len(rows) == 6  # opens listing - 30 .. listing + 270
    rows = (await _get(http, sim, HISTORY, f"{q}&after={(halt[1] + 120) * 1000}&limit=4"))[1]
    assert [int(r[0]) // 1000 for r in rows["data"]] == [
        halt[1] + 60,
        halt[1],
        halt[0] - 60,
        halt[0] - 120,
    ]
    inside = f"{q}&before={halt[0] * 1000 - 1}&after={(halt[1] - 60) * 1000}"
    assert (await _get(http, sim, HISTORY, inside))[1]["data"] == []
    eth = "instId=ETH-USDT&bar=1m&limit=100"
    newest = (await _get(http, sim, HISTORY, eth))[1]["data"]
    assert len(newest) == 51 and int(newest[-1][0]) // 1000 == T0 - 50 * 60  # 50 closed + 1
    older = (await _get(http, sim, HISTORY, f"{eth}&after={(T0 - 50 * 60) * 1000}"))[1]
    assert older == {"code": "0", "msg": "", "data": []}  # as the exchange would: nothing
    hours = (await _get(http, sim, HISTORY, "instId=ETH-USDT&bar=1H&limit=100"))[1]["data"]
    assert len(hours) == 51  # N bars of whatever size


@pytest.fixture
async def steady(start: Start) -> SimulatorServer:
    listing = T0 - 5000 * 60 + 17
    halts = [[T0 - 4000 * 60, T0 - 3900 * 60], [T0 - 1000 * 60 + 5, T0 - 990 * 60]]
    return await start(
        {
            "seed": 21,
            "symbols": {"BTC/USDT": {"listing": listing, "halts": halts}},
            "venues": {"okx": {"rate_limits": {"candles": 10**6, "history_candles": 10**6}}},
        }
    )


def _existing_minutes() -> list[int]:
    """The open times (s) a 1m request can see in the ``steady`` scenario (brute force)."""
    listing = T0 - 5000 * 60 + 17
    halts = [(T0 - 4000 * 60, T0 - 3900 * 60), (T0 - 1000 * 60 + 5, T0 - 990 * 60)]
    return [
        t
        for t in range(T0 - 6000 * 60, T0 + 60, 60)
        if t + 60 > listing and not any(t >= a and t + 60 <= b for a, b in halts)
    ]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    before=st.none() | st.integers(T0 - 6000 * 60, T0 + 120).map(lambda s: s * 1000),
    after=st.none() | st.integers(T0 - 6000 * 60, T0 + 120).map(lambda s: s * 1000),
    jitter=st.integers(-1, 1),
    limit=st.integers(1, 400),
    history=st.booleans(),
)
async def test_any_cursor_window_returns_exactly_its_bars_newest_first(
    steady: SimulatorServer,
    http: aiohttp.ClientSession,
    before: int | None,
    after: int | None,
    jitter: int,
    limit: int,
    history: bool,
) -> None:
    """Model: the newest ``min(limit, cap)`` existing bars with ``before < ts < after`` (and,
    on ``market/candles``, among the newest 1440 slots), newest first, values exact."""
    if after is not None:
        after += jitter
    cap = 100 if history else 300
    candidates = [
        t * 1000
        for t in _existing_minutes()
        if (before is None or t * 1000 > before)
        and (after is None or t * 1000 < after)
        and (history or t >= T0 - 1439 * 60)
    ]
    expected_ms = candidates[-min(limit, cap) :][::-1] if candidates else []
    parts = [f"instId=BTC-USDT&bar=1m&limit={limit}"]
    parts += [f"before={before}"] if before is not None else []
    parts += [f"after={after}"] if after is not None else []
    status, body, _ = await _get(http, steady, HISTORY if history else CANDLES, "&".join(parts))
    assert status == 200 and body["code"] == "0"
    assert [int(r[0]) for r in body["data"]] == expected_ms
    closed = [t for t in expected_ms if t + 60_000 <= T0 * 1000]
    bars = generate_bars(21, "BTC/USDT", 60, np.array(sorted(closed), np.int64))
    got_closed = [r for r in body["data"] if r[8] == "1"]
    assert _parsed(got_closed) == _expected(bars, T0 * 1000)


async def test_random_garbage_never_causes_a_500_on_any_venue(
    start: Start, http: aiohttp.ClientSession
) -> None:
    import random
    from urllib.parse import quote

    sim = await start(
        {
            "venues": {
                "binanceusdm": {"weight_limit_per_minute": 10**6},
                "okx": {
                    "rate_limits": {
                        "candles": 10**6,
                        "history_candles": 10**6,
                        "instruments": 10**6,
                        "time": 10**6,
                    }
                },
            }
        }
    )
    rng = random.Random(4321)
    alphabet = "abcXYZ019-_.=&%?/#+ \x00\x7f\u00e9\u20bf\U0001f600"
    keys = ["instId", "bar", "after", "before", "limit", "instType", "symbol", "interval"]
    keys += ["startTime", "endTime", "zz"]
    paths = [CANDLES, HISTORY, "/api/v5/public/instruments", "/api/v5/public/time"]
    paths += ["/fapi/v1/klines", "/fapi/v1/exchangeInfo", "/fapi/v1/ping"]
    for _ in range(120):
        parts = []
        for _ in range(rng.randint(0, 6)):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            parts.append(f"{rng.choice(keys)}={quote(value, safe='')}")
        raw = "&".join(parts)
        for path in paths:
            status, body, _ = await _get(http, sim, path, raw)
            assert status < 500, (path, raw, body)
    for path, query in ((CANDLES, "instId=BTC-USDT&after=" + "9" * 16), (HISTORY, "after=0")):
        assert (await _get(http, sim, path, query))[0] < 500
    assert sim.request_log.count(status=500) == 0


async def test_venue_latency_applies_to_that_venue_only(
    start: Start, http: aiohttp.ClientSession
) -> None:
    import time

    sim = await start({"venues": {"okx": {"latency_ms": 80}}})
    began = time.perf_counter()
    await _get(http, sim, "/api/v5/public/time")
    assert time.perf_counter() - began >= 0.08
    began = time.perf_counter()
    await _get(http, sim, "/api/v3/ping")
    await _get(http, sim, "/fapi/v1/ping")
    assert time.perf_counter() - began < 0.08 * 2  # neither waits OKX's latency
