"""``CcxtLiveFeed`` with the real ccxt.pro client against the simulator's real websocket (no
mocks), on 1 s bars pushed every 50 ms and the system clock, so that each case takes a few
seconds of wall time; and the simulator's websocket faults on demand (``/_sim/ws/drop``,
``/_sim/ws/pause``) on a raw websocket.

The drop case heals through a real :class:`DataFetcherAutoBackfiller` (the REST fetcher of
``build_fetchers``) into a real DuckDB file, then checks that streamed and stored bars
together cover every second of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import pytest

from qmtl.runtime.io import DataFetcherAutoBackfiller, open_storage
from qmtl.runtime.io.ccxt_live_feed import CcxtLiveFeed, _Tracker
from qmtl.runtime.io.composition import build_fetchers
from qmtl.runtime.sdk.bars import bar_open_at, empty_frame
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.config import QMTLConfig, load_config
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.history_storage import HistoryStorage
from qmtl.runtime.sdk.live_feed import LiveDataFeed, LiveUpdate
from qmtl.services.exchange_sim import Scenario, SimulatorServer, run_simulator

NODE = "ohlcv:binance:BTC/USDT:1s"
LOGGER = "qmtl.runtime.io.ccxt_live_feed"
T0 = 1_700_000_040
Feeds = Callable[..., CcxtLiveFeed]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    scenario = Scenario.from_dict({"seed": 5, "ws_push_interval_ms": 50})
    async with run_simulator(scenario) as server:  # the system clock: ccxt sees real time
        yield server


def config_for(sim: SimulatorServer, **ws: Any) -> QMTLConfig:
    urls = {"rest": sim.base_url, "ws": sim.ws_url}
    return load_config(
        {
            "seamless": {"live": {"ws": {"enabled": True, **ws}}},
            "exchanges": {
                "binance": {"symbols": ["BTC/USDT"], "timeframes": ["1s"], "urls": urls},
                "bitbank": {"symbols": ["BTC/JPY"], "urls": {"rest": sim.base_url}},
            },
        },
        env={},
    )


@pytest.fixture
async def feeds(sim: SimulatorServer) -> AsyncIterator[Feeds]:
    made: list[CcxtLiveFeed] = []

    def make(config: QMTLConfig | None = None, **kwargs: Any) -> CcxtLiveFeed:
        made.append(CcxtLiveFeed(config or config_for(sim), **kwargs))
        return made[-1]

    yield make
    for feed in made:
        await feed.aclose()


def closed_bars(updates: list[LiveUpdate]) -> pd.DataFrame:
    frames = [u.bars for u in updates if not u.forming and len(u.bars)]
    return pd.concat(frames, ignore_index=True) if frames else empty_frame()


async def post(sim: SimulatorServer, path: str, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.base_url}{path}", data=json.dumps(body)) as resp,
    ):
        return resp.status, await resp.json()


async def test_closed_bars_arrive_once_in_order_equal_to_rest(
    sim: SimulatorServer, feeds: Feeds
) -> None:
    config = config_for(sim, emit_building_candle=True)
    feed = feeds(config)
    assert isinstance(feed, LiveDataFeed)
    updates: list[LiveUpdate] = []
    async with contextlib.aclosing(feed.stream(NODE, 1)) as stream:
        async for update in stream:
            updates.append(update)
            if sum(len(u.bars) for u in updates if not u.forming) >= 4:
                break
    bars = closed_bars(updates)
    assert np.array_equal(bars["ts"], np.arange(bars["ts"].iloc[0], bars["ts"].iloc[0] + len(bars)))
    assert not any(u.reconnected or u.healed or u.failed for u in updates)
    forming = [u for u in updates if u.forming]
    assert forming and all(len(u.bars) == 1 for u in forming)
    assert forming[0].bars["ts"].iloc[0] == bars["ts"].iloc[0]  # forming first, closed later
    latest = await asyncio.wait_for(feed.latest_bars(NODE, 1, int(bars["ts"].iloc[0])), 3)
    assert latest["ts"].iloc[-1] + 1 <= time.time()  # never the forming bar
    pd.testing.assert_frame_equal(latest.iloc[: len(bars)], bars)
    fetcher = build_fetchers(config)["binance"]
    try:
        start, end = int(bars["ts"].iloc[0]), int(bars["ts"].iloc[-1]) + 1
        rest = await fetcher.fetch(start, end, node_id=NODE, interval=1)
    finally:
        await fetcher.aclose()
    pd.testing.assert_frame_equal(bars, rest)
    assert list(bars.dtypes) == [np.int64] + [np.float64] * 5


@dataclass
class Healer:
    """``heal`` wired to a real backfill into a real DuckDB file; records every span."""

    backfiller: DataFetcherAutoBackfiller
    store: HistoryStorage
    spans: list[Range] = field(default_factory=list)
    before_backfill: Callable[[], Awaitable[None]] | None = None

    async def heal(self, node_id: str, interval: int, span: Range) -> tuple[Range, ...]:
        self.spans.append(span)
        if self.before_backfill is not None:
            await self.before_backfill()
        report = await self.backfiller.backfill(node_id, interval, [span])
        return tuple(report.failed)


@pytest.fixture
async def healer(sim: SimulatorServer, tmp_path: Path) -> AsyncIterator[Healer]:
    fetcher = build_fetchers(config_for(sim))["binance"]
    store = open_storage(f"duckdb:///{tmp_path / 'hot.duckdb'}")
    backfiller = DataFetcherAutoBackfiller(fetcher, store)
    async with store:
        yield Healer(backfiller, store)
        await backfiller.aclose()
        await fetcher.aclose()


async def test_drop_reconnects_and_heals_exactly_the_missed_span(
    sim: SimulatorServer, feeds: Feeds, healer: Healer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    feed = feeds(config_for(sim, reconnect_backoff_ms=[1100, 2000]), heal=healer.heal)
    updates: list[LiveUpdate] = []
    async with contextlib.aclosing(feed.stream(NODE, 1)) as stream:
        async for update in stream:
            updates.append(update)
            notices = [i for i, u in enumerate(updates) if u.reconnected]
            if not caplog.records and len(closed_bars(updates)) >= 2:  # not dropped yet
                drop = await post(sim, "/_sim/ws/drop", {"symbol": "BTCUSDT"})
                assert drop == (200, {"dropped": 1})
                await asyncio.sleep(0.2)  # the feed notices (and logs) the cut
            if notices and len(closed_bars(updates[notices[0] :])) >= 2:
                break
    [at] = [i for i, u in enumerate(updates) if u.reconnected]
    notice = updates[at]
    before, after = closed_bars(updates[:at]), closed_bars(updates[at:])
    [span] = healer.spans
    assert span == Range(int(before["ts"].iloc[-1]) + 1, int(after["ts"].iloc[0]))
    assert span.end - span.start >= 1  # 1.1 s away: a new second began
    assert notice.healed == (span,) and notice.failed == () and notice.bars.empty
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.delay_ms == 1100  # type: ignore[attr-defined]
    assert "NetworkError" in record.error  # type: ignore[attr-defined]
    stored = await healer.store.read_range(NODE, span.start, span.end)
    covered = sorted([*before["ts"], *stored["ts"], *after["ts"]])
    assert covered == list(range(covered[0], covered[-1] + 1))  # every second, once


async def test_a_drop_while_healing_is_caught_too_and_no_bar_is_taken_half_formed(
    sim: SimulatorServer, feeds: Feeds, healer: Healer, caplog: pytest.LogCaptureFixture
) -> None:
    """ccxt re-dials silently when a socket drops while nobody awaits it (here: during the
    first heal); the feed's hook still sees it, and the bar forming then is healed, never
    delivered with the values it had when the socket went."""
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def drop_again() -> None:
        if len(healer.spans) == 1:
            await asyncio.sleep(1.2)  # ccxt keeps reading: updates pile up unread
            assert sim.drop_websockets() == 1
            await asyncio.sleep(1.2)

    healer.before_backfill = drop_again
    feed = feeds(config_for(sim, reconnect_backoff_ms=[1100]), heal=healer.heal)
    updates: list[LiveUpdate] = []
    async with contextlib.aclosing(feed.stream(NODE, 1)) as stream:
        async for update in stream:
            updates.append(update)
            if not caplog.records and len(closed_bars(updates)) >= 1:
                sim.drop_websockets()
                await asyncio.sleep(0.2)
            notices = [i for i, u in enumerate(updates) if u.reconnected]
            if len(notices) == 2 and len(closed_bars(updates[notices[1] :])) >= 1:
                break
    assert [r.delay_ms for r in caplog.records] == [1100, 0]  # type: ignore[attr-defined]
    notices = [u for u in updates if u.reconnected]
    assert [n.healed for n in notices] == [(s,) for s in healer.spans]
    stored = await healer.store.read_range(NODE, 0, 2**40)
    streamed = closed_bars(updates)
    covered = sorted([*streamed["ts"], *stored["ts"]])
    assert covered == list(range(covered[0], covered[-1] + 1))  # every second, once
    start, end = int(streamed["ts"].iloc[0]), int(streamed["ts"].iloc[-1]) + 1
    rest = await healer.backfiller.fetcher.fetch(start, end, node_id=NODE, interval=1)
    pd.testing.assert_frame_equal(
        streamed, rest.loc[rest["ts"].isin(streamed["ts"])].reset_index(drop=True)
    )


async def test_paused_feed_stalls_latest_bars_then_resumes(
    sim: SimulatorServer, feeds: Feeds
) -> None:
    feed = feeds()
    updates: list[LiveUpdate] = []

    async def collect() -> None:
        async for update in feed.stream(NODE, 1):
            updates.append(update)

    collector = asyncio.create_task(collect())
    try:
        await asyncio.wait_for(feed.latest_bars(NODE, 1, 0), 5)  # subscribed: bars flow
        await asyncio.sleep(1.1)
        assert len(await asyncio.wait_for(feed.latest_bars(NODE, 1, 0), 2)) >= 1
        assert await post(sim, "/_sim/ws/pause", {"seconds": 2.5}) == (200, {"paused_s": 2.5})
        await asyncio.sleep(1.2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(feed.latest_bars(NODE, 1, 0), 0.8)
        stalled = await asyncio.wait_for(feed.latest_bars(NODE, 1, 0), 3)  # pause over
        await asyncio.sleep(1.1)
        bars = await asyncio.wait_for(feed.latest_bars(NODE, 1, 0), 2)
        assert int(bars["ts"].iloc[-1]) >= bar_open_at(time.time(), 1) - 2  # flowing again
    finally:
        collector.cancel()
    [at] = [i for i, u in enumerate(updates) if u.failed]  # no heal: the stalled span is reported
    notice = updates[at]
    assert not notice.reconnected and notice.healed == ()
    [span] = notice.failed
    assert span.end - span.start >= 1
    assert stalled["ts"].iloc[-1] == span.start - 1  # the bar forming at the pause, now closed
    assert closed_bars(updates[:at])["ts"].iloc[-1] == span.start - 1
    assert not any(span.start <= ts < span.end for ts in closed_bars(updates)["ts"])


async def test_unknown_symbol_or_exchange_without_websocket_is_a_clear_error(
    sim: SimulatorServer, feeds: Feeds
) -> None:
    feed = feeds()
    with pytest.raises(ValueError, match="'DOGE/USDT' is not a market of binance"):
        await asyncio.wait_for(feed.latest_bars("ohlcv:binance:DOGE/USDT:1s", 1, 0), 5)
    with pytest.raises(ValueError, match="DOGE/USDT"):  # a stream says so too
        await asyncio.wait_for(anext(feed.stream("ohlcv:binance:DOGE/USDT:1s", 1)), 5)
    with pytest.raises(ValueError, match=r"no websocket OHLCV feed .* 'bitbank'"):
        await feed.latest_bars("ohlcv:bitbank:BTC/JPY:1m", 60, 0)
    with pytest.raises(ValueError, match="exchange 'okx' is not configured"):
        await feed.latest_bars("ohlcv:okx:BTC/USDT:1s", 1, 0)
    with pytest.raises(ValueError, match="does not match timeframe"):
        await feed.latest_bars(NODE, 60, 0)
    await feed.aclose()
    await feed.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await feed.latest_bars(NODE, 1, 0)


def test_tracker_closes_a_bar_when_a_later_one_arrives_and_names_missed_spans() -> None:
    tracker = _Tracker(1)

    def row(ts: int, close: float) -> tuple[int, float, float, float, float, float]:
        return (ts, 1.0, 2.0, 0.5, close, 3.0)

    assert tracker.add([row(10, 1.0), row(10, 1.5)]) == []  # forming, updated
    assert tracker.add([row(11, 1.0)]) == [row(10, 1.5)]  # final values of 10
    assert tracker.add([row(10, 9.0)]) == []  # late update of a closed bar: ignored
    tracker.lost()  # 11 was forming: its last values may not be final
    assert tracker.add([row(14, 1.0)]) == [Range(11, 14)]
    assert tracker.add([row(15, 1.0), row(17, 1.0)]) == [row(14, 1.0), row(15, 1.0), Range(16, 17)]
    tracker.lost()
    assert tracker.add([row(17, 2.0)]) == []  # back within the same bar: nothing missed
    assert tracker.cursor == 17 and tracker.forming == row(17, 2.0)


# -- the simulator's websocket faults ------------------------------------------------------------


async def _subscribe(ws: aiohttp.ClientWebSocketResponse, stream: str) -> dict[str, Any]:
    await ws.send_json({"method": "SUBSCRIBE", "params": [stream], "id": 1})
    assert json.loads((await asyncio.wait_for(ws.receive(), 5)).data) == {"result": None, "id": 1}
    event: dict[str, Any] = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
    return event


async def test_sim_drop_cuts_connections_abruptly_by_symbol() -> None:
    scenario = Scenario.from_dict({"ws_push_interval_ms": 20})
    async with (
        run_simulator(scenario, clock=FakeClock(T0 + 0.0)) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_url}/stream/ws/0") as btc,
        http.ws_connect(f"{sim.ws_url}/stream/ws/1") as eth,
    ):
        await _subscribe(btc, "btcusdt@kline_1m")
        await _subscribe(eth, "ethusdt@kline_1m")
        assert await post(sim, "/_sim/ws/drop", {"symbol": "ETH/USDT"}) == (200, {"dropped": 1})
        message = await asyncio.wait_for(eth.receive(), 5)
        while message.type == aiohttp.WSMsgType.TEXT:  # pushes already on their way
            message = await asyncio.wait_for(eth.receive(), 5)
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert eth.close_code != 1000  # no orderly close: the socket was cut
        assert (await asyncio.wait_for(btc.receive(), 5)).type == aiohttp.WSMsgType.TEXT
        assert sim.drop_websockets("BTCUSDT") == 1
        message = await asyncio.wait_for(btc.receive(), 5)
        while message.type == aiohttp.WSMsgType.TEXT:
            message = await asyncio.wait_for(btc.receive(), 5)
        await asyncio.sleep(0.1)  # the server's handlers notice the cut sockets
        assert await post(sim, "/_sim/ws/drop", {}) == (200, {"dropped": 0})
        for body in ({"symbol": 5}, [1]):
            assert (await post(sim, "/_sim/ws/drop", body))[0] == 400


async def test_sim_pause_stalls_pushes_then_resumes_with_the_closed_bar() -> None:
    clock = FakeClock(T0 + 0.5)
    scenario = Scenario.from_dict({"ws_push_interval_ms": 20})
    async with (
        run_simulator(scenario, clock=clock) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_url}/stream/ws/0") as ws,
    ):
        first = await _subscribe(ws, "btcusdt@kline_1s")
        assert (first["k"]["t"], first["k"]["x"]) == (T0 * 1000, False)
        assert await post(sim, "/_sim/ws/pause", {"seconds": 60}) == (200, {"paused_s": 60})
        while True:  # drain what was pushed before the pause
            try:
                await asyncio.wait_for(ws.receive(), 0.2)
            except TimeoutError:
                break
        clock.advance(3)  # bars T0+1 and T0+2 open and close during the pause
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.3)
        assert not ws.closed
        sim.pause_websockets(0)  # resume
        closed = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        following = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        assert (closed["k"]["t"], closed["k"]["x"]) == (T0 * 1000, True)
        assert (following["k"]["t"], following["k"]["x"]) == ((T0 + 3) * 1000, False)
        for body in ({"seconds": -1}, {"seconds": True}, {}, "x"):
            assert (await post(sim, "/_sim/ws/pause", body))[0] == 400
        with pytest.raises(ValueError, match="seconds"):
            sim.pause_websockets(4000)
