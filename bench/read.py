"""Warm ``fetch`` of one year of 1m bars vs a raw DuckDB → Arrow → pandas read of the same rows.

    python bench/read.py [--bars 525600] [--repeat 5]

Both read the same DuckDB file, warm (one untimed read first), ``--repeat`` rounds taking
turns (so load on the machine hits both alike); the verdict is on medians. The
baseline is the fastest raw exit we know, DuckDB → Arrow → pandas (what the store itself
uses); DuckDB's documented pandas exit (``.df()``, slower) is shown too. ``fetch`` does
everything a strategy gets: ledger read and gap math, the bars read, conformance, the
dataset fingerprint and the metadata. Target: fetch ≤ 1.3 × the raw Arrow read.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.storage import LedgerUpdate, open_storage
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.seamless_data_provider import SeamlessDataProvider

NODE = "ohlcv:binance:BTC/USDT:1m"
INTERVAL = 60
START = 1_704_067_200  # 2024-01-01T00:00:00Z


def year_of_bars(n: int) -> pd.DataFrame:
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


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    await call()
    return time.perf_counter() - began


async def interleaved(
    repeat: int, calls: dict[str, Callable[[], Awaitable[Any]]]
) -> dict[str, list[float]]:
    """Each call once untimed (warm), then ``repeat`` rounds of each in turn: a spell of load
    on the machine hits every contender alike."""
    for call in calls.values():
        await call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            times[name].append(await timed(call))
    return times


async def main_async(bars: int, repeat: int) -> None:
    end = START + bars * INTERVAL
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/read.duckdb"
        async with open_storage(f"duckdb:///{path}") as storage:
            update = LedgerUpdate(interval=INTERVAL, data=(Range(START, end),), source="bench")
            await storage.write_bars(NODE, year_of_bars(bars), ledger_update=update)

        con = duckdb.connect(path)  # alongside the store in this process: same (rw) config
        (node_key,) = con.execute("SELECT node_key FROM qmtl_nodes").fetchone() or (0,)
        sql = (
            "SELECT ts, open, high, low, close, volume FROM qmtl_bars"
            " WHERE node_key = ? AND ts >= ? AND ts < ? ORDER BY ts"
        )

        async def raw() -> pd.DataFrame:  # DuckDB's documented pandas exit
            return con.execute(sql, [node_key, START, end]).df()

        async def raw_arrow() -> pd.DataFrame:  # the fastest raw exit we know
            return con.execute(sql, [node_key, START, end]).to_arrow_table().to_pandas()

        async with open_storage(f"duckdb:///{path}") as storage:
            provider = SeamlessDataProvider(
                storage=storage, metrics=SeamlessMetrics(CollectorRegistry())
            )

            async def fetch() -> Any:
                return await provider.fetch(START, end, node_id=NODE, interval=INTERVAL)

            times = await interleaved(repeat, {"raw": raw, "arrow": raw_arrow, "fetch": fetch})
            result = await fetch()
        rows = len(await raw())
        con.close()
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    raw_s, arrow_s, fetch_s = best["raw"], best["arrow"], best["fetch"]
    assert len(result) == rows == bars, (len(result), rows, bars)
    ratio = median["fetch"] / median["arrow"]
    verdict = "ok" if ratio <= 1.3 else "ABOVE TARGET 1.3"
    for label, name in (("raw DuckDB .df()    ", "raw"), ("raw DuckDB arrow->pd", "arrow"),
                        ("warm fetch          ", "fetch")):  # fmt: skip
        print(f"{label} {rows:,} rows: best {best[name] * 1e3:6.1f} ms, "
              f"median {median[name] * 1e3:6.1f} ms")  # fmt: skip
    print(
        f"fetch / raw arrow = {ratio:.2f} by median (target <= 1.3: {verdict}), "
        f"{fetch_s / arrow_s:.2f} by best; fetch / raw .df() = {fetch_s / raw_s:.2f} by best"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=525_600)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main_async(args.bars, args.repeat))


if __name__ == "__main__":
    main()
