"""Warm ``fetch`` of one year of 1m bars vs a raw DuckDB → Arrow → pandas read of the same rows.

    python bench/read.py [--bars 525600] [--repeat 5]

Both read the same DuckDB file, warm (one untimed read first), best of ``--repeat``. The
baseline is the fastest raw exit we know, DuckDB → Arrow → pandas (what the store itself
uses); DuckDB's documented pandas exit (``.df()``, slower) is shown too. ``fetch`` does
everything a strategy gets: ledger read and gap math, the bars read, conformance, the
dataset fingerprint and the metadata. Target: fetch ≤ 1.3 × the raw Arrow read.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def best_of(repeat: int, call: Callable[[], Awaitable[Any]]) -> float:
    await call()  # warm
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        times.append(time.perf_counter() - began)
    return min(times)


async def main_async(bars: int, repeat: int) -> None:
    end = START + bars * INTERVAL
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/read.duckdb"
        async with open_storage(f"duckdb:///{path}") as storage:
            update = LedgerUpdate(interval=INTERVAL, data=(Range(START, end),), source="bench")
            await storage.write_bars(NODE, year_of_bars(bars), ledger_update=update)

        con = duckdb.connect(path, read_only=True)
        (node_key,) = con.execute("SELECT node_key FROM qmtl_nodes").fetchone() or (0,)
        sql = (
            "SELECT ts, open, high, low, close, volume FROM qmtl_bars"
            " WHERE node_key = ? AND ts >= ? AND ts < ? ORDER BY ts"
        )

        async def raw() -> pd.DataFrame:  # DuckDB's documented pandas exit
            return con.execute(sql, [node_key, START, end]).df()

        async def raw_arrow() -> pd.DataFrame:  # the fastest raw exit we know
            return con.execute(sql, [node_key, START, end]).to_arrow_table().to_pandas()

        raw_s = await best_of(repeat, raw)
        arrow_s = await best_of(repeat, raw_arrow)
        rows = len(await raw())
        con.close()

        async with open_storage(f"duckdb:///{path}") as storage:
            provider = SeamlessDataProvider(
                storage=storage, metrics=SeamlessMetrics(CollectorRegistry())
            )

            async def fetch() -> Any:
                return await provider.fetch(START, end, node_id=NODE, interval=INTERVAL)

            fetch_s = await best_of(repeat, fetch)
            result = await fetch()
    assert len(result) == rows == bars, (len(result), rows, bars)
    ratio = fetch_s / arrow_s
    verdict = "ok" if ratio <= 1.3 else "ABOVE TARGET 1.3"
    print(f"raw DuckDB .df()     {rows:,} rows: {raw_s * 1e3:7.1f} ms")
    print(f"raw DuckDB arrow->pd {rows:,} rows: {arrow_s * 1e3:7.1f} ms")
    print(f"warm fetch           {rows:,} rows: {fetch_s * 1e3:7.1f} ms "
          f"(phases {result.metadata.sla_phases_ms})")  # fmt: skip
    print(f"fetch / raw arrow = {ratio:.2f} (target <= 1.3: {verdict}); "
          f"fetch / raw .df() = {fetch_s / raw_s:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=525_600)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main_async(args.bars, args.repeat))


if __name__ == "__main__":
    main()
