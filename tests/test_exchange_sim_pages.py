"""Batched, cached page bodies (``PageBodies``): what is served never depends on batching."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from qmtl.services.exchange_sim.bars import generate_bars
from qmtl.services.exchange_sim.klines_json import encode_klines
from qmtl.services.exchange_sim.pages import BATCH_ROWS, CACHE_PAGES, PageBodies

T0_MS = 1_700_000_040_000
MINUTE = 60_000


def _window(start_ms: int, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * MINUTE + start_ms


def _alone(seed: int, symbol: str, times: np.ndarray) -> bytes:
    return encode_klines(generate_bars(seed, symbol, 60, times))


async def test_concurrent_pages_equal_pages_rendered_alone() -> None:
    bodies = PageBodies()
    windows = [_window(T0_MS - k * 1_000 * MINUTE, 1000) for k in range(1, 6)]
    windows += [_window(T0_MS - 7 * MINUTE, 3), _window(T0_MS - 123_456 * MINUTE, 700)]
    symbols = ["BTC/USDT", "ETH/USDT"]
    asks = [(s, w) for s in symbols for w in windows]
    got = await asyncio.gather(*(bodies.body(3, s, 60, w) for s, w in asks))
    assert sum(len(w) for _, w in asks) > 2 * BATCH_ROWS  # several batches per series
    for (symbol, times), body in zip(asks, got, strict=True):
        assert body == _alone(3, symbol, times)


async def test_identical_pages_are_rendered_once_and_then_cached() -> None:
    bodies = PageBodies()
    times = _window(T0_MS - 5_000 * MINUTE, 1000)
    first, second = await asyncio.gather(
        bodies.body(1, "BTC/USDT", 60, times), bodies.body(1, "BTC/USDT", 60, times.copy())
    )
    assert first is second  # one rendering for both requests
    assert await bodies.body(1, "BTC/USDT", 60, times) is first  # from the cache
    other_seed = await bodies.body(2, "BTC/USDT", 60, times)
    assert other_seed != first and other_seed == _alone(2, "BTC/USDT", times)


async def test_the_cache_keeps_the_most_recent_pages() -> None:
    bodies = PageBodies()
    oldest = await bodies.body(1, "BTC/USDT", 60, _window(T0_MS, 2))
    for k in range(1, CACHE_PAGES + 1):
        await bodies.body(1, "BTC/USDT", 60, _window(T0_MS + k * 10 * MINUTE, 2))
    again = await bodies.body(1, "BTC/USDT", 60, _window(T0_MS, 2))
    assert again == oldest and again is not oldest  # evicted, rendered anew


async def test_a_cancelled_request_does_not_disturb_the_others() -> None:
    bodies = PageBodies()
    times = _window(T0_MS - 2_000 * MINUTE, 500)
    gone = asyncio.ensure_future(bodies.body(1, "BTC/USDT", 60, times))
    kept = asyncio.ensure_future(bodies.body(1, "BTC/USDT", 60, times))
    alone = asyncio.ensure_future(bodies.body(1, "BTC/USDT", 60, _window(T0_MS, 9)))
    await asyncio.sleep(0)  # both queued, flush scheduled
    gone.cancel()
    assert await kept == _alone(1, "BTC/USDT", times)
    assert await alone == _alone(1, "BTC/USDT", _window(T0_MS, 9))
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_rendering_error_reaches_every_request_of_its_batch_only() -> None:
    bodies = PageBodies()
    bad = np.array([T0_MS + 1], np.int64)  # not aligned: the generator refuses it
    good = _window(T0_MS, 5)
    results = await asyncio.gather(
        bodies.body(1, "BTC/USDT", 60, bad),
        bodies.body(1, "BTC/USDT", 60, good),
        bodies.body(1, "ETH/USDT", 60, good),
        return_exceptions=True,
    )
    assert isinstance(results[0], ValueError) and isinstance(results[1], ValueError)
    assert results[2] == _alone(1, "ETH/USDT", good)  # another series, another batch
    assert await bodies.body(1, "BTC/USDT", 60, good) == _alone(1, "BTC/USDT", good)
