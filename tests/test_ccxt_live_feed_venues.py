"""``CcxtLiveFeed`` on Binance USD-M futures (``binanceusdm``) and OKX (``okx``), with the real
ccxt.pro clients against the simulator's websockets in each venue's wire format: USD-M
klines on ``/market/ws/<n>`` (ccxt's ``linear`` socket), OKX ``candle1m`` on
``/ws/v5/business``.

Both run 1 m bars — OKX has nothing shorter in ccxt (its ``timeframes`` start at ``1m``), and
Binance USD-M serves no ``1s`` klines — on a fake simulator clock that the test moves a
minute at a time, while pushes go out every 20 ms of wall time: each case takes about a
second. The feed's own clock is the system one (it only dates updates and paces reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest

from qmtl.runtime.io import DataFetcherAutoBackfiller, open_storage
from qmtl.runtime.io.ccxt_live_feed import CcxtLiveFeed
from qmtl.runtime.io.composition import build_fetchers
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.config import QMTLConfig, load_config
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.live_feed import LiveUpdate
from qmtl.services.exchange_sim import Scenario, SimulatorServer, run_simulator
from tests.test_ccxt_live_feed import Healer, closed_bars, post

T0 = 1_700_000_040  # a minute boundary
M = 60
VENUES = [
    pytest.param("binanceusdm", "swap", "BTC/USDT:USDT", id="binance-usdm"),
    pytest.param("okx", "spot", "BTC/USDT", id="okx"),
]
venues = pytest.mark.parametrize(("venue", "market_type", "symbol"), VENUES)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 1.0)


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[SimulatorServer]:
    scenario = Scenario.from_dict({"seed": 5, "ws_push_interval_ms": 20})
    async with run_simulator(scenario, clock=clock) as server:
        yield server


def venue_config(
    sim: SimulatorServer, venue: str, market_type: str, symbol: str, **ws: Any
) -> QMTLConfig:
    urls = {"rest": sim.base_url, "ws": sim.ws_url}
    entry = {"symbols": [symbol], "timeframes": ["1m"], "urls": urls, "market_type": market_type}
    return load_config(
        {"seamless": {"live": {"ws": {"enabled": True, **ws}}}, "exchanges": {venue: entry}},
        env={},
    )


@dataclass
class Updates:
    """A feed's stream, collected; :meth:`until` waits (at most 5 s) for a condition on it."""

    items: list[LiveUpdate] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def collect(self, stream: AsyncIterator[LiveUpdate]) -> None:
        async for update in stream:
            self.items.append(update)
            self.arrived.set()

    async def until(self, condition: Callable[[list[LiveUpdate]], bool]) -> None:
        async with asyncio.timeout(5):
            while not condition(self.items):
                self.arrived.clear()
                await self.arrived.wait()


def closed_ts(updates: list[LiveUpdate]) -> list[int]:
    return [int(ts) for ts in closed_bars(updates)["ts"]]


def forming_ts(updates: list[LiveUpdate]) -> list[int]:
    return [int(u.bars["ts"].iloc[0]) for u in updates if u.forming]


@venues
async def test_closed_bars_equal_rest_and_a_drop_reconnects_and_heals(
    sim: SimulatorServer,
    clock: FakeClock,
    tmp_path: Path,
    venue: str,
    market_type: str,
    symbol: str,
) -> None:
    node = f"ohlcv:{venue}:{symbol}:1m"
    config = venue_config(
        sim, venue, market_type, symbol, emit_building_candle=True, reconnect_backoff_ms=[50]
    )
    fetcher = build_fetchers(config)[venue]
    store = open_storage(f"duckdb:///{tmp_path / 'hot.duckdb'}")
    backfiller = DataFetcherAutoBackfiller(fetcher, store)
    healer = Healer(backfiller, store)
    feed = CcxtLiveFeed(config, heal=healer.heal)
    collected = Updates()
    async with store:
        collector = asyncio.create_task(collected.collect(feed.stream(node, M)))
        try:
            await collected.until(lambda u: T0 in forming_ts(u))  # subscribed; bar forming
            clock.advance(M)
            await collected.until(lambda u: closed_ts(u) == [T0])  # pushed as it closed
            clock.advance(M)
            await collected.until(lambda u: T0 + 2 * M in forming_ts(u))
            assert closed_ts(collected.items) == [T0, T0 + M]
            assert sim.drop_websockets(symbol) == 1
            clock.advance(2 * M)  # T0+2M (forming at the cut) and T0+3M are never pushed
            await collected.until(lambda u: any(x.reconnected for x in u))
            clock.advance(M)
            await collected.until(lambda u: T0 + 4 * M in closed_ts(u))
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            await feed.aclose()
        updates = collected.items
        [at] = [i for i, u in enumerate(updates) if u.reconnected]
        span = Range(T0 + 2 * M, T0 + 4 * M)
        assert healer.spans == [span]
        notice = updates[at]
        assert notice.healed == (span,) and notice.failed == () and notice.bars.empty
        assert closed_ts(updates[:at]) == [T0, T0 + M]
        assert closed_ts(updates[at:]) == [T0 + 4 * M]
        streamed = closed_bars(updates)
        stored = await store.read_range(node, span.start, span.end)
        try:
            rest = await fetcher.fetch(T0, T0 + 5 * M, node_id=node, interval=M)
        finally:
            await backfiller.aclose()
            await fetcher.aclose()
    assert rest["ts"].tolist() == list(range(T0, T0 + 5 * M, M))
    # websocket and REST agree bar for bar; the healed bars fill the gap exactly
    pd.testing.assert_frame_equal(streamed, rest.iloc[[0, 1, 4]].reset_index(drop=True))
    pd.testing.assert_frame_equal(stored, rest.iloc[[2, 3]].reset_index(drop=True))


# -- the simulator's websockets in each venue's wire format ------------------------------------


def _wire(venue: str) -> tuple[str, dict[str, Any], str]:
    """(path, subscribe request, the symbol's spelling on the venue)."""
    if venue == "okx":
        arg = {"channel": "candle1m", "instId": "BTC-USDT"}
        return "/ws/v5/business", {"op": "subscribe", "args": [arg]}, "BTC-USDT"
    request = {"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 1}
    return "/market/ws/0", request, "BTCUSDT"


def _bar(venue: str, message: dict[str, Any]) -> tuple[int, bool]:
    """(open time ms, closed) of a push."""
    if venue == "okx":
        row = message["data"][0]
        return int(row[0]), row[8] == "1"
    return int(message["k"]["t"]), bool(message["k"]["x"])


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
    return json.loads((await asyncio.wait_for(ws.receive(), 5)).data)


@venues
async def test_sim_websocket_speaks_the_venue_format_and_obeys_pause_and_drop(
    sim: SimulatorServer, clock: FakeClock, venue: str, market_type: str, symbol: str
) -> None:
    path, subscribe, spelling = _wire(venue)
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{sim.ws_url}{path}") as ws:
        await ws.send_json(subscribe)
        ack = await _receive(ws)
        if venue == "okx":
            assert ack["event"] == "subscribe" and ack["arg"] == subscribe["args"][0]
            await ws.send_str("ping")  # OKX's text ping; ccxt drops a socket without pong
            while (message := await asyncio.wait_for(ws.receive(), 5)).data != "pong":
                pass
        else:
            assert ack == {"result": None, "id": 1}
        assert _bar(venue, await _receive(ws)) == (T0 * 1000, False)
        assert await post(sim, "/_sim/ws/pause", {"seconds": 60}) == (200, {"paused_s": 60})
        with contextlib.suppress(TimeoutError):
            while True:  # drain what was pushed before the pause
                await asyncio.wait_for(ws.receive(), 0.2)
        clock.advance(3 * M)  # T0+M and T0+2M open and close during the pause
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.2)
        sim.pause_websockets(0)
        assert _bar(venue, await _receive(ws)) == (T0 * 1000, True)  # final values, then now
        assert _bar(venue, await _receive(ws)) == ((T0 + 3 * M) * 1000, False)
        drop = await post(sim, "/_sim/ws/drop", {"symbol": spelling})
        assert drop == (200, {"dropped": 1})
        message = await asyncio.wait_for(ws.receive(), 5)
        while message.type == aiohttp.WSMsgType.TEXT:  # pushes already on their way
            message = await asyncio.wait_for(ws.receive(), 5)
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.close_code != 1000  # cut, not closed


async def test_okx_refuses_bad_requests_and_channels_it_does_not_serve(
    sim: SimulatorServer,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_url}/ws/v5/business") as ws,
    ):
        for request, code in [
            ("nope", "60012"),
            ({"op": "subscribe", "args": []}, "60012"),
            ({"op": "subscribe", "args": [{"channel": "candle1m"}]}, "60012"),
            (
                {"op": "subscribe", "args": [{"channel": "candle1m", "instId": "DOGE-USDT"}]},
                "60018",
            ),
            ({"op": "subscribe", "args": [{"channel": "candle7m", "instId": "BTC-USDT"}]}, "60018"),
            # Hong Kong-aligned bars are not simulated on the websocket (module docstring)
            ({"op": "subscribe", "args": [{"channel": "candle1D", "instId": "BTC-USDT"}]}, "60018"),
        ]:
            await (ws.send_str(request) if isinstance(request, str) else ws.send_json(request))
            answer = await _receive(ws)
            assert (answer["event"], answer["code"]) == ("error", code)
        arg = {"channel": "candle1Dutc", "instId": "BTC-USDT"}  # UTC-aligned days are
        await ws.send_json({"op": "subscribe", "args": [arg]})
        assert (await _receive(ws))["arg"] == arg
        assert _bar("okx", await _receive(ws))[0] == (T0 // 86_400) * 86_400_000
        await ws.send_json({"op": "unsubscribe", "args": [arg]})
        while "event" not in (answer := await _receive(ws)):  # pushes already on their way
            pass
        assert answer == {"event": "unsubscribe", "arg": arg, "connId": answer["connId"]}
