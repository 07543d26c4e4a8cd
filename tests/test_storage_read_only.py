"""Read-only opens (SPEC §15: "read commands never create a store") and ``resolved_location``.

A read-only store creates nothing (no file, no directory, no table), never migrates, reads
what is there (an empty answer when nothing is stored) and refuses every write.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from qmtl.runtime.io.storage import (
    DuckDBStorage,
    HistoryStorage,
    PostgresStorage,
    StorageError,
    open_storage,
)
from qmtl.runtime.io.storage.base import masked_dsn
from qmtl.runtime.sdk.history_coverage import CoverageSegment, Range, SegmentKind
from qmtl.runtime.sdk.history_storage import LedgerUpdate
from tests.test_storage import NODE, I, assert_bars_equal, bars
from tests.test_storage_schema import make_legacy, sql, tables_of

UPDATE = LedgerUpdate(interval=I, data=(Range(0, 300),), source="binance", fetched_at=1e3)


@pytest.fixture(params=["duckdb", "postgres"])
def storage_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'hot.duckdb'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


async def assert_writes_refused(store: HistoryStorage) -> None:
    for call in (
        store.write_bars(NODE, bars([600]), ledger_update=UPDATE),
        store.update_ledger(NODE, UPDATE),
        store.delete_node(NODE),
    ):
        with pytest.raises(StorageError, match=r"is open read-only: \w+ refused"):
            await call


async def file_digest(path: Path) -> str:
    return hashlib.sha256(await asyncio.to_thread(path.read_bytes)).hexdigest()


# -- DuckDB: nothing is created ---------------------------------------------------------------


async def test_read_only_duckdb_without_a_file_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_storage("duckdb:///not/yet/there.duckdb", read_only=True)
    expected = tmp_path / "not" / "yet" / "there.duckdb"
    message = f"no store at {expected}: nothing has been stored there yet (check --dsn)"  # absolute
    for call in (
        store.read_range(NODE, 0, 60),
        store.read_ledger(NODE, I),
        store.coverage_bounds(NODE, I),
    ):
        with pytest.raises(StorageError) as info:
            await call
        assert str(info.value) == message
    with pytest.raises(StorageError, match="no store at"):
        async with store:
            pass
    assert await store.resolved_location() == str(expected)
    await store.close()
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []  # no file, no dir


async def test_read_only_in_memory_duckdb_is_no_store() -> None:
    store = open_storage("duckdb:///:memory:", read_only=True)
    with pytest.raises(StorageError, match=r"no store at :memory:"):
        await store.read_range(NODE, 0, 60)
    assert await store.resolved_location() == ":memory:"


async def test_read_only_duckdb_leaves_the_file_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "hot.duckdb"
    async with open_storage(f"duckdb:///{path}") as store:
        await store.write_bars(NODE, bars(range(0, 300, I)), ledger_update=UPDATE)
    before = await file_digest(path)
    async with open_storage(f"duckdb:///{path}", read_only=True) as store:
        assert_bars_equal(await store.read_range(NODE, 0, 10_000), bars(range(0, 300, I)))
        await assert_writes_refused(store)
    assert await file_digest(path) == before


async def test_read_only_duckdb_file_without_our_tables_reads_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    await sql(f"duckdb:///{path}", "SELECT 1")  # a valid, empty DuckDB database
    async with open_storage(f"duckdb:///{path}", read_only=True) as store:
        assert (await store.read_range(NODE, 0, 60)).empty
        assert await store.read_ledger(NODE, I) == []
        assert await store.coverage_bounds(NODE, I) is None
        await assert_writes_refused(store)
    assert await tables_of(f"duckdb:///{path}") == set()


# -- both backends ----------------------------------------------------------------------------


async def test_read_only_reads_a_store_and_refuses_writes(storage_dsn: str) -> None:
    async with open_storage(storage_dsn) as writer:
        await writer.write_bars(NODE, bars(range(0, 300, I)), ledger_update=UPDATE)
    async with open_storage(storage_dsn, read_only=True) as store:
        assert_bars_equal(await store.read_range(NODE, 0, 10_000), bars(range(0, 300, I)))
        assert await store.read_ledger(NODE, I) == [
            CoverageSegment(0, 300, SegmentKind.DATA, "binance", 1e3)
        ]
        assert await store.coverage_bounds(NODE, I) == Range(0, 300)
        await assert_writes_refused(store)
        assert len(await store.read_range(NODE, 0, 10_000)) == 5  # nothing was deleted


async def test_read_only_never_migrates_a_legacy_store(storage_dsn: str) -> None:
    await make_legacy(storage_dsn)
    async with open_storage(storage_dsn, read_only=True) as store:
        assert len(await store.read_range(NODE, 0, 10_000)) == 5
        assert await store.read_ledger(NODE, I) != []
    assert "qmtl_meta" not in await tables_of(storage_dsn)


async def test_read_only_postgres_without_our_tables_reads_empty(postgres_dsn: str) -> None:
    async with open_storage(postgres_dsn, read_only=True) as store:
        assert (await store.read_range(NODE, 0, 60)).empty
        assert await store.read_ledger(NODE, I) == []
        assert await store.coverage_bounds(NODE, I) is None
        await assert_writes_refused(store)
        # Tables that appear later (a writer elsewhere) are read from then on.
        async with open_storage(postgres_dsn) as writer:
            await writer.write_bars(NODE, bars([0, 60]))
        assert len(await store.read_range(NODE, 0, 120)) == 2
    assert "qmtl_bars" in await tables_of(postgres_dsn)


async def test_read_only_postgres_sessions_refuse_writes_server_side(postgres_dsn: str) -> None:
    store = PostgresStorage(postgres_dsn, read_only=True)
    try:
        # Even a statement slipping past the store's own check is refused by the server.
        async def sneak(conn: object) -> None:
            await conn.execute("CREATE TABLE sneaky (x int)")  # type: ignore[attr-defined]

        with pytest.raises(StorageError, match="read-only transaction"):
            await store._run("sneak", None, sneak)
    finally:
        await store.close()
    assert await tables_of(postgres_dsn) == set()


# -- where the store is -----------------------------------------------------------------------


async def test_resolved_location_of_duckdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert await DuckDBStorage("duckdb:///rel/x.duckdb").resolved_location() == str(
        tmp_path / "rel" / "x.duckdb"
    )
    absolute = tmp_path / "abs.duckdb"
    assert await open_storage(f"duckdb:///{absolute}").resolved_location() == str(absolute)
    assert await open_storage("duckdb:///:memory:").resolved_location() == ":memory:"
    # Fixed at first use: the file opened is the one reported, whatever the cwd does later.
    store = open_storage("duckdb:///here.duckdb")
    async with store:
        await store.write_bars(NODE, bars([0]))
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        assert await store.resolved_location() == str(tmp_path / "here.duckdb")
        await store.write_bars(NODE, bars([60]))
    assert not (tmp_path / "elsewhere" / "here.duckdb").exists()


async def test_resolved_location_of_postgres_masks_passwords() -> None:
    dsn = "postgresql://trader:s3cr%40t@127.0.0.1:1/market?sslmode=disable&password=hunter2"
    store = open_storage(dsn)
    location = await store.resolved_location()
    assert location == "postgresql://trader:***@127.0.0.1:1/market?sslmode=disable&password=***"
    assert "s3cr" not in repr(store) and "hunter2" not in repr(store)
    with pytest.raises(StorageError) as info:  # nothing listens on port 1
        await store.read_range(NODE, 0, 60)
    assert location in str(info.value)
    assert "s3cr" not in str(info.value) and "hunter2" not in str(info.value)
    await store.close()
    assert masked_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    assert (
        masked_dsn("postgres://u:p@[::1]:5432,h2:5433/db")
        == "postgres://u:***@[::1]:5432,h2:5433/db"
    )


def test_open_storage_passes_read_only() -> None:
    assert isinstance(open_storage("duckdb:///:memory:"), DuckDBStorage)
    for dsn in ("duckdb:///x.duckdb", "postgresql://u@127.0.0.1:1/db"):
        store = open_storage(dsn, read_only=True)
        assert getattr(store, "read_only", None) is True
        assert "read_only=True" in repr(store)
        assert getattr(open_storage(dsn), "read_only", None) is False
