"""``ArchiveReader`` against a real aiohttp server that serves archive bytes built here.

The server is a dict of path → body (404 for anything else) plus per-path misbehaviour
(503, a connection dropped mid-body, a stall), and it counts requests in flight. The reader
is used as a caller would: nothing of it is patched.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.io.binance_archive import ArchiveFile, ArchiveProblem, ArchiveReader, archive_file
from qmtl.runtime.sdk.archive_plan import ARCHIVE_TIMEFRAMES, ArchivePeriod, archive_prefix
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.node_id import TIMEFRAMES

JAN_2024 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
HEADER = (
    b"open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    b"taker_buy_volume,taker_buy_quote_volume,ignore\n"
)
Row = tuple[int, str, str, str, str, str]  # open time (epoch s), o, h, l, c, v as text


@dataclass
class ArchiveServer:
    """What the test server serves, and what it saw."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, str] = field(default_factory=dict)  # "503" | "drop" | "stall"
    delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    hits: list[str] = field(default_factory=list)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)  # a body is half sent
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends every stall

    def publish(self, file: ArchiveFile, body: bytes, checksum: bytes | None = None) -> None:
        """Serve ``body`` as the zip of ``file`` and, unless ``checksum`` says otherwise,
        its correct CHECKSUM (``b""``: no CHECKSUM at all)."""
        self.files[urlsplit(file.url).path] = body
        if checksum is None:
            checksum = f"{hashlib.sha256(body).hexdigest()}  {file.name}\n".encode()
        if checksum:
            self.files[urlsplit(file.checksum_url).path] = checksum


@pytest.fixture
async def server() -> AsyncIterator[ArchiveServer]:
    state = ArchiveServer(url="")

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        state.hits.append(path)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await asyncio.sleep(state.delay_s)
            mode = state.behaviour.get(path)
            if mode == "503":
                return web.Response(status=503, text="Service Unavailable")
            body = state.files.get(path)
            if body is None:
                return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
            if mode in ("drop", "stall"):
                response = web.StreamResponse(headers={"Content-Length": str(len(body))})
                await response.prepare(request)
                await response.write(body[: len(body) // 2])
                if mode == "stall":
                    state.stalled.set()
                    await state.release.wait()
                assert request.transport is not None
                request.transport.close()
                return response
            return web.Response(body=body)
        finally:
            state.in_flight -= 1

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}/"
    yield state
    state.release.set()
    await runner.cleanup()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def kline_csv(rows: list[Row], *, interval: int, micros: bool, header: bool) -> bytes:
    """A Binance kline CSV; ``rows`` are (open time in epoch s, o, h, l, c, v as text)."""
    per_s = 1_000_000 if micros else 1000
    lines = [HEADER] if header else []
    for ts, o, h, l, c, v in rows:
        t = ts * per_s
        close_time = t + interval * per_s - 1
        lines.append(f"{t},{o},{h},{l},{c},{v},{close_time},1.5,7,0.5,0.75,0\n".encode())
    return b"".join(lines)


def bars(start: int, count: int, interval: int = 60) -> list[Row]:
    return [
        (start + i * interval, "100.5", "101.25", "99.75", "100.0", "12.5") for i in range(count)
    ]


def jan_file(server: ArchiveServer, timeframe: str = "1m") -> ArchiveFile:
    return archive_file(server.url, "data/spot", "BTCUSDT", timeframe, "monthly", JAN_2024)


async def spool_entries(reader: ArchiveReader) -> list[str]:
    assert reader.directory is not None
    return await asyncio.to_thread(os.listdir, reader.directory)


# -- round trip ------------------------------------------------------------------------------

price = st.floats(min_value=0.01, max_value=1e7, allow_nan=False, allow_infinity=False)
#: Binance writes fixed 8 decimals; ``repr`` gives every float's shortest exact text.
number_text = st.sampled_from([repr, lambda x: f"{x:.8f}"])


PERIODS: list[ArchivePeriod] = ["monthly", "daily"]


@dataclass(frozen=True)
class RoundTrip:
    prefix: str
    timeframe: str
    period: ArchivePeriod
    start: int
    rows: list[Row]
    body: bytes


@st.composite
def round_trips(draw: st.DrawFn) -> RoundTrip:
    """Random bars on a random file's grid: spot or USD-M path, ms or µs, header or not."""
    prefix = draw(st.sampled_from(["data/spot", "data/futures/um"]))
    timeframes = [tf for tf in ARCHIVE_TIMEFRAMES if prefix == "data/spot" or tf != "1s"]
    timeframe = draw(st.sampled_from(timeframes))
    period = draw(st.sampled_from(PERIODS))
    day = draw(st.dates(date(2017, 8, 1), date(2030, 12, 31)))
    if period == "monthly":
        day = day.replace(day=1)
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    window = archive_file("http://x", prefix, "BTCUSDT", timeframe, period, start).window
    interval = TIMEFRAMES[timeframe]
    slots = draw(st.sets(st.integers(0, window.bars(interval) - 1), max_size=25))
    fmt = draw(number_text)
    rows: list[Row] = []
    for slot in sorted(slots):
        values = draw(st.lists(price, min_size=4, max_size=4))
        volume = draw(st.floats(min_value=0, max_value=1e9))
        o, h, l, c = values[0], max(values), min(values), values[1]
        rows.append((window.start + slot * interval, *map(fmt, (o, h, l, c, volume))))
    micros, header = draw(st.booleans()), draw(st.booleans())
    body = kline_csv(rows, interval=interval, micros=micros, header=header)
    return RoundTrip(prefix, timeframe, period, start, rows, body)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=round_trips())
async def test_read_returns_exactly_the_bars_of_the_file(
    server: ArchiveServer, case: RoundTrip
) -> None:
    file = archive_file(server.url, case.prefix, "BTCUSDT", case.timeframe, case.period, case.start)
    server.publish(file, zip_bytes({file.name.replace(".zip", ".csv"): case.body}))
    async with ArchiveReader() as reader:
        got = await reader.read(file, TIMEFRAMES[case.timeframe])
        assert await spool_entries(reader) == []
    expected = np.array(
        [[ts * 1000, *(float(x) for x in values)] for ts, *values in case.rows], dtype=np.float64
    ).reshape(-1, 6)
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert reader.files_read == 1 and reader.requests == 2 and reader.problems == 0


async def test_counters_and_spool_directory(server: ArchiveServer, tmp_path: Path) -> None:
    file = jan_file(server)
    body = zip_bytes(
        {
            "BTCUSDT-1m-2024-01.csv": kline_csv(
                bars(JAN_2024, 44_640), interval=60, micros=False, header=False
            )
        }
    )
    server.publish(file, body)
    own = tmp_path / "spool"
    async with ArchiveReader(directory=own, chunk_bytes=4096) as reader:
        got = await reader.read(file, 60)
        assert got.shape == (44_640, 6)
        assert got[-1, 0] == (JAN_2024 + 44_639 * 60) * 1000
        checksum_size = len(server.files[urlsplit(file.checksum_url).path])
        assert reader.bytes_downloaded == len(body) + checksum_size
        assert (reader.files_read, reader.requests, reader.problems) == (1, 2, 0)
    assert await asyncio.to_thread(own.is_dir)  # a directory given is left in place, empty
    assert await asyncio.to_thread(os.listdir, own) == []
    private = ArchiveReader()
    server.publish(file, body)
    await private.read(file, 60)
    made = private.directory
    assert made is not None
    await private.aclose()
    assert not await asyncio.to_thread(made.exists)
    with pytest.raises(RuntimeError, match="closed"):
        await private.read(file, 60)


async def test_interval_must_match_the_file(server: ArchiveServer) -> None:
    async with ArchiveReader() as reader:
        with pytest.raises(ValueError, match="timeframe"):
            await reader.read(jan_file(server), 300)
    assert reader.requests == 0


# -- every problem kind ----------------------------------------------------------------------

CSV_NAME = "BTCUSDT-1m-2024-01.csv"
GOOD = kline_csv(bars(JAN_2024, 5), interval=60, micros=False, header=False)
Sabotage = Callable[[ArchiveServer, ArchiveFile], None]


def serve(members: dict[str, bytes], checksum: bytes | None = None) -> Sabotage:
    """Serve a zip of ``members`` (and its right CHECKSUM unless ``checksum`` is given)."""
    return lambda s, f: s.publish(f, zip_bytes(members), checksum)


def extra_row(
    ts_ms: int = 1_704_067_500_000, ohlcv: str = "1,2,1,1,1", tail: str = "1,2,3,4,0"
) -> Sabotage:
    """Serve the five good bars and one more row (close_time follows ``ts_ms``)."""
    return serve({CSV_NAME: GOOD + f"{ts_ms},{ohlcv},{ts_ms + 59_999},{tail}\n".encode()})


def misbehave(target: str, mode: str, body: bytes = GOOD) -> Sabotage:
    def sabotage(s: ArchiveServer, f: ArchiveFile) -> None:
        s.publish(f, zip_bytes({CSV_NAME: body}))
        s.behaviour[urlsplit(f.checksum_url if target == "CHECKSUM" else f.url).path] = mode

    return sabotage


def no_zip(s: ArchiveServer, f: ArchiveFile) -> None:
    s.files[urlsplit(f.checksum_url).path] = f"{'0' * 64}  {f.name}".encode()


ZIP_NAME = "BTCUSDT-1m-2024-01.zip"
SHA = hashlib.sha256(zip_bytes({CSV_NAME: GOOD})).hexdigest()
CASES: dict[str, tuple[str, Sabotage]] = {
    "404 zip": ("missing", no_zip),
    "404 CHECKSUM": ("missing", serve({CSV_NAME: GOOD}, b"")),
    "checksum mismatch": ("checksum", serve({CSV_NAME: GOOD}, f"{'ab' * 32}  {ZIP_NAME}".encode())),
    "malformed CHECKSUM": ("checksum", serve({CSV_NAME: GOOD}, b"<html>oops</html>")),
    "CHECKSUM of another file": ("checksum", serve({CSV_NAME: GOOD}, f"{SHA}  ETH.zip".encode())),
    "not a zip": ("corrupt", lambda s, f: s.publish(f, b"PK\x03\x04 this is not a zip")),
    "two members": ("corrupt", serve({CSV_NAME: GOOD, "extra.csv": GOOD})),
    "no CSV member": ("corrupt", serve({"readme.txt": GOOD})),
    "short row": ("corrupt", extra_row(tail="1,2,3,4")),
    "text in a number": ("corrupt", extra_row(tail="x,2,3,4,0")),
    "NaN price": ("corrupt", extra_row(ohlcv="NaN,2,1,1,1")),
    "zero price": ("corrupt", extra_row(ohlcv="0,2,1,1,1")),
    "high < low": ("corrupt", extra_row(ohlcv="1,1,2,1,1")),
    "negative volume": ("corrupt", extra_row(ohlcv="1,2,1,1,-1")),
    "off-grid ts": ("corrupt", extra_row(ts_ms=1_704_067_501_000)),
    "ts outside the window": ("corrupt", extra_row(ts_ms=1_706_745_600_000)),
    "duplicate ts": ("corrupt", extra_row(ts_ms=1_704_067_440_000)),
    "unsorted ts": ("corrupt", extra_row(ts_ms=1_704_067_380_000)),
    "ms then µs": ("corrupt", extra_row(ts_ms=1_704_067_500_000_000)),
    "503 zip": ("unavailable", misbehave("zip", "503")),
    "503 CHECKSUM": ("unavailable", misbehave("CHECKSUM", "503")),
    "connection dropped": ("unavailable", misbehave("zip", "drop", GOOD * 200)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
async def test_each_problem_has_its_kind_and_leaves_nothing_behind(
    server: ArchiveServer, case: str
) -> None:
    kind, sabotage = CASES[case]
    file = jan_file(server)
    sabotage(server, file)
    async with ArchiveReader() as reader:
        with pytest.raises(ArchiveProblem) as caught:
            await reader.read(file, 60)
        assert await spool_entries(reader) == []
    problem = caught.value
    assert (problem.kind, problem.file) == (kind, file)
    assert problem.retryable is (kind == "unavailable")
    assert file.name in str(problem) and "\n" not in str(problem)
    assert (reader.problems, reader.files_read) == (1, 0)


async def test_a_stalled_download_times_out_as_unavailable(server: ArchiveServer) -> None:
    file = jan_file(server)
    server.publish(file, zip_bytes({CSV_NAME: GOOD * 200}))
    server.behaviour[urlsplit(file.url).path] = "stall"
    async with ArchiveReader(timeout_s=0.2) as reader:
        with pytest.raises(ArchiveProblem) as caught:
            await reader.read(file, 60)
        assert await spool_entries(reader) == []
    assert caught.value.kind == "unavailable"


async def test_a_cancelled_read_removes_its_temp_file(server: ArchiveServer) -> None:
    file = jan_file(server)
    server.publish(file, zip_bytes({CSV_NAME: GOOD * 200}))
    server.behaviour[urlsplit(file.url).path] = "stall"
    async with ArchiveReader() as reader:
        task = asyncio.create_task(reader.read(file, 60))
        await server.stalled.wait()
        await asyncio.sleep(0.05)  # let the reader take in the half body it was sent
        assert reader.bytes_downloaded > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await spool_entries(reader) == []


async def test_an_oversized_zip_is_refused_before_it_is_spooled(server: ArchiveServer) -> None:
    file = archive_file(server.url, "data/spot", "BTCUSDT", "1d", "daily", JAN_2024)
    server.publish(file, b"\0" * 200_000)  # more than one daily bar's CSV can ever be
    async with ArchiveReader() as reader:
        with pytest.raises(ArchiveProblem, match="bytes") as caught:
            await reader.read(file, 86_400)
    assert caught.value.kind == "corrupt"


async def test_header_only_and_empty_files_give_no_bars(server: ArchiveServer) -> None:
    async with ArchiveReader() as reader:
        for day, body in enumerate([HEADER, b""]):
            start = JAN_2024 + day * 86_400
            file = archive_file(server.url, "data/futures/um", "BTCUSDT", "1m", "daily", start)
            server.publish(file, zip_bytes({file.name.replace(".zip", ".csv"): body}))
            assert (await reader.read(file, 60)).shape == (0, 6)


# -- concurrency -----------------------------------------------------------------------------


async def test_concurrency_never_exceeds_max_concurrent_downloads(server: ArchiveServer) -> None:
    server.delay_s = 0.03
    files = [
        archive_file(server.url, "data/spot", "BTCUSDT", "1h", "daily", JAN_2024 + d * 86_400)
        for d in range(12)
    ]
    for f in files:
        server.publish(
            f,
            zip_bytes(
                {
                    "x.csv": kline_csv(
                        bars(f.window.start, 24, 3600), interval=3600, micros=True, header=False
                    )
                }
            ),
        )
    async with ArchiveReader(max_concurrent_downloads=3) as reader:
        results = await asyncio.gather(*(reader.read(f, 3600) for f in files))
    assert server.max_in_flight == 3  # reached, never exceeded
    assert [r.shape for r in results] == [(24, 6)] * 12
    assert (reader.files_read, reader.requests) == (12, 24)


# -- locating files --------------------------------------------------------------------------


def epoch(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())


def test_archive_file_names_urls_and_windows() -> None:
    base = "https://data.binance.vision"
    month = archive_file(base, "data/spot", "BTCUSDT", "1m", "monthly", JAN_2024)
    assert month.url == (
        "https://data.binance.vision/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01.zip"
    )
    assert month.checksum_url == month.url + ".CHECKSUM"
    assert (month.label, month.name, month.window) == (
        "2024-01", "BTCUSDT-1m-2024-01.zip", Range(JAN_2024, epoch(2024, 2, 1)),
    )  # fmt: skip
    assert archive_file(base + "/", "data/spot", "BTCUSDT", "1m", "monthly", JAN_2024) == month
    leap = archive_file(base, "data/futures/um", "ETHUSDT", "5m", "daily", epoch(2024, 2, 29))
    assert leap.url.endswith("/data/futures/um/daily/klines/ETHUSDT/5m/ETHUSDT-5m-2024-02-29.zip")
    assert leap.window == Range(epoch(2024, 2, 29), epoch(2024, 3, 1))
    february = archive_file(base, "data/spot", "BTCUSDT", "1d", "monthly", epoch(2024, 2, 1))
    assert february.window.bars(86_400) == 29
    december = archive_file(base, "data/spot", "BTCUSDT", "1h", "monthly", epoch(2023, 12, 1))
    assert (december.label, december.window) == ("2023-12", Range(epoch(2023, 12, 1), JAN_2024))
    assert archive_file(base, "data/spot", "BTCUSDT", "1s", "daily", JAN_2024).timeframe == "1s"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("data/spot", "BTCUSDT", "1m", "monthly", JAN_2024 + 3600), "day boundary"),
        (("data/spot", "BTCUSDT", "1m", "daily", JAN_2024 + 1), "day boundary"),
        (("data/spot", "BTCUSDT", "1m", "monthly", epoch(2024, 1, 15)), "first day"),
        (("data/spot", "BTCUSDT", "1m", "weekly", JAN_2024), "period"),
        (("data/spot", "BTCUSDT", "1m", "daily", True), "int epoch"),
        (("data/spot", "BTCUSDT", "1m", "daily", 10**20), "out of range"),
        (("data/spot", "BTCUSDT", "1w", "daily", JAN_2024), "not archived"),
        (("data/futures/um", "BTCUSDT", "1s", "daily", JAN_2024), "not archived"),
        (("data/futures/cm", "BTCUSD_PERP", "1m", "daily", JAN_2024), "prefix"),
        (("data/spot", "BTC/USDT", "1m", "daily", JAN_2024), "symbol_id"),
        (("data/spot", "../../x", "1m", "daily", JAN_2024), "symbol_id"),
    ],
)
def test_archive_file_refuses_what_has_no_file(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        archive_file("https://data.binance.vision", *args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base_url"):
        archive_file("ftp://host", "data/spot", "BTCUSDT", "1m", "daily", JAN_2024)


@pytest.mark.parametrize(
    ("exchange_id", "market_type", "prefix"),
    [
        ("binance", "spot", "data/spot"),
        ("binance", "swap", "data/futures/um"),
        ("binance", "future", "data/futures/um"),
        ("binanceusdm", "swap", "data/futures/um"),
        ("binanceusdm", "future", "data/futures/um"),
        ("binanceusdm", "spot", "data/futures/um"),
        ("binance", "margin", None),
        ("binance", "option", None),
        ("binancecoinm", "swap", None),
        ("okx", "spot", None),
        ("bybit", "swap", None),
    ],
)
def test_archive_prefix(exchange_id: str, market_type: str, prefix: str | None) -> None:
    assert archive_prefix(exchange_id, market_type) == prefix
