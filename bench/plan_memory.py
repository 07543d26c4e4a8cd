"""Memory stays bounded whatever the range: peak RSS of long backfill plans.

    python bench/plan_memory.py [--years 10] [--seconds 20]

Two runs, each in a fresh subprocess (so each peak RSS is its own):

- **10 years of 1m**, whole: ``ensure_data_available`` over 5.26 M bars (5,844 batches of
  900) through the real backfiller into a fresh DuckDB file, from an in-process synthetic
  fetcher (no exchange: this measures planning, batching and storing, not the network).
- **10 years of 1s**, the first ``--seconds`` of it: 315 M bars (350,400 batches), the
  plan that used to create every batch task up front (2.4 GB). The run is cut after the
  time limit; RSS is sampled as it goes, to show it flat.

Prints peak RSS (``ru_maxrss``), the RSS of a bare interpreter with the same imports for
reference, bars stored and batches done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd

START = 1_483_228_800  # 2017-01-01T00:00:00Z


class SyntheticFetcher:
    """A DataFetcher that serves every bar of any window at once (numpy, no I/O)."""

    def __init__(self) -> None:
        self.windows = 0

    async def fetch_window(self, start: int, end: int, *, node_id: str, interval: int) -> Any:
        from qmtl.runtime.sdk.backfill_types import FetchWindowResult

        self.windows += 1
        ts = np.arange(start, end, interval, dtype=np.int64)
        px = 100.0 + (ts % 997).astype(np.float64)
        frame = pd.DataFrame(
            {"ts": ts, "open": px, "high": px + 1, "low": px - 1, "close": px, "volume": 1.0}
        )
        return FetchWindowResult(frame)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _imports() -> None:
    from prometheus_client import CollectorRegistry  # noqa: F401

    from qmtl.runtime.io.auto_backfiller import DataFetcherAutoBackfiller  # noqa: F401
    from qmtl.runtime.io.storage import open_storage  # noqa: F401
    from qmtl.runtime.sdk.seamless_data_provider import SeamlessDataProvider  # noqa: F401


async def _run(interval: int, years: int, limit_s: float | None) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from qmtl.runtime.io.auto_backfiller import DataFetcherAutoBackfiller
    from qmtl.runtime.io.storage import open_storage
    from qmtl.runtime.sdk.metrics import SeamlessMetrics
    from qmtl.runtime.sdk.seamless_data_provider import SeamlessDataProvider

    node = "ohlcv:binance:BTC/USDT:" + ("1m" if interval == 60 else "1s")
    end = START + years * 365 * 86_400
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with open_storage(f"duckdb:///{tmp}/plan.duckdb") as storage:
            metrics = SeamlessMetrics(CollectorRegistry())
            fetcher = SyntheticFetcher()
            backfiller = DataFetcherAutoBackfiller(fetcher, storage, metrics=metrics)
            provider = SeamlessDataProvider(storage=storage, backfiller=backfiller, metrics=metrics)
            began = time.perf_counter()
            task = asyncio.create_task(
                provider.ensure_data_available(START, end, node_id=node, interval=interval)
            )
            while not task.done():
                await asyncio.wait({task}, timeout=1.0)
                samples.append(round(_rss_mb(), 1))
                if limit_s is not None and time.perf_counter() - began > limit_s:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await provider.aclose()
                    break
            elapsed = time.perf_counter() - began
            stored = await storage.read_ledger(node, interval)
    bars = sum((s.end - s.start) // interval for s in stored)
    return {
        "node": node,
        "planned_bars": (end - START) // interval,
        "stored_bars": bars,
        "batches_fetched": fetcher.windows,
        "seconds": round(elapsed, 1),
        "peak_rss_mb": round(_peak_mb(), 1),
        "rss_samples_mb": samples,
    }


def _child(kind: str, years: int, limit_s: float, out: Any) -> None:
    if kind == "baseline":
        _imports()
        out.send({"peak_rss_mb": round(_peak_mb(), 1)})
    elif kind == "1m":
        out.send(asyncio.run(_run(60, years, None)))
    else:
        out.send(asyncio.run(_run(1, years, limit_s)))


def _in_child(kind: str, years: int, limit_s: float) -> dict[str, Any]:
    receive, send = mp.Pipe(duplex=False)
    proc = mp.get_context("spawn").Process(target=_child, args=(kind, years, limit_s, send))
    proc.start()
    result: dict[str, Any] = receive.recv()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    baseline = _in_child("baseline", args.years, args.seconds)
    print(f"interpreter + imports: peak RSS {baseline['peak_rss_mb']} MB")
    for kind in ("1m", "1s"):
        result = _in_child(kind, args.years, args.seconds)
        samples = result.pop("rss_samples_mb")
        print(json.dumps(result))
        shown = samples if len(samples) <= 12 else [*samples[:6], "...", *samples[-6:]]
        print(f"  RSS every second (MB): {shown}")


if __name__ == "__main__":
    main()
