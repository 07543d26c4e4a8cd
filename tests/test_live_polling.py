"""``PollingLiveFeed``: the real ccxt fetcher against the in-process exchange simulator over
HTTP (system clock: bars close for real, 1s bars where a test must see them close), and a
model-based property test on a fake clock with a scripted exchange that publishes each bar
``delay`` seconds after its close and sometimes fails."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from qmtl.runtime.io.ccxt_fetcher import CcxtOHLCVFetcher
from qmtl.runtime.io.composition import build_fetchers
from qmtl.runtime.sdk.backfill_types import FetchWindowResult
from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS, bar_open_at, frame_from_columns
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.config import load_config
from qmtl.runtime.sdk.errors import ExchangeUnavailableError
from qmtl.runtime.sdk.history_coverage import Range, merge_ranges
from qmtl.runtime.sdk.live_feed import LiveDataFeed, LiveUpdate
from qmtl.runtime.sdk.live_polling import PollingLiveFeed
from qmtl.services.exchange_sim import Scenario, SimulatorServer, run_simulator

MINUTE_NODE = "ohlcv:binance:BTC/USDT:1m"
SECOND_NODE = "ohlcv:binance:BTC/USDT:1s"
DTYPES = {"ts": "int64"} | dict.fromkeys(CANONICAL_COLUMNS[1:], "float64")


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with run_simulator(Scenario.from_dict({"seed": 11})) as server:
        yield server


@pytest.fixture
async def fetcher(sim: SimulatorServer) -> AsyncIterator[CcxtOHLCVFetcher]:
    config = load_config(
        {
            "exchanges": {
                "binance": {
                    "symbols": ["BTC/USDT"],
                    "timeframes": ["1m", "1s"],
                    "urls": {"rest": sim.base_url},
                }
            }
        },
        env={},
    )
    real = build_fetchers(config)["binance"]
    yield real
    await real.aclose()


async def rest_bars(sim: SimulatorServer, tf: str, start: int, end: int) -> pd.DataFrame:
    """The simulator's bars with ``start <= ts < end`` as its REST API serves them."""
    query: dict[str, str | int] = {"symbol": "BTCUSDT", "interval": tf, "limit": 1000}
    query |= {"startTime": start * 1000, "endTime": end * 1000 - 1}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{sim.base_url}/api/v3/klines", params=query) as resp,
    ):
        rows = await resp.json()
    frame = pd.DataFrame([[r[0] // 1000, *map(float, r[1:6])] for r in rows])
    frame.columns = list(CANONICAL_COLUMNS)
    return frame.astype(DTYPES)


async def test_latest_bars_are_the_closed_bars_since_and_are_not_asked_twice(
    sim: SimulatorServer, fetcher: CcxtOHLCVFetcher
) -> None:
    feed: LiveDataFeed = PollingLiveFeed(fetcher)
    assert isinstance(feed, LiveDataFeed)
    before = time.time()
    since = bar_open_at(before, 60) - 10 * 60 - 17  # unaligned: the first bar opens after it
    got = await feed.latest_bars(MINUTE_NODE, 60, since)
    assert got.columns.tolist() == list(CANONICAL_COLUMNS)
    assert int(got["ts"].iloc[0]) == bar_open_at(since, 60) + 60
    assert int(got["ts"].iloc[-1]) >= bar_open_at(before, 60) - 60  # the newest closed one
    assert int(got["ts"].iloc[-1]) + 60 <= time.time()  # never the forming one
    assert (np.diff(got["ts"].to_numpy()) == 60).all()
    seen = len(sim.request_log.klines)
    again = await feed.latest_bars(MINUTE_NODE, 60, since)
    new = sim.request_log.klines[seen:]  # only a minute that closed meanwhile is asked for
    held_until_ms = (int(got["ts"].iloc[-1]) + 60) * 1000
    assert all(k.start_time is not None and k.start_time >= held_until_ms for k in new), new
    pd.testing.assert_frame_equal(again.iloc[: len(got)], got)
    expected = await rest_bars(sim, "1m", int(again["ts"].iloc[0]), int(again["ts"].iloc[-1]) + 60)
    pd.testing.assert_frame_equal(again, expected)
    await feed.aclose()
    await feed.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await feed.latest_bars(MINUTE_NODE, 60, since)


async def test_stream_yields_every_second_bar_once_in_order(
    sim: SimulatorServer, fetcher: CcxtOHLCVFetcher
) -> None:
    # emit_building_candle: the ccxt fetcher drops the forming bar, so none may come
    feed = PollingLiveFeed(fetcher, emit_building_candle=True)
    updates: list[LiveUpdate] = []
    started = time.time()
    async with contextlib.aclosing(feed.stream(SECOND_NODE, 1)) as stream:
        async for update in stream:
            updates.append(update)
            if update.received_at >= started + 4:
                break
    await feed.aclose()
    assert updates and not any(u.forming or u.reconnected or u.healed for u in updates)
    bars = pd.concat([u.bars for u in updates], ignore_index=True)
    ts = bars["ts"].to_numpy()
    assert int(ts[0]) in (bar_open_at(started, 1), bar_open_at(started, 1) + 1)
    assert (np.diff(ts) == 1).all(), ts  # each bar once, in order, none skipped
    assert int(ts[-1]) >= started + 2
    latencies = [u.received_at - (int(u.bars["ts"].iloc[-1]) + 1) for u in updates]
    print(f"bar close -> yield latency (s): {[round(x, 3) for x in latencies]}")
    assert all(0 <= x < 1.5 for x in latencies), latencies
    pd.testing.assert_frame_equal(bars, await rest_bars(sim, "1s", int(ts[0]), int(ts[-1]) + 1))


# -- the model: a scripted exchange on a fake clock -----------------------------------------


def final_bar(ts: int) -> tuple[float, ...]:
    return (float(ts), ts + 2.0, ts - 2.0, ts + 1.0, 10.0)


@dataclass
class Exchange:
    """Answers ``fetch_window`` from deterministic bars: a bar (or a halted slot, reported
    empty) is published ``delays[i]`` seconds after its close; the answer vouches for the
    published prefix of the window only. Call ``k`` fails when ``errors[k % len]``;
    ``sloppy``: every answer also carries the bar forming at its ``now``, whatever the window
    (a snapshot whose volume is 0.5, never the final bar). Each call takes ``latency_s``."""

    clock: FakeClock
    interval: int
    delays: list[float]
    halts: set[int]
    errors: list[bool]
    sloppy: bool = False
    latency_s: float = 0.0
    calls: list[tuple[int, int]] = field(default_factory=list)

    def published(self, ts: int, now: float) -> bool:
        delay = self.delays[(ts // self.interval) % len(self.delays)]
        return now >= ts + self.interval + delay

    async def fetch_window(
        self, start: int, end: int, *, node_id: str, interval: int
    ) -> FetchWindowResult:
        self.calls.append((start, end))
        await self.clock.sleep(self.latency_s)
        if self.errors[(len(self.calls) - 1) % len(self.errors)]:
            raise ExchangeUnavailableError("scripted 503", node_id=node_id, window=(start, end))
        now, cursor = self.clock.now(), start
        rows: list[tuple[float, ...]] = []
        empty: list[Range] = []
        while cursor < end and self.published(cursor, now):
            if cursor in self.halts:
                empty.append(Range(cursor, cursor + interval))
            else:
                rows.append((cursor, *final_bar(cursor)))
            cursor += interval
        forming = bar_open_at(now, interval)
        if self.sloppy and forming not in self.halts:
            rows.append((forming, forming, forming + 1.0, forming - 1.0, forming, 0.5))
        table = np.array(rows, dtype=np.float64).reshape(-1, len(CANONICAL_COLUMNS))
        frame = frame_from_columns({c: table[:, i] for i, c in enumerate(CANONICAL_COLUMNS)})
        return FetchWindowResult(frame, tuple(merge_ranges(empty, interval)), cursor)


PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
BARS = 8  # the test reads until the bar at this offset from the stream's start arrives


@PROPERTY
@given(
    interval=st.sampled_from([1, 60]),
    offset=st.floats(0.0, 0.999),
    delays=st.lists(st.floats(0.0, 3.5), min_size=1, max_size=6),  # seconds: 1s bars overlap
    halts=st.sets(st.integers(0, BARS - 1), max_size=3),
    errors=st.lists(st.booleans(), min_size=1, max_size=5).filter(lambda e: not all(e)),
    sloppy=st.booleans(),
    emit=st.booleans(),
    latency=st.sampled_from([0.0, 0.01, 0.3]),
    poll_ms=st.sampled_from([100, 250, 700]),
)
def test_stream_yields_each_closed_bar_once_in_order_whatever_the_delays(
    interval: int,
    offset: float,
    delays: list[float],
    halts: set[int],
    errors: list[bool],
    sloppy: bool,
    emit: bool,
    latency: float,
    poll_ms: int,
) -> None:
    clock = FakeClock(1_700_000_040 + offset * interval, auto_advance=True)
    first = bar_open_at(clock.now(), interval)  # the bar forming when the stream starts
    halted = {first + h * interval for h in halts}
    exchange = Exchange(clock, interval, delays, halted, errors, sloppy, latency * interval)
    feed = PollingLiveFeed(exchange, clock=clock, emit_building_candle=emit, poll_ms=poll_ms)
    last = first + BARS * interval

    async def run() -> list[LiveUpdate]:
        got: list[LiveUpdate] = []
        async with contextlib.aclosing(feed.stream("ohlcv:sim:BTC/USDT:x", interval)) as stream:
            async for update in stream:
                got.append(update)
                assert clock.now() < last + 100 * interval, "the stream stalled"
                if not update.forming and int(update.bars["ts"].iloc[-1]) >= last:
                    return got
        raise AssertionError("the stream ended")

    updates = asyncio.run(asyncio.wait_for(run(), 20))
    closed = [u for u in updates if not u.forming]
    bars = pd.concat([u.bars for u in closed], ignore_index=True)
    ts = bars["ts"].tolist()
    expected = [t for t in range(first, ts[-1] + 1, interval) if t not in halted]
    assert ts == expected  # each closed bar once, in order, none skipped, halts skipped
    assert [tuple(r) for r in bars.to_numpy()[:, 1:].tolist()] == [final_bar(t) for t in ts]
    for update in closed:
        assert len(update.bars) and update.received_at >= update.bars["ts"].max() + interval
        assert all(exchange.published(t, update.received_at) for t in update.bars["ts"])
    forming = [u for u in updates if u.forming]
    assert not forming or (emit and sloppy)
    for update in forming:  # the exchange's snapshot, flagged, while it was still forming
        (row,) = update.bars.to_numpy().tolist()
        assert row[5] == 0.5 and update.received_at < row[0] + interval


async def step(clock: FakeClock, seconds: float) -> None:
    """Advance ``clock`` by ``seconds`` in 50 ms steps, letting every task run at each."""
    for _ in range(round(seconds / 0.05)):
        for _ in range(5):
            await asyncio.sleep(0)
        clock.advance(0.05)
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_cancelled_wait_leaves_the_feed_answering_correctly() -> None:
    clock = FakeClock(1_700_000_040.5)  # half a second after a minute boundary
    exchange = Exchange(clock, 60, [20.0], set(), [False], latency_s=0.2)
    feed = PollingLiveFeed(exchange, clock=clock, poll_ms=1000)
    newest = bar_open_at(clock.now(), 60) - 60  # closed 0.5 s ago, published in 19.5 s
    since = newest - 5 * 60
    for cancel_after, calls in ((0.1, 1), (5.0, 3)):  # mid-fetch, then mid-wait (polling)
        before = len(exchange.calls)
        task = asyncio.create_task(feed.latest_bars("ohlcv:sim:BTC/USDT:1m", 60, since))
        await step(clock, cancel_after)
        assert not task.done() and len(exchange.calls) - before >= calls
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await step(clock, 20.0)  # the newest bar is out now
    task = asyncio.create_task(feed.latest_bars("ohlcv:sim:BTC/USDT:1m", 60, since))
    await clock.run_until(task.done)
    got = task.result()
    assert exchange.calls[-1][0] == newest  # the older bars were kept across the cancel
    assert got["ts"].tolist() == list(range(since, newest + 1, 60))
    assert [tuple(r) for r in got.to_numpy()[:, 1:].tolist()] == [
        final_bar(t) for t in got["ts"].tolist()
    ]
    calls = len(exchange.calls)
    task = asyncio.create_task(feed.latest_bars("ohlcv:sim:BTC/USDT:1m", 60, since))
    await clock.run_until(task.done)
    assert task.result().equals(got) and len(exchange.calls) == calls  # all held: no request
    waiting = asyncio.create_task(anext(feed.stream("ohlcv:sim:BTC/USDT:1m", 60)))
    await step(clock, 1.0)  # asleep until the next bar closes
    await feed.aclose()  # stops the stream at once, without waiting for that bar
    with pytest.raises(StopAsyncIteration):
        await waiting
