"""Result cache: a hit vs a warm store read of one year of 1m bars, and what re-gating costs.

    python bench/cache.py [--bars 525600] [--repeat 15] [--hits 200] [--quick]

One node's ``--bars`` 1m bars (random walk) in a DuckDB file, the ledger saying all of them are
stored (no exchange, no backfiller). Each of ``--repeat`` rounds runs every contender once, in
turn (a spell of load on the shared 2-core machine hits them alike); the table shows medians
over rounds (and the best round) and ratios between contenders of this same run. The clocks
are ``FakeClock``s standing still, so no entry reaches its ``ttl_ms`` during the run.

- ``warm store read``: ``fetch`` of the whole year on a provider without a cache, after one
  untimed fetch: ledger read, bars read from hot pages, conformance and fingerprint from the
  served-bars memo (the store vouches the window is unchanged) — the real warm path. The
  baseline of the hit.
- ``cache hit``: the same fetch on a provider with a :class:`ResultCache`, after one priming
  fetch; per hit, the mean of ``--hits`` consecutive hits. Ratio hit / warm.
- ``cache hit, live``: the hit in a governed context (``execution_domain="live"``,
  ``world_id="w"``, ``as_of`` in ms): each hit is re-gated, and the live domain keeps
  ``as_of`` monotonic, so each hit calls ``advance_as_of`` on the ``(world, node)`` mark in
  the store (a DuckDB transaction in a worker thread; a hit carries the ``as_of`` of its
  priming fetch, so it reads the mark and writes nothing). The clock stands 60 s after the
  newest bar, inside the live domain's ``max_lag_sec`` (120 s): the hit is served plain. Ratio
  and µs against the ungated hit; ``advance_as_of`` alone shows the store's share,
  ``as_of_mark`` alone what a plain read of the mark (no transaction) costs.
- ``cache hit, live, stale``: the same with the clock an hour later: every hit is served HOLD
  ``freshness_breach``, counted and logged at WARNING (to a ``NullHandler`` here: the record
  is built, nothing is written).
- ``cache.get`` / ``cache.put`` alone: per call, the mean of ``20 * --hits`` calls.
- ``frame.copy()`` alone: what copying the served frame costs (a hit hands every caller the
  same frame object).

``--quick``: 5 rounds of 50 hits (about 5 s; the default takes about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.storage import LedgerUpdate, open_storage
from qmtl.runtime.sdk.cache import CacheKey, ResultCache
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.config import CacheConfig
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.seamless_data_provider import SeamlessDataProvider

NODE = "ohlcv:binance:BTC/USDT:1m"
INTERVAL = 60
START = 1_704_067_200  # 2024-01-01T00:00:00Z
WORLD = "w"

Contender = Callable[[], Awaitable[float]]  # one timed run: seconds per operation


def bars_of(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    close = 40_000 + rng.standard_normal(n).cumsum()
    return pd.DataFrame(
        {
            "ts": START + INTERVAL * np.arange(n, dtype=np.int64),
            "open": close + rng.standard_normal(n),
            "high": close + 20,
            "low": close - 20,
            "close": close,
            "volume": rng.random(n) * 5,
        }
    )


def per_op(call: Callable[[], Awaitable[Any]], n: int) -> Contender:
    """A contender timing ``n`` consecutive awaited calls, reporting seconds per call."""

    async def run() -> float:
        began = time.perf_counter()
        for _ in range(n):
            await call()
        return (time.perf_counter() - began) / n

    return run


def per_sync_op(call: Callable[[], Any], n: int) -> Contender:
    async def run() -> float:
        began = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - began) / n

    return run


async def interleaved(repeat: int, contenders: dict[str, Contender]) -> dict[str, list[float]]:
    """Each contender once untimed (warm), then ``repeat`` rounds of each in turn."""
    for run in contenders.values():
        await run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, run in contenders.items():
            times[name].append(await run())
    return times


def shown(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:8.1f} µs"


def provider_of(storage: Any, clock: FakeClock, *, cache: bool) -> SeamlessDataProvider:
    return SeamlessDataProvider(
        storage=storage,
        cache=ResultCache(CacheConfig(), clock=clock) if cache else None,
        clock=clock,
        metrics=SeamlessMetrics(CollectorRegistry()),
    )


async def main_async(bars: int, repeat: int, hits: int) -> None:
    end = START + bars * INTERVAL
    as_of_ms = end * 1000
    fresh = FakeClock(end + 60)  # the newest bar closed a minute ago: live serves it plain
    stale = FakeClock(end + 3600)  # an hour: beyond live's max_lag_sec, every hit is HOLD
    logging.getLogger("qmtl").addHandler(logging.NullHandler())  # no lastResort to stderr
    with tempfile.TemporaryDirectory() as tmp:
        dsn = f"duckdb:///{tmp}/cache.duckdb"
        async with open_storage(dsn) as storage:
            update = LedgerUpdate(interval=INTERVAL, data=(Range(START, end),), source="bench")
            await storage.write_bars(NODE, bars_of(bars), ledger_update=update)

        async with open_storage(dsn) as storage:
            plain = provider_of(storage, fresh, cache=False)
            cached = provider_of(storage, fresh, cache=True)
            gated = provider_of(storage, fresh, cache=True)
            gated_stale = provider_of(storage, stale, cache=True)
            live = {"execution_domain": "live", "world_id": WORLD, "as_of": as_of_ms}

            def fetch(provider: SeamlessDataProvider, **context: Any) -> Callable[[], Any]:
                return lambda: provider.fetch(START, end, node_id=NODE, **context)

            primed = await fetch(cached)()
            primed_live = await fetch(gated, **live)()
            primed_stale = await fetch(gated_stale, **live)()
            cache = cached.governor.cache
            assert cache is not None
            key = CacheKey(NODE, START, end, INTERVAL, cached.conformance.version, None, None)
            contenders = {
                "warm": per_op(fetch(plain), 1),
                "hit": per_op(fetch(cached), hits),
                "live": per_op(fetch(gated, **live), hits),
                "mark": per_op(lambda: storage.advance_as_of(WORLD, NODE, as_of_ms), hits),
                "read": per_op(lambda: storage.as_of_mark(WORLD, NODE), hits),
                "stale": per_op(fetch(gated_stale, **live), hits),
                "get": per_sync_op(lambda: cache.get(key, domain=None), 20 * hits),
                "put": per_sync_op(lambda: cache.put(key, primed, domain=None), 20 * hits),
                "copy": per_sync_op(lambda: primed.frame.copy(), 1),
            }
            times = await interleaved(repeat, contenders)

            # What was measured is what was meant: hits, served plain or HOLD as intended.
            hit = await fetch(cached)()
            hit_live = await fetch(gated, **live)()
            hit_stale = await fetch(gated_stale, **live)()
            assert len(primed) == bars, len(primed)
            for served, first in ((hit, primed), (hit_live, primed_live),
                                  (hit_stale, primed_stale)):  # fmt: skip
                # a hit times only itself, and hands out a copy of the same bars
                assert set(served.metadata.sla_phases_ms) == {"total"}, "not a cache hit"
                assert served.frame is not first.frame
                assert served.frame.equals(first.frame)
            assert not hit_live.metadata.downgraded, hit_live.metadata.downgrade_reason
            assert hit_stale.metadata.downgrade_reason == "freshness_breach"
            assert await storage.as_of_mark(WORLD, NODE) == as_of_ms

    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    ratio = {
        "hit": f"hit / warm = {med['hit'] / med['warm']:.5f} ({med['warm'] / med['hit']:,.0f}x)",
        "live": f"live / hit = {med['live'] / med['hit']:.2f} "
        f"(+{(med['live'] - med['hit']) * 1e6:.0f} µs per hit)",
        "mark": f"{med['mark'] / (med['live'] - med['hit']):.0%} of the re-gating overhead",
        "read": f"read / advance_as_of = {med['read'] / med['mark']:.2f}",
        "stale": f"stale / hit = {med['stale'] / med['hit']:.2f} "
        f"(+{(med['stale'] - med['hit']) * 1e6:.0f} µs per hit)",
        "copy": f"copy / warm = {med['copy'] / med['warm']:.2f}",
    }
    rows = (
        ("warm", "warm store read (no cache)"),
        ("hit", "cache hit, ungated"),
        ("live", "cache hit, live (re-gated)"),
        ("mark", "  advance_as_of alone"),
        ("read", "  as_of_mark alone"),
        ("stale", "cache hit, live, stale (HOLD)"),
        ("get", "cache.get alone"),
        ("put", "cache.put alone"),
        ("copy", "frame.copy() alone"),
    )
    print(f"{bars:,} bars of {NODE}, {repeat} rounds, {hits} hits per round (medians)")
    print(f"{'':31} {'median':>11} {'best':>11}  ratio")
    for name, label in rows:
        print(f"{label:31} {shown(med[name])} {shown(best[name])}  {ratio.get(name, '')}")
    print(f"reproduce: python bench/cache.py --bars {bars} --repeat {repeat} --hits {hits}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=525_600)
    parser.add_argument("--repeat", type=int, help="rounds (default 15; 5 with --quick)")
    parser.add_argument("--hits", type=int, help="hits per round (default 200; 50 with --quick)")
    parser.add_argument("--quick", action="store_true", help="5 rounds of 50 hits")
    args = parser.parse_args()
    repeat = args.repeat or (5 if args.quick else 15)
    hits = args.hits or (50 if args.quick else 200)
    asyncio.run(main_async(args.bars, repeat, hits))


if __name__ == "__main__":
    main()
