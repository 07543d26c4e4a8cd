"""``repair`` and ``qmtl-seamless artifacts repair``: damaged or lost data files come back byte
for byte from a real DuckDB hot store, into a real local store and S3 (a moto server) — and
nothing is written when the hot store no longer holds the published bars, or when the bytes
cannot be reproduced. Artifacts are published the way a fetch publishes them: bars stored in
the hot store, read back, conformed, handed to the real registrar."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.cli.main import main
from qmtl.runtime.io.artifact import ArtifactRegistrar
from qmtl.runtime.io.artifact_maintenance import verify
from qmtl.runtime.io.artifact_repair import CATALOG_PROBLEM, repair
from qmtl.runtime.io.artifact_stores import LocalArtifactStore
from qmtl.runtime.io.storage import LedgerUpdate, open_storage
from qmtl.runtime.sdk.artifact_catalog import manifest_bytes
from qmtl.runtime.sdk.artifact_publisher import ArtifactPublication
from qmtl.runtime.sdk.artifact_store import ArtifactStore
from qmtl.runtime.sdk.bars import frame_from_columns
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.conformance import ConformancePipeline
from qmtl.runtime.sdk.fingerprint import FingerprintConfig
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.history_storage import HistoryStorage
from tests.cli_rig import one_error_line
from tests.conftest import S3Bucket
from tests.test_artifact_registrar import LATER, NODE, T0, bars
from tests.test_artifact_stores import s3_store

HOUR = Range(T0, T0 + 3600)
NEXT_HOUR = Range(T0 + 3600, T0 + 7200)


# -- rig -------------------------------------------------------------------------------------------


async def store_bars(storage: HistoryStorage, frame: pd.DataFrame, span: Range) -> None:
    """What a backfill leaves: the bars, and a ledger vouching for ``span``."""
    update = LedgerUpdate(interval=60, data=(span,), fetched_at=float(span.end))
    await storage.write_bars(NODE, frame, ledger_update=update)


async def publish_stored(
    registrar: ArtifactRegistrar, storage: HistoryStorage, span: Range
) -> ArtifactPublication:
    """Publish ``span`` as a fetch does: the hot store's bars, conformed, to the registrar."""
    raw = await storage.read_range(NODE, span.start, span.end)
    frame, report = ConformancePipeline().normalize(raw, 60)
    publication = await registrar.publish(
        frame, node_id=NODE, interval=60, requested_range=span, conformance_report=report
    )
    assert publication is not None
    return publication


@dataclass
class Raw:
    """The artifact store seen from outside qmtl (the file system, or boto3), to damage it."""

    get: Callable[[str], bytes]
    put: Callable[[str, bytes], None]
    delete: Callable[[str], None]
    exists: Callable[[str], bool]


def local_raw(root: Path) -> Raw:
    def put(key: str, data: bytes) -> None:
        (root / key).write_bytes(data)

    return Raw(
        get=lambda key: (root / key).read_bytes(),
        put=put,
        delete=lambda key: (root / key).unlink(),
        exists=lambda key: (root / key).is_file(),
    )


def s3_raw(bucket: S3Bucket, prefix: str) -> Raw:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        region_name=bucket.region,
        aws_access_key_id=bucket.access_key,
        aws_secret_access_key=bucket.secret_key,
    )
    name = bucket.bucket

    def get(key: str) -> bytes:
        body: bytes = client.get_object(Bucket=name, Key=f"{prefix}/{key}")["Body"].read()
        return body

    def put(key: str, data: bytes) -> None:
        client.put_object(Bucket=name, Key=f"{prefix}/{key}", Body=data)

    def delete(key: str) -> None:
        client.delete_object(Bucket=name, Key=f"{prefix}/{key}")

    def exists(key: str) -> bool:
        listed = client.list_objects_v2(Bucket=name, Prefix=f"{prefix}/{key}")
        return any(o["Key"] == f"{prefix}/{key}" for o in listed.get("Contents", []))

    return Raw(get=get, put=put, delete=delete, exists=exists)


@pytest.fixture(params=["local", "s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Callable[[], ArtifactStore], Raw]]:
    """A factory of stores over one root, and the same root seen from outside."""
    if request.param == "local":
        root = tmp_path / "artifacts"
        yield (lambda: LocalArtifactStore(root)), local_raw(root)
        return
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    prefix = f"lake-{uuid.uuid4().hex[:8]}"
    yield (lambda: s3_store(bucket, prefix)), s3_raw(bucket, prefix)


@asynccontextmanager
async def hot_store(path: Path | None = None) -> AsyncIterator[HistoryStorage]:
    async with open_storage(f"duckdb:///{path or ':memory:'}") as storage:
        yield storage


def data_key(publication: ArtifactPublication) -> str:
    return str(publication.manifest["storage"]["data_key"])


def flip(data: bytes, at: int, mask: int = 0xFF) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= mask
    return bytes(damaged)


# -- restore ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "delete"])
async def test_a_flipped_byte_or_a_lost_file_comes_back_byte_for_byte(
    backend: tuple[Callable[[], ArtifactStore], Raw], damage: str
) -> None:
    make_store, raw = backend
    async with hot_store() as storage, make_store() as store:
        await store_bars(storage, bars(T0, T0 + 7200), Range(T0, T0 + 7200))
        registrar = ArtifactRegistrar(store, clock=FakeClock(LATER))
        one = await publish_stored(registrar, storage, HOUR)
        two = await publish_stored(registrar, storage, NEXT_HOUR)
        key = data_key(one)
        original = raw.get(key)
        manifests = {k: raw.get(k) for k in await store.list("_manifests/")}
        if damage == "flip":
            raw.put(key, flip(original, len(original) // 2))
        else:
            raw.delete(key)
            assert not raw.exists(key)
        (problem, *_) = await verify(ArtifactRegistrar(store))  # a fresh reader
        assert problem.manifest_key.endswith(".json")

        (result,) = await repair(ArtifactRegistrar(store), storage)
        assert (result.action, result.node_id, result.data_key) == ("restored", NODE, key)
        assert result.problems and "SHA-256 as recorded" in result.reason
        assert raw.exists(key) and raw.get(key) == original
        assert await verify(ArtifactRegistrar(store)) == []
        assert {k: raw.get(k) for k in await store.list("_manifests/")} == manifests
        assert await repair(ArtifactRegistrar(store), storage) == []  # nothing left to do
        read = await ArtifactRegistrar(store).read(NODE, 60, Range(T0, T0 + 7200))
        assert read.frame["ts"].tolist() == list(range(T0, T0 + 7200, 60))
        assert data_key(two) != key


async def test_a_dry_run_says_what_it_would_do_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    async with hot_store() as storage, LocalArtifactStore(root) as store:
        await store_bars(storage, bars(T0, T0 + 3600), HOUR)
        publication = await publish_stored(
            ArtifactRegistrar(store, clock=FakeClock(LATER)), storage, HOUR
        )
        (root / data_key(publication)).unlink()
        before = tree(root)
        (result,) = await repair(ArtifactRegistrar(store), storage, NODE, dry_run=True)
        assert result.action == "would restore" and result.repairable
        assert result.reason.startswith("would re-encode 60 bars")
        assert tree(root) == before
        assert len(await verify(ArtifactRegistrar(store))) == 1


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- not repairable: nothing written ---------------------------------------------------------------


@pytest.mark.parametrize("change", ["rewritten", "deleted", "partly deleted"])
async def test_bars_gone_or_changed_in_the_hot_store_are_not_repairable(
    tmp_path: Path, change: str
) -> None:
    root = tmp_path / "artifacts"
    async with hot_store() as storage, LocalArtifactStore(root) as store:
        await store_bars(storage, bars(T0, T0 + 3600), HOUR)
        publication = await publish_stored(
            ArtifactRegistrar(store, clock=FakeClock(LATER)), storage, HOUR
        )
        path = root / data_key(publication)
        path.write_bytes(flip(path.read_bytes(), 100))
        if change == "rewritten":  # the exchange corrected a bar after publication
            corrected = bars(T0, T0 + 60, seed=7)
            await storage.write_bars(NODE, corrected)
        elif change == "deleted":
            await storage.delete_node(NODE)
        else:
            await storage.delete_node(NODE)
            await store_bars(storage, bars(T0, T0 + 1800), Range(T0, T0 + 1800))
        before = tree(root)
        (result,) = await repair(ArtifactRegistrar(store), storage)
        assert result.action == "not repairable" and not result.repairable
        expected = {
            "rewritten": "differ from the published ones (fingerprint",
            "deleted": "lacks bars of [2024-01-01T00:00:00Z, 2024-01-01T01:00:00Z): it holds 0 of",
            "partly deleted": "it holds 30 of the 60 published",
        }[change]
        assert expected in result.reason
        assert tree(root) == before


async def test_bytes_another_encoder_wrote_are_not_repairable(tmp_path: Path) -> None:
    """An artifact whose file another encoder wrote (same bars, same fingerprint, other
    bytes — as another pyarrow version would): the bars are found, the bytes cannot be
    made again, so nothing is written."""
    root = tmp_path / "artifacts"
    async with hot_store() as storage, LocalArtifactStore(root) as store:
        await store_bars(storage, bars(T0, T0 + 3600), HOUR)
        publication = await publish_stored(
            ArtifactRegistrar(store, clock=FakeClock(LATER)), storage, HOUR
        )
        key = data_key(publication)
        table = pq.read_table(root / key)
        foreign = io.BytesIO()
        pq.write_table(table, foreign, compression="zstd", use_dictionary=True)
        manifest = dict(publication.manifest)
        manifest["storage"] = {
            **manifest["storage"],
            "bytes": len(foreign.getvalue()),
            "sha256": hashlib.sha256(foreign.getvalue()).hexdigest(),
        }
        manifest_path = next(root.glob("_manifests/*/*.json"))
        manifest_path.write_bytes(manifest_bytes(manifest))
        (root / key).write_bytes(foreign.getvalue())
        assert await verify(ArtifactRegistrar(store)) == []  # a sound artifact ...
        (root / key).unlink()  # ... until its file is lost
        (result,) = await repair(ArtifactRegistrar(store), storage)
        assert result.action == "not repairable"
        assert "no compression" in result.reason and f"pyarrow {pa.__version__}" in result.reason
        assert not (root / key).exists()


async def test_the_compression_is_found_when_the_settings_changed(tmp_path: Path) -> None:
    """Published with snappy, repaired by a registrar configured for zstd: the manifest
    does not record the compression, its SHA-256 picks it."""
    async with hot_store() as storage, LocalArtifactStore(tmp_path) as store:
        await store_bars(storage, bars(T0, T0 + 3600), HOUR)
        registrar = ArtifactRegistrar(store, clock=FakeClock(LATER), compression="snappy")
        publication = await publish_stored(registrar, storage, HOUR)
        path = tmp_path / data_key(publication)
        original = path.read_bytes()
        path.unlink()
        (result,) = await repair(ArtifactRegistrar(store, compression="zstd"), storage)
        assert result.action == "restored" and "snappy" in result.reason
        assert path.read_bytes() == original


async def test_a_file_published_with_other_fingerprint_settings_is_intact(
    tmp_path: Path,
) -> None:
    """Bars with NaN, published with ``normalize_nan: zero``, checked by a registrar set to
    ``canonical``: verify recomputes with the manifest's settings, so nothing is damaged and
    repair writes nothing."""
    frame = bars(T0, T0 + 3600)
    frame.loc[3, "volume"] = np.nan
    async with hot_store() as storage, LocalArtifactStore(tmp_path) as store:
        await store_bars(storage, frame, HOUR)
        publication = await publish_stored(
            ArtifactRegistrar(store, clock=FakeClock(LATER)), storage, HOUR
        )
        before = tree(tmp_path)
        other = ArtifactRegistrar(
            store, fingerprint_config=FingerprintConfig(normalize_nan="canonical")
        )
        assert await repair(other, storage) == []
        assert tree(tmp_path) == before
        assert publication.manifest["fingerprint"]["normalize_nan"] == "zero"


async def test_an_unreadable_manifest_is_reported_not_repaired(tmp_path: Path) -> None:
    async with hot_store() as storage, LocalArtifactStore(tmp_path) as store:
        await store_bars(storage, bars(T0, T0 + 3600), HOUR)
        await publish_stored(ArtifactRegistrar(store, clock=FakeClock(LATER)), storage, HOUR)
        (manifest,) = await store.list("_manifests/")
        (tmp_path / manifest).write_bytes(b"{not json")
        (result,) = await repair(ArtifactRegistrar(store), storage)
        assert (result.manifest_key, result.data_key) == (CATALOG_PROBLEM, "")
        assert result.action == "not repairable" and "not JSON" in result.problems[0]


# -- the property ----------------------------------------------------------------------------------

values = st.floats(-1e6, 1e6, allow_nan=False) | st.just(float("nan"))


@st.composite
def bar_frames(draw: st.DrawFn) -> tuple[pd.DataFrame, Range]:
    """A random subset of a random range's 1m grid (gaps, known-empty stretches), with
    random values (NaN included); the range is what the ledger vouches for."""
    start = T0 + 60 * draw(st.integers(0, 10_000))
    n = draw(st.integers(1, 90))
    present = draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
    ts = np.array([start + 60 * i for i, kept in enumerate(present) if kept], dtype=np.int64)
    columns = {
        name: np.array(draw(st.lists(values, min_size=len(ts), max_size=len(ts))))
        for name in ("open", "high", "low", "close", "volume")
    }
    return frame_from_columns({"ts": ts, **columns}), Range(start, start + 60 * n)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=bar_frames(), damage=st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)))
def test_repair_then_verify_is_clean_and_the_bytes_are_the_published_ones(
    tmp_path: Path, case: tuple[pd.DataFrame, Range], damage: tuple[float, int]
) -> None:
    """For random bars and a random single-byte change (mask 0: the file deleted instead),
    repair restores exactly the bytes first published."""
    frame, span = case
    where, mask = damage
    root = tmp_path / uuid.uuid4().hex

    async def run() -> None:
        async with hot_store() as storage, LocalArtifactStore(root) as store:
            await store_bars(storage, frame, span)
            publication = await publish_stored(
                ArtifactRegistrar(store, clock=FakeClock(LATER)), storage, span
            )
            path = root / data_key(publication)
            original = path.read_bytes()
            if mask:
                path.write_bytes(flip(original, int(where * len(original)), mask))
            else:
                path.unlink()
            (result,) = await repair(ArtifactRegistrar(store), storage)
            assert result.action == "restored", result
            assert path.read_bytes() == original
            assert await verify(ArtifactRegistrar(store)) == []

    asyncio.run(run())


# -- the command -----------------------------------------------------------------------------------


def run_cli(argv: list[str], code: int) -> Any:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(argv) == code
    return json.loads(out.getvalue())


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A DuckDB hot store (closed) and a local artifact store with two artifacts of it."""
    db, root = tmp_path / "hot.duckdb", tmp_path / "artifacts"

    async def fill() -> list[str]:
        async with hot_store(db) as storage, LocalArtifactStore(root) as store:
            await store_bars(storage, bars(T0, T0 + 7200), Range(T0, T0 + 7200))
            registrar = ArtifactRegistrar(store, clock=FakeClock(LATER))
            return [
                data_key(await publish_stored(registrar, storage, r)) for r in (HOUR, NEXT_HOUR)
            ]

    return db, root, asyncio.run(fill())


def test_the_command_restores_and_says_what_it_did(
    published: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, root, (first, second) = published
    options = ["--store", str(root), "--dsn", f"duckdb:///{db}"]
    original = {k: (root / k).read_bytes() for k in (first, second)}
    assert main(["artifacts", "repair", *options]) == 0  # nothing damaged
    captured = capsys.readouterr()
    assert captured.out.strip() == "checked 2 artifacts of 1 nodes: nothing damaged"
    assert captured.err.strip() == f"store: file://{root} (bars from {db})"

    (root / first).write_bytes(flip(original[first], 5))
    (root / second).unlink()
    assert main(["artifacts", "repair", NODE, *options, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out[:2]] == [["WOULD", "RESTORE"]] * 2
    assert out[2].endswith("2 damaged, 2 would be restored (dry run: nothing written)")
    assert not (root / second).exists()

    assert main(["artifacts", "repair", *options]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"RESTORED {NODE} file://{root}/{first}: data file sha256 ")
    assert " -> re-encoded 60 bars of [2024-01-01T00:00:00Z, 2024-01-01T01:00:00Z)" in out[0]
    assert out[0].endswith(".json)")
    assert f"file://{root}/{second} is missing -> re-encoded 60 bars" in out[1]
    assert out[2] == "checked 2 artifacts of 1 nodes: 2 damaged, 2 restored"
    assert {k: (root / k).read_bytes() for k in (first, second)} == original
    assert main(["artifacts", "verify", "--store", str(root)]) == 0


def test_the_command_exits_1_when_the_hot_store_lost_the_bars(
    published: tuple[Path, Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, root, (first, second) = published

    async def forget() -> None:
        async with hot_store(db) as storage:
            await storage.delete_node(NODE)
            kept = bars(T0, T0 + 7200).iloc[60:].reset_index(drop=True)  # as published
            await store_bars(storage, kept, NEXT_HOUR)

    asyncio.run(forget())
    (root / first).unlink()
    (root / second).unlink()
    before = tree(root)
    result = run_cli(
        ["artifacts", "repair", "--store", str(root), "--dsn", f"duckdb:///{db}", "--json"], 1
    )
    assert result["store"] == f"file://{root}" and result["hot_store"] == str(db)
    assert (result["ok"], result["dry_run"], result["artifacts"]) == (False, False, 2)
    lost, kept = result["results"]
    assert lost["action"] == "not repairable" and "lacks bars" in lost["reason"]
    assert lost["data_uri"] == f"file://{root}/{first}" and lost["manifest_uri"].endswith(".json")
    assert kept["action"] == "restored"
    assert tree(root) == {**before, second: (root / second).read_bytes()}  # only that one
    assert main(["artifacts", "repair", "--store", str(root), "--dsn", f"duckdb:///{db}"]) == 1
    (line, summary) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"NOT REPAIRABLE {NODE} file://{root}/{first}: data file ")
    assert summary == "checked 2 artifacts of 1 nodes: 1 damaged, 1 not repairable"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ohlcv:binance"], "ohlcv:binance"),
        (["../../etc/passwd"], "passwd"),
        (["--store", "ftp://x"], "--store: unsupported store 'ftp://x'"),
        (["--store", "s3://x"], "--store: 's3://x' needs a valid bucket"),
        (["--dsn", "mysql://x"], "mysql"),
        (["--dsn", "duckdb:///{tmp}/nothing.duckdb"], "no store at {tmp}/nothing.duckdb"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    store = [] if "--store" in argv else ["--store", str(tmp_path / "none")]
    dsn = [] if "--dsn" in argv else ["--dsn", f"duckdb:///{tmp_path / 'none.duckdb'}"]
    assert main(["artifacts", "repair", *argv, *store, *dsn]) == 2
    line = one_error_line(capsys.readouterr().err, "artifacts repair")
    assert message.replace("{tmp}", str(tmp_path)) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created


def test_an_empty_artifact_store_has_nothing_to_repair(
    published: tuple[Path, Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, _, _ = published
    empty = tmp_path / "no-artifacts"
    assert main(["artifacts", "repair", "--store", str(empty), "--dsn", f"duckdb:///{db}"]) == 0
    assert capsys.readouterr().out.strip() == "no artifacts yet: nothing to repair"
    assert not empty.exists()
