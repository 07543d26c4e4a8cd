"""Core benchmarks: conformance rows/s, fingerprint MB/s vs plain SHA-256, and gap math time.

Run: ``python bench/core.py [--rows N] [--repeat R]``. Each section is one function that
returns a dict of figures and prints one line; ``main()`` runs them in order. Wall-clock
timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from qmtl.runtime.sdk.conformance import ConformancePipeline
from qmtl.runtime.sdk.fingerprint import compute_fingerprint, fingerprint_bytes
from qmtl.runtime.sdk.history_coverage import CoverageSegment, SegmentKind, compute_missing_ranges

__all__ = [
    "bench_conformance",
    "bench_fingerprint",
    "bench_missing_ranges",
    "main",
    "messy_frame",
]

T0 = 1_599_999_960  # aligned to 60 s
INTERVAL = 60
NODE_ID = "ohlcv:binance:BTC/USDT:1m"


def best_of(repeat: int, fn: Callable[[], Any]) -> float:
    """Fastest wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def messy_frame(rows: int, *, seed: int = 0) -> pd.DataFrame:
    """Realistic exchange input: ms timestamps, ~1% duplicate rows, shuffled, a few NaN/inf."""
    rng = np.random.default_rng(seed)
    ts = (T0 + INTERVAL * np.arange(rows, dtype=np.int64)) * 1000
    ts = np.concatenate([ts, rng.choice(ts, rows // 100)])
    rng.shuffle(ts)
    n = len(ts)
    close = 30_000 + rng.standard_normal(n).cumsum()
    frame = pd.DataFrame(
        {
            "ts": ts,
            "open": close + rng.standard_normal(n),
            "high": close + 5 + rng.random(n),
            "low": close - 5 - rng.random(n),
            "close": close,
            "volume": rng.random(n) * 10,
        }
    )
    frame.loc[rng.choice(n, n // 1000), "volume"] = np.nan
    frame.loc[rng.choice(n, n // 10_000), "open"] = np.inf
    return frame


def bench_conformance(rows: int, repeat: int) -> dict[str, float]:
    """ConformancePipeline.normalize on ``rows`` messy rows (+1% duplicates)."""
    frame = messy_frame(rows)
    pipeline = ConformancePipeline()
    seconds = best_of(repeat, lambda: pipeline.normalize(frame, INTERVAL))
    rate = len(frame) / seconds
    print(
        f"conformance   {len(frame):>10,} rows in {seconds * 1e3:8.1f} ms  "
        f"= {rate / 1e6:6.2f} M rows/s"
    )
    return {"rows": float(len(frame)), "seconds": seconds, "rows_per_s": rate}


def bench_fingerprint(rows: int, repeat: int) -> dict[str, float]:
    """compute_fingerprint vs hashlib.sha256 over the very same serialized bytes."""
    frame, _ = ConformancePipeline().normalize(messy_frame(rows), INTERVAL)
    ts = frame["ts"].to_numpy()
    metadata = {
        "node_id": NODE_ID,
        "interval": INTERVAL,
        "range": [int(ts[0]), int(ts[-1]) + INTERVAL],
        "conformance_version": "v2",
    }
    raw = fingerprint_bytes(frame, metadata)
    ours = best_of(repeat, lambda: compute_fingerprint(frame, metadata))
    plain = best_of(repeat, lambda: hashlib.sha256(raw).hexdigest())
    assert compute_fingerprint(frame, metadata) == "sha256:" + hashlib.sha256(raw).hexdigest()
    mb = len(raw) / 1e6
    ratio = plain / ours
    verdict = "ok" if ratio >= 0.5 else "BELOW TARGET 0.5"
    print(
        f"fingerprint   {mb:8.1f} MB in {ours * 1e3:8.1f} ms  = {mb / ours:8.1f} MB/s; "
        f"hashlib.sha256 {mb / plain:8.1f} MB/s; ratio {ratio:.2f} ({verdict})"
    )
    return {"mb": mb, "mb_per_s": mb / ours, "sha256_mb_per_s": mb / plain, "ratio": ratio}


def bench_missing_ranges(segments: int, repeat: int) -> dict[str, float]:
    """compute_missing_ranges over a ledger of ``segments`` DATA/EMPTY segments with a
    one-bar hole between neighbours (the worst case: every segment yields a gap)."""
    starts = T0 + np.arange(segments, dtype=np.int64) * 3 * INTERVAL
    ledger = [
        CoverageSegment(
            int(s), int(s) + 2 * INTERVAL, SegmentKind.DATA if i % 2 else SegmentKind.EMPTY
        )
        for i, s in enumerate(starts.tolist())
    ]
    rng = np.random.default_rng(1)
    shuffled = [ledger[i] for i in rng.permutation(segments)]
    end = int(starts[-1]) + 3 * INTERVAL
    seconds = best_of(repeat, lambda: compute_missing_ranges(shuffled, T0, end, INTERVAL))
    in_order = best_of(repeat, lambda: compute_missing_ranges(ledger, T0, end, INTERVAL))
    gaps = len(compute_missing_ranges(shuffled, T0, end, INTERVAL))
    verdict = "ok" if seconds < 0.1 else "ABOVE TARGET 100 ms"
    print(
        f"missing       {segments:>10,} segments in {seconds * 1e3:6.1f} ms shuffled, "
        f"{in_order * 1e3:6.1f} ms sorted (as stored) -> {gaps:,} gaps "
        f"(target < 100 ms: {verdict})"
    )
    return {"segments": float(segments), "seconds": seconds, "sorted_seconds": in_order}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run every section once and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    results = {
        "conformance": bench_conformance(args.rows, args.repeat),
        "fingerprint": bench_fingerprint(args.rows, args.repeat),
        "missing_ranges": bench_missing_ranges(100_000, args.repeat),
    }
    return results


if __name__ == "__main__":
    main()
