"""The registrar's promises, each tested where it could break: stabilization once, as_of time
travel against a model (``hypothesis.stateful``), create-once immutability under a real killed
process, byte-identical re-runs, collisions, verification, S3."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.artifact import ArtifactCollisionError, ArtifactRegistrar
from qmtl.runtime.io.artifact_maintenance import compact, verify
from qmtl.runtime.io.artifact_stores import LocalArtifactStore, S3ArtifactStore
from qmtl.runtime.sdk.artifact_keys import data_key
from qmtl.runtime.sdk.bars import frame_from_columns
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.config import DEFAULT_PARTITION_TEMPLATE
from qmtl.runtime.sdk.conformance import ConformanceReport
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.fingerprint import FingerprintConfig, FingerprintMetadata, compute_fingerprint
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics

NODE = "ohlcv:binance:BTC/USDT:1m"
T0 = 1_704_067_200  # 2024-01-01
LATER = 1_900_000_000.0  # a clock long after every bar: all of them are stable
REPORT = ConformanceReport(flags={})


def bars(start: int, end: int, seed: int = 0, interval: int = 60) -> pd.DataFrame:
    ts = np.arange(start, end, interval, dtype=np.int64)
    rng = np.random.default_rng(seed)
    close = 100 + rng.standard_normal(len(ts)).cumsum()
    return frame_from_columns(
        {
            "ts": ts,
            "open": close + 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": rng.random(len(ts)) * 10,
        }
    )


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


async def publish(registrar: ArtifactRegistrar, frame: pd.DataFrame, span: Range) -> Any:
    return await registrar.publish(
        frame, node_id=NODE, interval=60, requested_range=span, conformance_report=REPORT
    )


# -- stabilization, once ---------------------------------------------------------------------


async def test_bars_closing_within_stabilization_bars_of_now_are_not_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = T0 + 600  # a bar boundary: bars close at 60-second marks
    async with LocalArtifactStore(tmp_path) as store:
        registrar = ArtifactRegistrar(store, clock=FakeClock(now), early_fingerprint=True)
        with caplog.at_level(logging.INFO, logger="qmtl"):
            publication = await publish(registrar, bars(T0, now), Range(T0, now))
        assert publication is not None
        assert (publication.start, publication.end) == (T0, now - 2 * 60)  # once: 2 bars held
        assert publication.rows == 8 and publication.manifest["stabilization_bars"] == 2
        (mismatch,) = [
            r for r in caplog.records if r.getMessage() == "seamless.fingerprint.preview_mismatch"
        ]
        assert mismatch.dataset_fingerprint == publication.dataset_fingerprint  # type: ignore[attr-defined]
        assert publication.manifest["preview_fingerprint"] == mismatch.preview_fingerprint  # type: ignore[attr-defined]
        nothing = await publish(registrar, bars(now - 120, now), Range(now - 120, now))
        assert nothing is None  # only unstable bars: nothing published
    with pytest.raises(ValueError, match="stabilization_bars must be >= 1"):
        ArtifactRegistrar(LocalArtifactStore(tmp_path), stabilization_bars=0)


# -- as_of: a later publication never changes what an earlier as_of sees ---------------------------


class AsOfMachine(RuleBasedStateMachine):
    """Publications (overlapping, with corrected values), compactions and reads at any past
    instant, against a model: per bar, the newest publication at or before the instant."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.root = Path(os.environ["QMTL_AS_OF_MACHINE_ROOT"]) / str(time.monotonic_ns())
        self.clock = FakeClock(LATER)
        self.store = LocalArtifactStore(self.root)
        self.registrar = ArtifactRegistrar(self.store, clock=self.clock)
        self.published: list[tuple[int, pd.DataFrame]] = []  # (as_of ms, bars)
        self.seen: dict[int, pd.DataFrame] = {}  # first answer at each instant

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def model(self, as_of_ms: int) -> pd.DataFrame:
        merged: dict[int, tuple[float, ...]] = {}
        for stamp, frame in self.published:
            if stamp <= as_of_ms:
                for row in frame.itertuples(index=False):
                    merged[int(row[0])] = tuple(row[1:])
        ts = np.array(sorted(merged), dtype=np.int64)
        values = np.array([merged[t] for t in ts.tolist()], dtype=np.float64).reshape(-1, 5)
        columns = dict(zip(("open", "high", "low", "close", "volume"), values.T, strict=True))
        return frame_from_columns({"ts": ts, **columns})

    @initialize()
    def start(self) -> None:
        self.published.clear()

    @rule(
        first=st.integers(0, 30), length=st.integers(1, 12), seed=st.integers(0, 3),
        advance=st.sampled_from([0.0, 0.0005, 0.5, 90.0]),
    )  # fmt: skip
    def publish(self, first: int, length: int, seed: int, advance: float) -> None:
        self.clock.advance(advance)
        span = Range(T0 + first * 60, T0 + (first + length) * 60)
        frame = bars(span.start, span.end, seed=seed)
        result = self.run(publish(self.registrar, frame, span))
        stamp = int(pd.Timestamp(result.as_of).value // 1_000_000)
        if not any(stamp == s for s, _ in self.published):
            self.published.append((stamp, frame))  # a deduped publication changes nothing

    @rule(period=st.sampled_from(["month", "year"]))
    def compaction(self, period: str) -> None:
        self.clock.advance(1.0)
        for publication in self.run(compact(self.registrar, NODE, period=period)):  # type: ignore[arg-type]
            stamp = int(pd.Timestamp(publication.as_of).value // 1_000_000)
            read = self.run(
                self.registrar.read(NODE, 60, Range(publication.start, publication.end))
            )
            self.published.append((stamp, read.frame))  # same bars, newer stamp

    @rule(pick=st.integers(0, 1000), fresh=st.booleans())
    def read_as_of(self, pick: int, fresh: bool) -> None:
        stamps = sorted({s for s, _ in self.published})
        if not stamps:
            return
        as_of = stamps[pick % len(stamps)] + (pick % 3) - 1  # just before, at, just after
        registrar = ArtifactRegistrar(self.store, clock=self.clock) if fresh else self.registrar
        window = Range(T0 - 600, T0 + 3600)
        got = self.run(registrar.read(NODE, 60, window, as_of=as_of)).frame
        expected = self.model(as_of)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)
        # The promise covers every instant up to the newest as_of handed out; a later
        # instant means "the newest, whatever lands until then", which may still grow.
        if as_of <= stamps[-1]:
            first = self.seen.setdefault(as_of, got)
            pd.testing.assert_frame_equal(first.reset_index(drop=True), got.reset_index(drop=True))

    @invariant()
    def as_of_strictly_increases(self) -> None:
        stamps = [e.as_of_ms for e in self.run(self.registrar.catalog(NODE)).entries]
        assert stamps == sorted(set(stamps))

    def teardown(self) -> None:
        self.loop.close()


@pytest.mark.usefixtures("_machine_root")
class TestAsOf(AsOfMachine.TestCase):  # type: ignore[misc,name-defined]
    settings = settings(
        max_examples=60,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.fixture
def _machine_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QMTL_AS_OF_MACHINE_ROOT", str(tmp_path))


# -- immutability: create-once, crash between data and manifest, collisions -----------------------

#: Publishes one big artifact to the store at argv[1]; the parent kills it mid-way.
PUBLISHER = """
import asyncio, sys
import numpy as np
from qmtl.runtime.io.artifact import ArtifactRegistrar
from qmtl.runtime.io.artifact_stores import LocalArtifactStore
from qmtl.runtime.sdk.bars import frame_from_columns
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.conformance import ConformanceReport
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.history_coverage import Range

T0, N = 1_704_067_200, 400_000
ts = np.arange(T0, T0 + 60 * N, 60, dtype=np.int64)
x = np.random.default_rng(1).random(N)
frame = frame_from_columns(dict(ts=ts, open=x, high=x + 1, low=x - 1, close=x, volume=x))
async def main():
    registrar = ArtifactRegistrar(LocalArtifactStore(sys.argv[1]), clock=FakeClock(2e9))
    await registrar.publish(frame, node_id="ohlcv:binance:BTC/USDT:1m", interval=60,
                            requested_range=Range(T0, T0 + 60 * N),
                            conformance_report=ConformanceReport(flags={}))
asyncio.run(main())
"""


def test_a_publisher_killed_between_data_and_manifest_leaves_nothing_visible(
    tmp_path: Path,
) -> None:
    caught = False
    for attempt in range(25):
        root = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(root)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.suffix == ".parquet" for p in root.rglob("*.parquet")):
                proc.send_signal(signal.SIGKILL)  # the data file exists: kill now
                break
            time.sleep(0.0005)
        proc.wait(30)
        manifests = list(root.rglob("*.json"))
        data = list(root.rglob("*.parquet"))
        entries, visible = asyncio.run(_visible(root))
        assert len(entries) == len(manifests)  # an artifact is visible only through a manifest
        if data and not manifests:
            caught = True
            assert entries == () and visible == ()
            # the next publish of the same bars completes it: same data file, then manifest
            redo = subprocess.run([sys.executable, "-c", PUBLISHER, str(root)], timeout=120)
            assert redo.returncode == 0
            entries, _ = asyncio.run(_visible(root))
            (entry,) = entries
            assert entry.rows == 400_000
            assert asyncio.run(verify(ArtifactRegistrar(LocalArtifactStore(root)))) == []
            break
    assert caught, "never caught a publisher between its data file and its manifest"


async def _visible(root: Path) -> tuple[Any, Any]:
    registrar = ArtifactRegistrar(LocalArtifactStore(root), clock=FakeClock(2e9))
    view = await registrar.view(NODE, 60, Range(T0, T0 + 3600))
    return (await registrar.catalog(NODE)).entries, view.entries


async def test_same_fingerprint_with_other_bytes_is_a_refused_collision(tmp_path: Path) -> None:
    metrics = SeamlessMetrics(CollectorRegistry())
    frame, span = bars(T0, T0 + 3600), Range(T0, T0 + 3600)
    meta = FingerprintMetadata(node_id=NODE, interval=60, range=(T0, T0 + 3600),
                               conformance_version=REPORT.version)  # fmt: skip
    key = data_key(
        DEFAULT_PARTITION_TEMPLATE, NODE, T0, T0 + 3600, compute_fingerprint(frame, meta)
    )
    async with LocalArtifactStore(tmp_path) as store:
        assert await store.put_new(key, b"not the bars")
        registrar = ArtifactRegistrar(store, clock=FakeClock(LATER), metrics=metrics)
        with pytest.raises(ArtifactCollisionError, match="different bytes"):
            await publish(registrar, frame, span)
        assert await registrar.catalog(NODE) == type(await registrar.catalog(NODE))(NODE)
    counter = metrics.fingerprint_collisions.labels(node_id=NODE)
    assert counter._value.get() == 1.0


async def test_a_nodes_collision_counter_exists_at_zero_from_its_first_publication(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    async with LocalArtifactStore(tmp_path) as store:
        registrar = ArtifactRegistrar(
            store, clock=FakeClock(LATER), metrics=SeamlessMetrics(registry)
        )
        await publish(registrar, bars(T0, T0 + 3600), Range(T0, T0 + 3600))
    assert registry.get_sample_value("fingerprint_collisions_total", {"node_id": NODE}) == 0.0


async def test_verify_names_a_flipped_byte_and_a_missing_file(tmp_path: Path) -> None:
    async with LocalArtifactStore(tmp_path) as store:
        registrar = ArtifactRegistrar(store, clock=FakeClock(LATER))
        one = await publish(registrar, bars(T0, T0 + 3600), Range(T0, T0 + 3600))
        two = await publish(registrar, bars(T0 + 3600, T0 + 7200), Range(T0 + 3600, T0 + 7200))
        assert await verify(registrar) == []
        first = tmp_path / one.uri.removeprefix(f"file://{tmp_path}/")
        data = bytearray(first.read_bytes())
        data[len(data) // 2] ^= 0xFF
        first.write_bytes(bytes(data))
        fresh = ArtifactRegistrar(store)  # no decoded copy cached: reads the damaged file
        with pytest.raises(StorageError, match="is damaged"):
            await fresh.read(NODE, 60, Range(T0, T0 + 3600))  # a flipped byte is never served
        (tmp_path / two.uri.removeprefix(f"file://{tmp_path}/")).unlink()
        problems = [str(p) for p in await verify(registrar)]
    assert any("sha256" in p for p in problems) and any("missing" in p for p in problems)


# -- reproducible: byte-identical re-runs, the same fingerprint in another process ---------------


async def session(root: Path) -> list[str]:
    async with LocalArtifactStore(root) as store:
        clock = FakeClock(LATER)
        registrar = ArtifactRegistrar(store, clock=clock, worker_id="w1")
        out = []
        for day in range(3):
            span = Range(T0 + day * 86_400, T0 + (day + 1) * 86_400)
            out.append((await publish(registrar, bars(span.start, span.end, day), span)).as_of)
            clock.advance(1.5)
        await compact(registrar, NODE)
        return out


def test_the_same_session_with_a_pinned_clock_writes_the_same_bytes(tmp_path: Path) -> None:
    asyncio.run(session(tmp_path / "a"))
    asyncio.run(session(tmp_path / "b"))
    first, second = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert sorted(first) == sorted(second) and len(first) == 8  # 4 data files, 4 manifests

    def body(files: dict[str, bytes]) -> dict[str, bytes]:  # manifests name their own root
        return {k: v.replace(str(tmp_path).encode(), b"") for k, v in files.items()}

    assert body(first) == body({k: v.replace(b"/b/", b"/a/") for k, v in second.items()})
    other = subprocess.run(
        [sys.executable, "-c", RECOMPUTE, str(tmp_path / "a")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    registrar = ArtifactRegistrar(LocalArtifactStore(tmp_path / "a"))
    ours = sorted(e.dataset_fingerprint for e in asyncio.run(registrar.catalog(NODE)).entries)
    assert sorted(other.stdout.split()) == ours


#: Another process recomputes every fingerprint from the data files alone (pyarrow + hashlib).
RECOMPUTE = """
import json, pathlib, sys
import pyarrow.parquet as pq
from qmtl.runtime.sdk.fingerprint import compute_fingerprint
root = pathlib.Path(sys.argv[1])
for path in root.rglob("*.parquet"):
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    print(compute_fingerprint(table.to_pandas(), {"node_id": meta["node_id"],
          "interval": int(meta["interval"]), "range": [int(meta["start"]), int(meta["end"])],
          "conformance_version": "v2"}))
"""


# -- S3 -----------------------------------------------------------------------------------------


async def test_the_registrar_on_s3(s3_bucket: Any) -> None:
    store = S3ArtifactStore(
        f"{s3_bucket.uri}/artifacts", endpoint_url=s3_bucket.endpoint_url,
        access_key_id=s3_bucket.access_key, secret_access_key=s3_bucket.secret_key,
        region=s3_bucket.region, allow_http=True,
    )  # fmt: skip
    async with store:
        clock = FakeClock(LATER)
        registrar = ArtifactRegistrar(store, clock=clock)
        one = await publish(registrar, bars(T0, T0 + 3600), Range(T0, T0 + 3600))
        clock.advance(1)
        await publish(registrar, bars(T0 + 3600, T0 + 7200, 1), Range(T0 + 3600, T0 + 7200))
        assert one.uri.startswith(f"{s3_bucket.uri}/artifacts/exchange=binance/")
        pinned = await registrar.read(NODE, 60, Range(T0, T0 + 7200), as_of=one.as_of)
        assert len(pinned.frame) == 60 and pinned.view.missing == (Range(T0 + 3600, T0 + 7200),)
        assert len(await compact(registrar, NODE)) == 1
        assert await verify(registrar) == []
        fresh = ArtifactRegistrar(store)  # another process's view: from the bucket alone
        full = await fresh.read(NODE, 60, Range(T0, T0 + 7200))
        assert len(full.frame) == 120 and [e.kind for e in full.view.entries] == ["compaction"]
        digest = hashlib.sha256(await store.get(full.view.entries[0].data_key)).hexdigest()
        assert digest == full.view.entries[0].data_sha256


async def test_an_unreadable_manifest_is_a_store_failure_and_a_verify_finding(
    tmp_path: Path,
) -> None:
    async with LocalArtifactStore(tmp_path) as store:
        registrar = ArtifactRegistrar(store, clock=FakeClock(LATER))
        one = await publish(registrar, bars(T0, T0 + 3600), Range(T0, T0 + 3600))
        manifest = tmp_path / one.manifest_uri.removeprefix(f"file://{tmp_path}/")
        manifest.write_bytes(b"{not json")
        fresh = ArtifactRegistrar(store)
        with pytest.raises(StorageError, match="not JSON"):
            await fresh.catalog(NODE)
        (problem,) = await verify(ArtifactRegistrar(store))
    assert problem.manifest_key == "(catalog)" and "not JSON" in problem.problem


async def test_verify_recomputes_with_the_manifests_fingerprint_settings(tmp_path: Path) -> None:
    """A store published with ``normalize_nan: canonical`` verifies clean for a reader with
    the default settings: a fingerprint is checked against what it was computed with."""
    canonical = FingerprintConfig(normalize_nan="canonical")
    async with LocalArtifactStore(tmp_path) as store:
        publisher = ArtifactRegistrar(store, clock=FakeClock(LATER), fingerprint_config=canonical)
        await publish(publisher, bars(T0, T0 + 3600), Range(T0, T0 + 3600))
        assert await verify(ArtifactRegistrar(store)) == []
