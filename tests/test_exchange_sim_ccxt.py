"""Edge cases of the simulator as the REAL ccxt client sees them (HTTP, no mocks): weekly
bars, a bar at epoch 0 and transient empty pages.

These pin down facts the fetcher has to live with:

- weekly klines open on Mondays 00:00 UTC (not on multiples of a week since the epoch, which
  fall on Thursdays) and ccxt passes them through unchanged;
- stock ccxt 4.5 *sends* ``startTime=0`` for ``since=0`` and the exchange serves the bar
  opening at 0, but ``filter_by_since_limit`` (``ccxt/base/exchange.py``, the ``value != 0``
  test) drops every row whose timestamp is 0 whenever ``since`` is given — so a listing at
  the epoch looks like a page that starts one bar later than asked. Passing ``startTime`` in
  ``params`` with ``since=None`` keeps the row (no since-filter runs);
- an ``empty_pages`` fault reaches the caller as a plain ``[]``, the same value as a window
  the exchange really has no bars in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import ccxt.async_support
import numpy as np
import pytest

from qmtl.runtime.io.ccxt_exchange import create_exchange, rewrite_urls
from qmtl.runtime.sdk.bars import misaligned
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.node_id import alignment_origin
from qmtl.services.exchange_sim import Scenario, SimulatorServer, generate_bars, run_simulator

T0 = 1_700_000_040  # Tuesday 2023-11-14T22:14:00Z
WEEK = 604_800
FIRST_MONDAY = alignment_origin(WEEK)  # 1970-01-05
Open = Callable[..., Awaitable[tuple[SimulatorServer, Any]]]


@pytest.fixture
async def connect() -> AsyncIterator[Open]:
    """A simulator for ``scenario`` and a ccxt binance pointed at it; both closed after."""
    async with AsyncExitStack() as stack:

        async def _open(scenario: dict[str, Any]) -> tuple[SimulatorServer, Any]:
            sim = await stack.enter_async_context(
                run_simulator(Scenario.from_dict(scenario), clock=FakeClock(T0 + 0.0))
            )
            ex = create_exchange("binance", urls={"rest": sim.base_url})
            ex.timeout_on_exit = 0
            stack.push_async_callback(ex.close)
            return sim, ex

        yield _open


def _weekly(seed: int, first_ms: int, n: int) -> list[list[float]]:
    times = np.arange(n, dtype=np.int64) * WEEK * 1000 + first_ms
    rows: list[list[float]] = generate_bars(seed, "BTC/USDT", WEEK, times).ohlcv().tolist()
    return rows


async def test_weekly_bars_open_on_mondays_from_any_since(connect: Open) -> None:
    listing = 1_577_923_200  # Thursday 2020-01-02: its week opened Monday 2019-12-30
    _, ex = await connect({"seed": 2, "symbols": {"BTC/USDT": {"listing": listing}}})
    monday = 1_577_664_000  # 2019-12-30T00:00:00Z
    for since_s in (0, listing - 400 * 86_400, monday, monday - WEEK + 1):
        rows = await ex.fetch_ohlcv("BTC/USDT", "1w", since_s * 1000, 30)
        assert rows == _weekly(2, monday * 1000, 30), since_s  # the listing week first
    epoch_weeks = (monday + 3 * 86_400) * 1000  # a multiple of a week since 1970: Thursday
    rows = await ex.fetch_ohlcv("BTC/USDT", "1w", epoch_weeks, 5)
    assert rows == _weekly(2, (monday + WEEK) * 1000, 5)  # the next Monday, never Thursday
    ts = np.array([r[0] for r in rows], np.int64) // 1000
    assert not misaligned(ts, WEEK).any()
    assert (ts % WEEK != 0).all()  # what a check of ``ts % interval`` would refuse


async def test_unlisted_weekly_history_starts_at_the_first_monday(connect: Open) -> None:
    sim, ex = await connect({"seed": 2, "symbols": {"BTC/USDT": {"listing": 0}}})
    rows = await ex.fetch_ohlcv("BTC/USDT", "1w", 0, 3)
    assert rows == _weekly(2, FIRST_MONDAY * 1000, 3)  # no week opens at the epoch itself
    assert sim.request_log.klines[-1].start_time == 0


async def test_stock_ccxt_sends_start_time_zero_but_drops_the_bar_at_epoch_zero() -> None:
    """Stock ccxt, without the project's ``parse_ohlcvs`` hook: the fact the hook must undo."""
    scenario = Scenario.from_dict({"seed": 5, "symbols": {"BTC/USDT": {"listing": 0}}})
    async with run_simulator(scenario, clock=FakeClock(T0 + 0.0)) as sim:
        ex = ccxt.async_support.binance(
            {"enableRateLimit": False, "options": {"fetchMarkets": {"types": ["spot"]}}}
        )
        try:
            ex.urls["api"] = rewrite_urls(ex.urls["api"], sim.base_url, sim.ws_url)
            minutes = np.arange(3, dtype=np.int64) * 60_000
            served = generate_bars(5, "BTC/USDT", 60, minutes).ohlcv().tolist()
            rows = await ex.fetch_ohlcv("BTC/USDT", "1m", 0, 3)
            record = sim.request_log.klines[-1]
            assert (record.start_time, record.rows, record.first_open_ms) == (0, 3, 0)  # sent
            assert rows == served[1:]  # ...and ccxt's since-filter threw the ts-0 bar away
            # startTime as a raw parameter and no ``since``: no since-filter, nothing dropped
            kept = await ex.fetch_ohlcv("BTC/USDT", "1m", None, 3, {"startTime": 0})
            assert sim.request_log.klines[-1].start_time == 0
            assert kept == served
            # any later ``since`` is unaffected: only the timestamp 0 itself is filtered
            assert await ex.fetch_ohlcv("BTC/USDT", "1m", 60_000, 2) == served[1:]
        finally:
            await ex.close()


async def test_an_empty_page_fault_is_a_plain_empty_list_to_ccxt(connect: Open) -> None:
    span = (T0 - 3600, T0 - 3540)
    sim, ex = await connect(
        {"symbols": {"BTC/USDT": {"empty_pages": [{"start": span[0], "end": span[1]}]}}}
    )
    # the one-bar follow-up page of a short page: exactly the bar of the span
    assert await ex.fetch_ohlcv("BTC/USDT", "1m", span[0] * 1000, 1) == []
    assert sim.request_log.klines[-1].fault == "empty_page"
    # the bar exists: asked without touching the span's window, it is served
    after = await ex.fetch_ohlcv("BTC/USDT", "1m", None, 1, {"endTime": span[0] * 1000 - 1})
    assert [r[0] for r in after] == [(span[0] - 60) * 1000]
