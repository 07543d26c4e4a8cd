"""The simulator's Binance public-data archive (``/data/...``) over real sockets: files whose
bars are exactly REST's (µs from 2025 on spot, a header on USD-M), listing/halts/publication,
every scenario fault, the bandwidth cap, no REST weight spent, hostile paths answered 404
with S3's XML, and scenario errors naming their key path."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import re
import time
import zipfile
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.errors import ConfigError
from qmtl.services.exchange_sim import (
    ARCHIVE_VENUE,
    USED_WEIGHT_HEADER,
    ArchiveName,
    Scenario,
    SimulatorServer,
    parse_archive_path,
    run_simulator,
)
from qmtl.services.exchange_sim.archive_cache import ArchiveCache
from qmtl.services.exchange_sim.archive_files import ServedArchive
from tests.sim_http import Start, http, start

__all__ = ["http", "start"]  # the shared fixtures, used by name

DAY_MS = 86_400_000
MS_2024_02 = 1_706_745_600_000  # 2024-02-01T00:00Z
MS_2025 = 1_735_689_600_000  # 2025-01-01T00:00Z
NOW = "2025-03-10T00:00:00Z"  # every file below is published by then
USDM_HEADER = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
]
SECONDS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14_400, "1d": 86_400}
XML_404 = re.compile(
    r'<\?xml version="1\.0" encoding="UTF-8"\?>\n<Error><Code>NoSuchKey</Code>'
    r"<Message>The specified key does not exist\.</Message><Key>(.*)</Key></Error>",
    re.S,
)


def spot(name: str) -> str:
    return _path("spot", name)


def usdm(name: str) -> str:
    return _path("um", name)


def _path(market: str, name: str) -> str:
    symbol, interval, date = name.removesuffix(".zip").split("-", 2)
    period = "daily" if date.count("-") == 2 else "monthly"
    where = "spot" if market == "spot" else "futures/um"
    return f"/data/{where}/{period}/klines/{symbol}/{interval}/{name}"


async def fetch(
    http: aiohttp.ClientSession, sim: SimulatorServer, path: str, method: str = "GET"
) -> tuple[int, bytes]:
    """Status and body of ``path`` sent verbatim (no client-side normalisation)."""
    async with http.request(method, URL(f"{sim.base_url}{path}", encoded=True)) as resp:
        return resp.status, await resp.read()


async def download(
    http: aiohttp.ClientSession, sim: SimulatorServer, path: str
) -> tuple[bytes, bytes]:
    """The zip and its CHECKSUM file (both must exist)."""
    status, body = await fetch(http, sim, path)
    assert status == 200, (path, body[:300])
    status, checksum = await fetch(http, sim, f"{path}.CHECKSUM")
    assert status == 200, (path, checksum[:300])
    return body, checksum


def checksum_of(body: bytes, name: str) -> bytes:
    return f"{hashlib.sha256(body).hexdigest()}  {name}\n".encode()


def csv_rows(body: bytes, name: str) -> list[list[str]]:
    """The one CSV member of a zip, parsed with the csv module."""
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.namelist() == [name.replace(".zip", ".csv")]
        assert archive.getinfo(archive.namelist()[0]).compress_type == zipfile.ZIP_DEFLATED
        text = archive.read(archive.namelist()[0]).decode("ascii")
    assert text == "" or text.endswith("\n")
    return list(csv.reader(io.StringIO(text)))


async def verified_rows(
    http: aiohttp.ClientSession, sim: SimulatorServer, path: str
) -> list[list[str]]:
    """Download, check the sha256 against the CHECKSUM file, unzip, parse."""
    name = path.rsplit("/", 1)[1]
    body, checksum = await download(http, sim, path)
    assert checksum == checksum_of(body, name)
    return csv_rows(body, name)


async def rest_rows(
    http: aiohttp.ClientSession,
    sim: SimulatorServer,
    venue: str,
    symbol: str,
    interval: str,
    start_ms: int,
    end_ms: int,
) -> list[list[Any]]:
    """Every REST kline with an open time in ``[start_ms, end_ms)``, page by page."""
    path, limit = ("/api/v3/klines", 1000) if venue == "spot" else ("/fapi/v1/klines", 1500)
    rows: list[list[Any]] = []
    since = start_ms
    while since < end_ms:
        query = f"symbol={symbol}&interval={interval}&startTime={since}&endTime={end_ms - 1}"
        async with http.get(f"{sim.base_url}{path}?{query}&limit={limit}") as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        rows += page
        if len(page) < limit:
            break
        since = page[-1][0] + 1
    return rows


def as_archive(rows: list[list[Any]], interval: str, *, microseconds: bool) -> list[list[str]]:
    """REST rows as the archive writes them: strings, times scaled to µs when asked."""
    scale = 1000 if microseconds else 1
    interval_ms = SECONDS[interval] * 1000
    return [
        [
            str(r[0] * scale),
            *r[1:6],
            str((r[0] + interval_ms) * scale - 1),
            r[7],
            str(r[8]),
            r[9],
            r[10],
            r[11],
        ]
        for r in rows
    ]


# -- contents ---------------------------------------------------------------------------------


async def test_a_2024_spot_month_is_rest_bar_for_bar_in_ms(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"seed": 3, "now": NOW})
    rows = await verified_rows(http, sim, spot("BTCUSDT-1m-2024-02.zip"))
    rest = await rest_rows(http, sim, "spot", "BTCUSDT", "1m", MS_2024_02, MS_2024_02 + 29 * DAY_MS)
    assert len(rows) == 29 * 1440 == len(rest)
    assert rows == as_archive(rest, "1m", microseconds=False)  # every column, no header
    assert all(len(row) == 12 and row[11] == "0" for row in rows)
    # the OHLCV strings and the open time, column by column, as the brief asks
    for row, ref in zip(rows, rest, strict=True):
        assert int(row[0]) == ref[0] and row[1:6] == ref[1:6]


async def test_a_2025_spot_day_has_microsecond_times(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"seed": 3, "now": NOW})
    day = MS_2025 + 9 * DAY_MS  # 2025-01-10
    rows = await verified_rows(http, sim, spot("ETHUSDT-1m-2025-01-10.zip"))
    rest = await rest_rows(http, sim, "spot", "ETHUSDT", "1m", day, day + DAY_MS)
    assert len(rows) == 1440 and rows == as_archive(rest, "1m", microseconds=True)
    assert rows[0][0] == str(day * 1000) and rows[0][6] == str(day * 1000 + 60_000_000 - 1)
    # the last 2024 day of the same market is still in milliseconds
    last_2024 = await verified_rows(http, sim, spot("ETHUSDT-1h-2024-12-31.zip"))
    assert last_2024[-1][6] == str(MS_2025 - 1)


async def test_a_usdm_month_has_a_header_and_ms_times(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"seed": 3, "now": NOW})
    rows = await verified_rows(http, sim, usdm("BTCUSDT-5m-2025-02.zip"))
    assert rows[0] == USDM_HEADER
    feb = MS_2025 + 31 * DAY_MS
    rest = await rest_rows(http, sim, "um", "BTCUSDT", "5m", feb, feb + 28 * DAY_MS)
    assert len(rows) == 1 + 28 * 288 and rows[1:] == as_archive(rest, "5m", microseconds=False)
    spot_rows = await verified_rows(http, sim, spot("BTCUSDT-5m-2025-02.zip"))
    assert [r[1:6] for r in spot_rows] != [r[1:6] for r in rows[1:]]  # a perpetual's own bars


async def test_the_same_file_has_the_same_bytes_every_time(
    start: Start, http: aiohttp.ClientSession
) -> None:
    path = spot("BTCUSDT-1h-2024-03.zip")
    first = await download(http, await start({"now": NOW}), path)
    again = await download(http, await start({"now": NOW}), path)
    assert first == again
    assert re.fullmatch(rb"[0-9a-f]{64}  BTCUSDT-1h-2024-03\.zip\n", first[1])


async def test_downloads_are_built_once_and_cached(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"now": NOW})
    path = spot("BTCUSDT-1m-2024-06.zip")
    bodies = await asyncio.gather(*(fetch(http, sim, path) for _ in range(5)))
    assert sim.state.archives.builds == 1 and len({b for _, b in bodies}) == 1
    await download(http, sim, path)  # the zip again and its CHECKSUM: no build either
    assert sim.state.archives.builds == 1


async def test_the_cache_evicts_least_recently_served_files_by_bytes() -> None:
    cache = ArchiveCache(max_bytes=100)
    files = {key: ServedArchive(bytes(40), b"", 0) for key in "abc"}

    async def serve(key: str) -> ServedArchive:
        return await cache.get(key, lambda: files[key])

    for key in "aba":  # a is now the most recently served
        await serve(key)
    await serve("c")  # 120 bytes > 100: b goes
    assert (len(cache), cache.cached_bytes, cache.builds) == (2, 80, 3)
    await serve("a")
    assert cache.builds == 3
    await serve("b")  # built again; c goes
    await serve("a")
    assert cache.builds == 4
    huge = ServedArchive(bytes(500), b"", 0)
    assert await cache.get("huge", lambda: huge) is huge
    assert (len(cache), cache.cached_bytes) == (2, 80)  # served, never cached


# -- which bars, which files --------------------------------------------------------------------


async def test_listing_halts_and_publication_shape_the_files(
    start: Start, http: aiohttp.ClientSession
) -> None:
    listing = "2024-02-10T12:30:00Z"
    halt = ["2024-02-20T03:00:00Z", "2024-02-21T06:00:00Z"]
    sim = await start(
        {
            "now": "2024-02-25T00:30:00Z",
            "symbols": {"BTC/USDT": {"listing": listing, "halts": [halt]}},
        }
    )
    rows = await verified_rows(http, sim, spot("BTCUSDT-1h-2024-02-10.zip"))
    assert [r[0] for r in rows][:2] == [
        str(MS_2024_02 + 9 * DAY_MS + h * 3_600_000) for h in (12, 13)
    ]
    assert len(rows) == 12  # from the bar containing the listing
    # the halt [02-20 03:00, 02-21 06:00) leaves three bars on the 20th, 18 on the 21st
    assert len(await verified_rows(http, sim, spot("BTCUSDT-1h-2024-02-20.zip"))) == 3
    assert len(await verified_rows(http, sim, spot("BTCUSDT-1h-2024-02-21.zip"))) == 18
    for name in (
        "BTCUSDT-1h-2024-02-09.zip",  # before the listing
        "BTCUSDT-1m-2024-01.zip",  # a month before the listing
        "BTCUSDT-1h-2024-02-24.zip",  # ended 30 min ago: published after an hour
        "BTCUSDT-1h-2024-02-25.zip",  # today, still forming
        "BTCUSDT-1h-2024-02.zip",  # this month
        "BTCUSDT-1h-2031-01-01.zip",  # the future
    ):
        for path in (spot(name), f"{spot(name)}.CHECKSUM"):
            assert (await fetch(http, sim, path))[0] == 404, path
    # a day wholly inside a halt has no file at all, on USD-M too
    sim.set_scenario(
        Scenario.from_dict(
            {"now": NOW, "symbols": {"BTC/USDT": {"halts": [["2024-03-01", "2024-03-03"]]}}}
        )
    )
    assert (await fetch(http, sim, usdm("BTCUSDT-1h-2024-03-02.zip")))[0] == 404
    assert (await fetch(http, sim, usdm("BTCUSDT-1h-2024-03-02.zip.CHECKSUM")))[0] == 404
    assert (await fetch(http, sim, usdm("BTCUSDT-1h-2024-03-03.zip")))[0] == 200


async def test_files_appear_once_published_on_the_simulator_clock(
    start: Start, http: aiohttp.ClientSession
) -> None:
    day_end = 1_709_251_200  # 2024-03-01T00:00Z: the end of 2024-02-29 and of February
    clock = FakeClock(day_end - 60.0)
    sim = await start({"archive": {"publish_delay": {"daily": 600, "monthly": 7200}}}, clock)
    daily, monthly = spot("BTCUSDT-1m-2024-02-29.zip"), spot("BTCUSDT-1m-2024-02.zip")

    async def statuses() -> tuple[int, int, int]:
        return (
            (await fetch(http, sim, daily))[0],
            (await fetch(http, sim, f"{daily}.CHECKSUM"))[0],
            (await fetch(http, sim, monthly))[0],
        )

    assert await statuses() == (404, 404, 404)  # the day is still running
    clock.advance(60 + 599)
    assert await statuses() == (404, 404, 404)
    clock.advance(1)
    assert await statuses() == (200, 200, 404)
    clock.advance(7200 - 600)
    assert await statuses() == (200, 200, 200)
    rows = await verified_rows(http, sim, daily)
    assert len(rows) == 1440 and rows[-1][6] == str(day_end * 1000 - 1)


async def test_default_publish_delays_are_an_hour_and_a_day(
    start: Start, http: aiohttp.ClientSession
) -> None:
    month_end = 1_709_251_200
    clock = FakeClock(month_end + 3599.0)
    sim = await start({}, clock)
    daily, monthly = spot("BTCUSDT-1h-2024-02-29.zip"), spot("BTCUSDT-1h-2024-02.zip")
    assert [(await fetch(http, sim, p))[0] for p in (daily, monthly)] == [404, 404]
    clock.advance(1)
    assert [(await fetch(http, sim, p))[0] for p in (daily, monthly)] == [200, 404]
    clock.advance(86_400 - 3600)
    assert [(await fetch(http, sim, p))[0] for p in (daily, monthly)] == [200, 200]


_DAY0 = 1_730_419_200  # 2024-11-01T00:00Z: the examples straddle 2025 (ms → µs on spot)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    day=st.integers(0, 90),
    interval=st.sampled_from(["1m", "15m", "1h", "4h", "1d"]),
    market=st.sampled_from(["spot", "um"]),
    listing_min=st.none() | st.integers(-2 * 1440, 2 * 1440),
    halts=st.lists(st.tuples(st.integers(-1440, 2 * 1440), st.integers(1, 1800)), max_size=3),
)
def test_archive_bars_are_rest_bars_for_any_listing_halts_and_day(
    day: int,
    interval: str,
    market: str,
    listing_min: int | None,
    halts: list[tuple[int, int]],
) -> None:
    start_s = _DAY0 + day * 86_400
    symbol: dict[str, Any] = {
        "halts": [[start_s + 60 * a, start_s + 60 * (a + d)] for a, d in halts],
    }
    if listing_min is not None:
        symbol["listing"] = max(0, start_s + 60 * listing_min)
    scenario = Scenario.from_dict(
        {"seed": day, "now": (start_s + 2 * 86_400) * 1000, "symbols": {"BTC/USDT": symbol}}
    )
    date = time.strftime("%Y-%m-%d", time.gmtime(start_s))
    name = f"BTCUSDT-{interval}-{date}.zip"
    path = spot(name) if market == "spot" else usdm(name)
    microseconds = market == "spot" and start_s * 1000 >= MS_2025

    async def check() -> None:
        async with run_simulator(scenario) as sim, aiohttp.ClientSession() as session:
            rest = await rest_rows(
                session, sim, market, "BTCUSDT", interval, start_s * 1000, (start_s + 86_400) * 1000
            )
            status, _ = await fetch(session, sim, path)
            event("no bars: 404" if not rest else f"{min(len(rest), 2)}+ bars")
            if not rest:
                assert status == 404
                return
            rows = await verified_rows(session, sim, path)
            if market == "um":
                assert rows.pop(0) == USDM_HEADER
            assert rows == as_archive(rest, interval, microseconds=microseconds)

    asyncio.run(check())


# -- scenario faults --------------------------------------------------------------------------


async def test_missing_corrupt_and_mismatched_files(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(
        {
            "now": NOW,
            "archive": {
                "missing": ["BTCUSDT-1m-2024-02.zip"],
                "corrupt": ["BTCUSDT-1m-2024-03.zip"],
                "checksum_mismatch": ["BTCUSDT-1m-2024-04-02.zip"],
            },
        }
    )
    for path in (spot("BTCUSDT-1m-2024-02.zip"), usdm("BTCUSDT-1m-2024-02.zip")):
        assert (await fetch(http, sim, path))[0] == 404
        assert (await fetch(http, sim, f"{path}.CHECKSUM"))[0] == 404
    assert (await fetch(http, sim, spot("ETHUSDT-1m-2024-02.zip")))[0] == 200  # another symbol

    for path in (spot("BTCUSDT-1m-2024-03.zip"), usdm("BTCUSDT-1m-2024-03.zip")):
        body, checksum = await download(http, sim, path)
        assert checksum == checksum_of(body, "BTCUSDT-1m-2024-03.zip")  # matches what is served
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(io.BytesIO(body))

    path = spot("BTCUSDT-1m-2024-04-02.zip")
    body, checksum = await download(http, sim, path)
    assert checksum != checksum_of(body, "BTCUSDT-1m-2024-04-02.zip")
    assert re.fullmatch(rb"[0-9a-f]{64}  BTCUSDT-1m-2024-04-02\.zip\n", checksum)
    assert len(csv_rows(body, "BTCUSDT-1m-2024-04-02.zip")) == 1440  # the zip itself is fine
    healthy = await verified_rows(http, sim, spot("BTCUSDT-1m-2024-04-03.zip"))
    assert len(healthy) == 1440


async def test_incomplete_files_lack_rows_rest_still_serves(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start(
        {
            "now": NOW,
            "archive": {
                "incomplete": {
                    "BTCUSDT-1m-2024-05.zip": [
                        ["2024-05-03T00:00Z", "2024-05-03T06:00Z"],
                        [1_715_000_000, 1_715_000_030],  # half a minute: its bar goes
                    ]
                }
            },
        }
    )
    may = 1_714_521_600_000
    rest = await rest_rows(http, sim, "spot", "BTCUSDT", "1m", may, may + 31 * DAY_MS)
    rows = await verified_rows(http, sim, spot("BTCUSDT-1m-2024-05.zip"))
    gap_start, gap_end = may + 2 * DAY_MS, may + 2 * DAY_MS + 6 * 3_600_000
    lacking = {t for t in range(gap_start, gap_end, 60_000)} | {1_714_999_980_000}
    assert len(rest) == 31 * 1440 and len(rows) == len(rest) - 361
    assert rows == as_archive([r for r in rest if r[0] not in lacking], "1m", microseconds=False)
    assert {r[0] for r in rest} >= lacking  # REST still has every one of them
    daily = await verified_rows(http, sim, spot("BTCUSDT-1m-2024-05-03.zip"))
    assert len(daily) == 1440  # only the file named is incomplete


async def test_a_disabled_archive_answers_404_everywhere(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"now": NOW, "archive": {"enabled": False}})
    for path in (spot("BTCUSDT-1m-2024-02.zip"), usdm("BTCUSDT-1h-2024-02-03.zip.CHECKSUM")):
        status, body = await fetch(http, sim, path)
        assert status == 404 and XML_404.fullmatch(body.decode())


async def test_bandwidth_caps_each_response(start: Start, http: aiohttp.ClientSession) -> None:
    cap = 200_000
    sim = await start({"now": NOW, "archive": {"bandwidth_bytes_per_s": cap}})
    path = spot("BTCUSDT-1m-2024-02-03.zip")
    await fetch(http, sim, f"{path}.CHECKSUM")  # builds the file: not part of the timing
    began = time.monotonic()
    status, body = await fetch(http, sim, path)
    elapsed = time.monotonic() - began
    assert status == 200 and len(body) > 50_000
    assert elapsed >= 0.8 * len(body) / cap
    assert len(csv_rows(body, "BTCUSDT-1m-2024-02-03.zip")) == 1440


# -- budgets and the request log ----------------------------------------------------------------


async def test_archive_requests_cost_no_weight_and_are_logged_apart(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"now": NOW})
    async with http.get(f"{sim.base_url}/api/v3/ping") as resp:
        assert resp.headers[USED_WEIGHT_HEADER] == "1"
    paths = [
        spot("BTCUSDT-1h-2024-02.zip"),
        usdm("BTCUSDT-1h-2024-02.zip"),
        spot("NOPE-1h-2024-02.zip"),
    ]
    for path in paths:
        status, _ = await fetch(http, sim, path)
        status_sum, _ = await fetch(http, sim, f"{path}.CHECKSUM")
        assert status == status_sum == (404 if "NOPE" in path else 200)
    async with http.get(f"{sim.base_url}/api/v3/ping") as resp:
        assert resp.headers[USED_WEIGHT_HEADER] == "2"  # the six downloads weighed nothing
    async with http.get(f"{sim.base_url}/fapi/v1/ping") as resp:
        assert resp.headers[USED_WEIGHT_HEADER] == "1"
    assert sim.state.weight_limiter("binanceusdm").used(sim.state.clock.now()) == 1

    log = sim.request_log
    assert log.count(venue=ARCHIVE_VENUE) == 6 and log.by_venue()[ARCHIVE_VENUE] == 6
    assert log.count(venue="binance") == 2 and log.count(venue="binanceusdm") == 1
    assert log.klines == []  # archive downloads are not candles requests
    async with http.get(f"{sim.base_url}/_sim/requests") as resp:
        payload = await resp.json()
    assert payload["by_venue"] == {"binance": 2, "archive": 6, "binanceusdm": 1}
    archived = [r for r in payload["requests"] if r["venue"] == ARCHIVE_VENUE]
    assert [r["path"] for r in archived[:2]] == [paths[0], f"{paths[0]}.CHECKSUM"]
    assert {(r["weight"], r["status"]) for r in archived} == {(0, 200), (0, 404)}


async def test_a_spent_rest_budget_does_not_block_archives(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"now": NOW, "weight_limit_per_minute": 1, "ban_after_violations": 100})
    assert (await fetch(http, sim, "/api/v3/ping"))[0] == 200
    assert (await fetch(http, sim, "/api/v3/ping"))[0] == 429
    assert (await fetch(http, sim, spot("BTCUSDT-1h-2024-02.zip")))[0] == 200


# -- hostile input ----------------------------------------------------------------------------

HOSTILE = [
    "/data/",
    "/data/spot/monthly/klines/BTCUSDT/1m/",
    "/data/spot/monthly/klines/DOGEUSDT/1m/DOGEUSDT-1m-2024-02.zip",  # unknown symbol
    "/data/spot/monthly/klines/BTCUSDT/1w/BTCUSDT-1w-2024-02.zip",  # does not divide a day
    "/data/spot/monthly/klines/BTCUSDT/3d/BTCUSDT-3d-2024-02.zip",
    "/data/spot/monthly/klines/BTCUSDT/1M/BTCUSDT-1M-2024-02.zip",
    "/data/futures/um/monthly/klines/BTCUSDT/1s/BTCUSDT-1s-2024-02.zip",  # no 1s on USD-M
    "/data/futures/cm/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-13.zip",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-00.zip",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-0000-01.zip",
    "/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02-30.zip",
    "/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-02-29.zip",
    "/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip",  # a month under daily/
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02-03.zip",  # a day under monthly/
    "/data/spot/monthly/klines/BTCUSDT/1m/ETHUSDT-1m-2024-02.zip",  # symbol ≠ directory
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1h-2024-02.zip",  # interval ≠ directory
    "/data/spot/monthly/klines/btcusdt/1m/btcusdt-1m-2024-02.zip",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.csv",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.ZIP",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip.sha256",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip.CHECKSUM.CHECKSUM",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip/",
    "/data/spot/monthly/klines/BTCUSDT/1m/../../../../../api/v3/klines",
    "/data/spot/monthly/klines/BTCUSDT/1m/%2e%2e/%2e%2e/BTCUSDT-1m-2024-02.zip",
    "/data/spot/monthly/klines/BTCUSDT/1m/..%2fBTCUSDT-1m-2024-02.zip",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02%00.zip",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip%0a",
    "/data/spot/monthly/klines/BTC%C3%9CSDT/1m/BTC%C3%9CSDT-1m-2024-02.zip",
    "/data/spot/%ff%fe/<script>&amp;",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-99999-02.zip",
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-9999-12.zip",  # valid, far future
    "/data/" + "A" * 20_000,
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip" + "x" * 5000,
]


async def test_hostile_paths_get_s3_404s_never_500s(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sim = await start({"now": NOW})
    for path in HOSTILE:
        status, body = await fetch(http, sim, path)
        text = body.decode()
        match = XML_404.fullmatch(text)
        assert status == 404 and match, (path[:200], status, text[:300])
        assert len(match.group(1)) <= 256 * 6  # the key is echoed truncated (escaped)
    status, body = await fetch(http, sim, f"{spot('BTCUSDT-1m-2024-02.zip')}?x=1")
    assert status == 200  # a query string does not change the key
    status, body = await fetch(http, sim, spot("BTCUSDT-1m-2024-02.zip"), method="POST")
    assert status == 405 and b"<Code>MethodNotAllowed</Code>" in body
    log = sim.request_log
    assert log.count(status=500) == 0 and log.count(venue=ARCHIVE_VENUE) == len(HOSTILE) + 2
    assert all(r.weight == 0 for r in log.requests)


def test_paths_and_names_round_trip() -> None:
    for market, prefix in (("spot", "/data/spot"), ("um", "/data/futures/um")):
        for date in ("2024-02", "2024-02-29"):
            name = f"BTCUSDT-15m-{date}.zip"
            parsed = parse_archive_path(_path(market, name))
            assert parsed is not None and not parsed.checksum
            assert parsed.name.file_name == name and parsed.name.path == _path(market, name)
            assert parsed.name.path.startswith(prefix)
    leap = ArchiveName("spot", "monthly", "BTCUSDT", "1m", 2024, 2, None)
    assert (leap.start_ms, leap.end_ms) == (MS_2024_02, MS_2024_02 + 29 * DAY_MS)
    assert not leap.microseconds and not leap.has_header
    assert ArchiveName("spot", "daily", "BTCUSDT", "1m", 2025, 1, 1).microseconds
    assert not ArchiveName("um", "daily", "BTCUSDT", "1m", 2025, 1, 1).microseconds


# -- scenario errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        ({"enabled": "yes"}, "archive.enabled: must be true or false"),
        ({"publish_delay": {"daily": -1}}, "archive.publish_delay.daily: must be an integer >= 0"),
        ({"publish_delay": {"monthly": 1.5}}, "archive.publish_delay.monthly: must be an integer"),
        ({"publish_delay": {"dayly": 1}}, "archive.publish_delay.dayly: unknown key"),
        ({"missing": ["foo.zip"]}, "archive.missing[0]: expected an archive file name"),
        ({"missing": "BTCUSDT-1m-2024-02.zip"}, "archive.missing: expected a list"),
        (
            {"corrupt": ["BTCUSDT-1m-2024-01.zip", "BTCUSDT-1m-2024-02-30.zip"]},
            "archive.corrupt[1]: expected an archive file name",
        ),
        (
            {"checksum_mismatch": ["BTCUSDT-1w-2024-02.zip"]},
            "archive.checksum_mismatch[0]: expected an archive file name",
        ),
        (
            {"incomplete": {"BTCUSDT-1m-2024-13.zip": [[1, 2]]}},
            "archive.incomplete.BTCUSDT-1m-2024-13.zip: expected an archive file name",
        ),
        (
            {"incomplete": {"BTCUSDT-1m-2024-05.zip": [[5, 2]]}},
            "archive.incomplete.BTCUSDT-1m-2024-05.zip[0]: end must be > start",
        ),
        (
            {"incomplete": {"BTCUSDT-1m-2024-05.zip": [["2024-05-03", "soon"]]}},
            "archive.incomplete.BTCUSDT-1m-2024-05.zip[0][1]",
        ),
        ({"incomplete": ["BTCUSDT-1m-2024-05.zip"]}, "archive.incomplete: expected a mapping"),
        ({"bandwidth_bytes_per_s": 0}, "archive.bandwidth_bytes_per_s: must be a number > 0"),
        ({"bandwidth_bytes_per_s": -5}, "archive.bandwidth_bytes_per_s: must be a number > 0"),
        ({"bandwidth_bytes_per_s": "fast"}, "archive.bandwidth_bytes_per_s: must be a number"),
        ({"publish_delays": {}}, "archive.publish_delays: unknown key (did you mean"),
    ],
)
def test_bad_archive_settings_name_their_key_path(archive: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Scenario.from_dict({"archive": archive})
    assert str(info.value).startswith(message), str(info.value)


def test_archive_settings_load_from_yaml() -> None:
    scenario = Scenario.from_yaml(
        """
archive:
  enabled: true
  publish_delay: {daily: 0, monthly: 60}
  missing: ["BTCUSDT-1m-2024-02.zip"]
  incomplete: {"BTCUSDT-1m-2024-05.zip": [["2024-05-03T00:00Z", "2024-05-03T06:00Z"]]}
  bandwidth_bytes_per_s: 2000000
"""
    )
    archive = scenario.archive
    assert (archive.publish_delay.daily, archive.publish_delay.monthly) == (0, 60)
    assert archive.missing == ("BTCUSDT-1m-2024-02.zip",)
    spans = archive.spans_missing_from("BTCUSDT-1m-2024-05.zip")
    assert [(s.start, s.end) for s in spans] == [(1_714_694_400, 1_714_716_000)]
    assert archive.bandwidth_bytes_per_s == 2_000_000
    with pytest.raises(ConfigError, match="archive: expected a mapping"):
        Scenario.from_dict({"archive": []})
