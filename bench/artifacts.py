"""Artifacts: publish throughput, and a backtest's read of a year of 1m bars — from many small
artifacts, after monthly compaction — against one raw Parquet file of the same bars.

    python bench/artifacts.py [--bars 525600] [--small 1000] [--repeat 7] [--quick] [--s3]

**Publish**: the year (random-walk OHLCV, float64) published into a fresh local store as 12
monthly publications and as ``--small`` consecutive ones, rounds taking turns. Reported: bars/s
and MB/s (Parquet bytes written per second), and the share of the time spent fingerprinting and
encoding Parquet (both timed alone on the same slices in the same round) and in the store's
``put_new`` and ``list`` (timed through a delegating store; every publication lists the
node's manifests, to see other processes' publications) — the rest is the registrar's own
work (manifest, catalog) and the event loop.

**Read** of the whole year, ``--repeat`` rounds taking turns (a spell of load on the machine
hits every contender alike; verdict on medians):

- ``raw``: ``pyarrow.parquet.read_table`` of ONE zstd Parquet file holding the year (the bytes
  the registrar would write for it), then ``to_pandas()`` — the floor;
- ``small``: the year published as ``--small`` consecutive artifacts;
- ``compacted``: the same store after ``compact(period="month")`` (12 more files, the small ones
  stay: the catalog holds every manifest, reads use the newest, compacted, files).

*cold* = a new store object and ``ArtifactRegistrar`` on the same directory (empty manifest
catalog and decoded-table caches: what a backtest process sees); *warm* = a second read
through one registrar. A cold read is split into its manifest work (``view`` on a fresh
registrar: list the node's manifests, read those the window needs) and the rest (data files,
decode, the frame; cold minus manifests). Target: compacted cold <= 1.3 x raw, by medians.
``--quick``: 3 read rounds, no publish table; ``--bars``/``--small`` shrink the data set.

``--s3`` repeats the read table against moto's S3 server (in this process, so its request
handling shares the GIL and the two cores with the reader: round trips dominate there).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.artifact import ArtifactRegistrar
from qmtl.runtime.io.artifact_files import parquet_bytes
from qmtl.runtime.io.artifact_maintenance import compact, period_ranges
from qmtl.runtime.io.artifact_stores import LocalArtifactStore, S3ArtifactStore
from qmtl.runtime.sdk.artifact_store import ArtifactStore
from qmtl.runtime.sdk.bars import frame_from_columns
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.conformance import ConformanceReport
from qmtl.runtime.sdk.fingerprint import FingerprintMetadata, compute_fingerprint
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics

NODE = "ohlcv:binance:BTC/USDT:1m"
INTERVAL = 60
START = 1_704_067_200  # 2024-01-01T00:00:00Z
CLOCK_START = 1_893_456_000.0  # 2030-01-01: every bar of the year is long stable
TARGET = 1.3
METRICS = SeamlessMetrics(CollectorRegistry())
REPORT = ConformanceReport(flags={})

Timings = dict[str, list[float]]


def year_of_bars(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    close = 40_000 + rng.standard_normal(n).cumsum()
    return frame_from_columns(
        {
            "ts": START + INTERVAL * np.arange(n, dtype=np.int64),
            "open": close + rng.standard_normal(n),
            "high": close + 20 + rng.random(n),
            "low": close - 20 - rng.random(n),
            "close": close,
            "volume": rng.random(n) * 5,
        }
    )


def monthly(bars: int) -> list[Range]:
    return [r for _, r in period_ranges(Range(START, START + bars * INTERVAL), "month")]


def consecutive(bars: int, pieces: int) -> list[Range]:
    cuts = START + INTERVAL * np.linspace(0, bars, pieces + 1).round().astype(np.int64)
    return [Range(int(a), int(b)) for a, b in itertools.pairwise(cuts.tolist()) if a < b]


def slice_of(frame: pd.DataFrame, span: Range) -> pd.DataFrame:
    ts = frame["ts"].to_numpy()
    lo, hi = np.searchsorted(ts, [span.start, span.end])
    return frame.iloc[lo:hi].reset_index(drop=True)


@dataclass
class TimedStore:
    """A delegating :class:`ArtifactStore` adding up the seconds spent in each operation."""

    inner: ArtifactStore
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_OPS, 0.0))

    @property
    def root_uri(self) -> str:
        return self.inner.root_uri

    def uri_of(self, key: str) -> str:
        return self.inner.uri_of(key)

    async def put_new(self, key: str, data: bytes) -> bool:
        began = time.perf_counter()
        try:
            return await self.inner.put_new(key, data)
        finally:
            self.seconds["put_new"] += time.perf_counter() - began

    async def get(self, key: str) -> bytes:
        began = time.perf_counter()
        try:
            return await self.inner.get(key)
        finally:
            self.seconds["get"] += time.perf_counter() - began

    async def list(self, prefix: str) -> list[str]:
        began = time.perf_counter()
        try:
            return await self.inner.list(prefix)
        finally:
            self.seconds["list"] += time.perf_counter() - began

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


_OPS = ("put_new", "get", "list")


def registrar(store: ArtifactStore, clock: FakeClock | None = None) -> ArtifactRegistrar:
    return ArtifactRegistrar(store, clock=clock or FakeClock(CLOCK_START), metrics=METRICS)


async def publish_all(directory: str, frame: pd.DataFrame, spans: list[Range]) -> dict[str, float]:
    """Publish ``spans`` of ``frame`` one after the other into a fresh store at
    ``directory``: wall seconds, Parquet bytes written, seconds in each store operation."""
    clock = FakeClock(CLOCK_START)
    slices = [slice_of(frame, s) for s in spans]
    async with TimedStore(LocalArtifactStore(directory)) as store:
        reg = registrar(store, clock)
        written = 0
        began = time.perf_counter()
        for span, bars in zip(spans, slices, strict=True):
            publication = await reg.publish(
                bars, node_id=NODE, interval=INTERVAL, requested_range=span,
                conformance_report=REPORT,
            )  # fmt: skip
            assert publication is not None
            assert publication.rows == len(bars)
            written += int(publication.manifest["storage"]["bytes"])
            clock.advance(1.0)
        seconds = time.perf_counter() - began
    return {"seconds": seconds, "bytes": written, **store.seconds}


def encode_alone(frame: pd.DataFrame, spans: list[Range]) -> dict[str, float]:
    """Seconds to fingerprint, and to encode as Parquet, the same slices outside the
    registrar (what its worker threads do per publication)."""
    fingerprint = encode = 0.0
    for span in spans:
        bars = slice_of(frame, span)
        meta = FingerprintMetadata(
            node_id=NODE, interval=INTERVAL, range=(span.start, span.end),
            conformance_version=REPORT.version,
        )  # fmt: skip
        began = time.perf_counter()
        digest = compute_fingerprint(bars, meta)
        middle = time.perf_counter()
        identity = {"node_id": NODE, "dataset_fingerprint": digest}
        parquet_bytes(bars, identity, "zstd")
        fingerprint += middle - began
        encode += time.perf_counter() - middle
    return {"fingerprint": fingerprint, "encode": encode}


async def bench_publish(frame: pd.DataFrame, small: int, repeat: int, tmp: str) -> None:
    cases = {"12 monthly": monthly(len(frame)), f"{small} small": consecutive(len(frame), small)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for round_ in range(repeat):
        for name, spans in cases.items():
            directory = os.path.join(tmp, f"publish-{round_}-{len(spans)}")
            result = await publish_all(directory, frame, spans)
            result |= encode_alone(frame, spans)
            runs[name].append(result)
            shutil.rmtree(directory)
    print(f"\nPublish one year of 1m ({len(frame):,} bars), {repeat} rounds, medians:")
    head = f"{'case':>12} {'seconds':>8} {'bars/s':>10} {'MB/s':>6} {'fingerprint':>11}"
    print(f"{head} {'parquet':>8} {'put_new':>8} {'list':>5} {'other':>6}")
    for name, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        share = {k: med[k] / med["seconds"] for k in ("fingerprint", "encode", "put_new", "list")}
        other = 1.0 - sum(share.values())
        print(
            f"{name:>12} {med['seconds']:8.2f} {len(frame) / med['seconds']:10,.0f} "
            f"{med['bytes'] / 1e6 / med['seconds']:6.1f} {share['fingerprint']:11.0%} "
            f"{share['encode']:8.0%} {share['put_new']:8.0%} {share['list']:5.0%} {other:6.0%}"
        )


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    await call()
    return time.perf_counter() - began


async def interleaved(repeat: int, calls: dict[str, Callable[[], Awaitable[Any]]]) -> Timings:
    """Each call once untimed, then ``repeat`` rounds of each in turn."""
    for call in calls.values():
        await call()
    times: Timings = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            times[name].append(await timed(call))
    return times


StoreFactory = Callable[[str], ArtifactStore]


def read_calls(
    make_store: StoreFactory,
    roots: dict[str, str],
    window: Range,
    rows: int,
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Per store root: a cold read, a warm read, and the manifest work of a cold read alone
    (``view``: list and read the manifests the window needs, no data file)."""
    calls: dict[str, Callable[[], Awaitable[Any]]] = {}
    for name, root in roots.items():
        warm_reg = registrar(make_store(root))

        async def cold(root: str = root) -> None:
            async with make_store(root) as store:
                read = await registrar(store).read(NODE, INTERVAL, window)
                assert len(read.frame) == rows, (len(read.frame), rows)

        async def manifests(root: str = root) -> None:
            async with make_store(root) as store:
                await registrar(store).view(NODE, INTERVAL, window)

        async def warm(reg: ArtifactRegistrar = warm_reg) -> None:
            read = await reg.read(NODE, INTERVAL, window)
            assert len(read.frame) == rows, (len(read.frame), rows)

        calls |= {f"{name} cold": cold, f"{name} warm": warm, f"{name} manifests": manifests}
    return calls


async def bench_read(
    label: str,
    make_store: StoreFactory,
    roots: dict[str, str],
    raw: Callable[[], Awaitable[Any]],
    window: Range,
    rows: int,
    repeat: int,
) -> bool:
    """Print the read table; whether compacted cold is within the target. The raw read and
    the compacted cold read run back to back in every round, and the verdict is the median
    of their per-round ratios (a paired comparison: load that comes and goes hits both)."""
    others = read_calls(make_store, roots, window, rows)
    calls = {"raw": raw, "compacted cold": others.pop("compacted cold"), **others}
    times = await interleaved(repeat, calls)
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    base = median["raw"]
    print(f"\nRead one year of 1m ({rows:,} bars), {label}, {repeat} rounds:")
    print(f"{'contender':>22} {'median ms':>9} {'best ms':>8} {'x raw':>6}   "
          "cold = manifests + data files/decode/frame (medians)")  # fmt: skip
    for name in ("raw", *(f"{root} {mode}" for root in roots for mode in ("cold", "warm"))):
        ms = median[name]
        shown = "raw read_table+pandas" if name == "raw" else name
        line = f"{shown:>22} {ms * 1e3:9.1f} {best[name] * 1e3:8.1f} {ms / base:6.2f}"
        if name.endswith(" cold"):
            cat = median[name.replace(" cold", " manifests")]
            line += f"   {cat * 1e3:7.1f} + {(ms - cat) * 1e3:7.1f} ms"
        print(line)
    paired = statistics.median(
        c / r for c, r in zip(times["compacted cold"], times["raw"], strict=True)
    )
    verdict = "PASS" if paired <= TARGET else "FAIL"
    print(
        f"{verdict}: compacted cold / raw = {paired:.2f} (median of per-round ratios; "
        f"best/best {best['compacted cold'] / best['raw']:.2f}; {label}; target <= {TARGET})"
    )
    return paired <= TARGET


async def build_stores(frame: pd.DataFrame, small: int, tmp: str) -> dict[str, str]:
    """The small-artifact store and a compacted copy of it; returns their directories."""
    small_dir, compacted_dir = os.path.join(tmp, "small"), os.path.join(tmp, "compacted")
    clock = FakeClock(CLOCK_START)
    async with LocalArtifactStore(small_dir) as store:
        reg = registrar(store, clock)
        for span in consecutive(len(frame), small):
            await reg.publish(
                slice_of(frame, span), node_id=NODE, interval=INTERVAL, requested_range=span,
                conformance_report=REPORT,
            )  # fmt: skip
            clock.advance(1.0)
    shutil.copytree(small_dir, compacted_dir)
    async with LocalArtifactStore(compacted_dir) as store:
        clock.advance(60.0)
        done = await compact(registrar(store, clock), NODE, period="month")
        assert len(done) == 12 or len(frame) < 525_600, len(done)
    return {"small": small_dir, "compacted": compacted_dir}


def raw_file(frame: pd.DataFrame, tmp: str) -> tuple[str, bytes]:
    """One zstd Parquet file holding all of ``frame`` (the registrar's own encoding)."""
    data = parquet_bytes(frame, {"node_id": NODE}, "zstd")
    path = os.path.join(tmp, "raw.parquet")
    with open(path, "wb") as fh:
        fh.write(data)
    return path, data


def files_under(directory: str) -> dict[str, bytes]:
    """Every file under ``directory`` by its store key."""
    found: dict[str, bytes] = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, directory).replace(os.sep, "/")] = fh.read()
    return found


async def upload(store: ArtifactStore, directory: str) -> None:
    gate = asyncio.Semaphore(32)

    async def put(key: str, data: bytes) -> None:
        async with gate:
            await store.put_new(key, data)

    files = await asyncio.to_thread(files_under, directory)
    await asyncio.gather(*(put(k, v) for k, v in files.items()))


async def main_async(bars: int, small: int, repeat: int, s3: bool, publish: bool) -> None:
    frame = year_of_bars(bars)
    window = Range(START, START + bars * INTERVAL)
    with tempfile.TemporaryDirectory() as tmp:
        if publish:
            await bench_publish(frame, small, max(1, repeat // 3), tmp)
        roots = await build_stores(frame, small, tmp)
        for root in roots.values():  # what is timed below reads exactly the published bars
            async with LocalArtifactStore(root) as store:
                read = await registrar(store).read(NODE, INTERVAL, window)
            assert read.frame.equals(frame), root
        path, data = raw_file(frame, tmp)

        async def raw_local() -> pd.DataFrame:
            return pq.read_table(path).to_pandas()

        await bench_read("local store", LocalArtifactStore, roots, raw_local, window, bars, repeat)
        if s3:
            await bench_s3(roots, data, window, bars, repeat)


async def bench_s3(
    roots: dict[str, str], data: bytes, window: Range, bars: int, repeat: int
) -> None:
    import boto3

    from qmtl.testing.servers import MotoS3Server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = MotoS3Server().start()
    try:
        bucket = "qmtl-bench"
        client = boto3.client(
            "s3", endpoint_url=server.endpoint_url, region_name=server.region,
            aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
        )  # fmt: skip
        client.create_bucket(Bucket=bucket)
        client.close()

        def make_store(prefix: str) -> ArtifactStore:
            return S3ArtifactStore(
                f"s3://{bucket}/{prefix}", endpoint_url=server.endpoint_url,
                access_key_id=server.access_key, secret_access_key=server.secret_key,
                region=server.region,
            )  # fmt: skip

        for name, directory in roots.items():
            async with make_store(name) as store:
                await upload(store, directory)
        raw_store = make_store("raw")
        await raw_store.put_new("raw.parquet", data)

        async def raw_s3() -> pd.DataFrame:
            body = await raw_store.get("raw.parquet")
            return pq.read_table(pa.BufferReader(body)).to_pandas()

        s3_roots = {name: name for name in roots}
        await bench_read("moto S3", make_store, s3_roots, raw_s3, window, bars, repeat)
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bars", type=int, default=525_600)
    parser.add_argument("--small", type=int, default=1000, help="small artifacts in the year")
    parser.add_argument("--repeat", type=int, help="read rounds (default 7; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="3 read rounds, no publish table")
    parser.add_argument("--s3", action="store_true", help="also read from moto's S3 server")
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 7)
    asyncio.run(main_async(args.bars, args.small, repeat, args.s3, publish=not args.quick))


if __name__ == "__main__":
    main()
