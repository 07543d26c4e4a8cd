"""Schema versions: every store is marked (``qmtl_meta``), stores written before the mark are
migrated in place, newer and foreign databases are refused — on DuckDB and real PostgreSQL.

Databases are prepared with raw SQL from connections of their own (never through the store),
so each test sees exactly what an earlier release, a newer one or another program left.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import pytest

import qmtl
from qmtl.runtime.io.storage import StorageError, open_storage
from qmtl.runtime.io.storage import base as storage_base
from qmtl.runtime.io.storage import duckdb as duckdb_backend
from qmtl.runtime.io.storage import postgres as postgres_backend
from qmtl.runtime.io.storage.base import (
    SCHEMA_VERSION,
    SchemaState,
    check_migrations,
    migration_steps,
    plan_schema,
)
from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS
from qmtl.runtime.sdk.history_coverage import CoverageSegment, Range, SegmentKind
from qmtl.runtime.sdk.history_storage import LedgerUpdate
from tests.test_storage import BACKENDS, NODE, I, assert_bars_equal, bars

# What qmtl-seamless 0.1.0 (before qmtl_meta) created, verbatim: the migration's input.
LEGACY_DDL = {
    "duckdb": [
        "CREATE SEQUENCE IF NOT EXISTS qmtl_node_key_seq",
        "CREATE TABLE IF NOT EXISTS qmtl_nodes (node_key BIGINT PRIMARY KEY,"
        " node_hash BLOB NOT NULL UNIQUE, node_id VARCHAR NOT NULL)",
        "CREATE TABLE IF NOT EXISTS qmtl_bars (node_key BIGINT NOT NULL, ts BIGINT NOT NULL,"
        " open DOUBLE NOT NULL, high DOUBLE NOT NULL, low DOUBLE NOT NULL,"
        " close DOUBLE NOT NULL, volume DOUBLE NOT NULL, PRIMARY KEY (node_key, ts))",
        "CREATE TABLE IF NOT EXISTS qmtl_ledger (node_key BIGINT NOT NULL,"
        " interval_s BIGINT NOT NULL, seg_start BIGINT NOT NULL, seg_end BIGINT NOT NULL,"
        " kind VARCHAR NOT NULL, source VARCHAR, fetched_at DOUBLE)",
        f"INSERT INTO qmtl_nodes VALUES (nextval('qmtl_node_key_seq'), unhex(sha256('{NODE}')),"
        f" '{NODE}')",
    ],
    "postgres": [
        "CREATE TABLE IF NOT EXISTS qmtl_nodes (node_key BIGINT GENERATED ALWAYS AS IDENTITY"
        " PRIMARY KEY, node_hash BYTEA NOT NULL UNIQUE, node_id TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS qmtl_bars (node_key BIGINT NOT NULL, ts BIGINT NOT NULL,"
        " open DOUBLE PRECISION NOT NULL, high DOUBLE PRECISION NOT NULL,"
        " low DOUBLE PRECISION NOT NULL, close DOUBLE PRECISION NOT NULL,"
        " volume DOUBLE PRECISION NOT NULL, PRIMARY KEY (node_key, ts))",
        "CREATE TABLE IF NOT EXISTS qmtl_ledger (node_key BIGINT NOT NULL,"
        " interval_s BIGINT NOT NULL, seg_start BIGINT NOT NULL, seg_end BIGINT NOT NULL,"
        " kind TEXT NOT NULL CHECK (kind IN ('data', 'empty')), source TEXT,"
        " fetched_at DOUBLE PRECISION, PRIMARY KEY (node_key, interval_s, seg_start))",
        "INSERT INTO qmtl_nodes (node_hash, node_id) VALUES"
        f" (sha256(convert_to('{NODE}', 'UTF8')), '{NODE}')",
    ],
}
# The legacy store's content: bars 0..240 and a DATA segment over them (node_key 1).
LEGACY_DATA = [
    "INSERT INTO qmtl_bars SELECT 1, ts, ts / 60.0, ts / 60.0 + 0.5, ts / 60.0 - 0.5,"
    " ts / 60.0 + 0.25, 10.0 FROM (VALUES (0), (60), (120), (180), (240)) AS v(ts)",
    "INSERT INTO qmtl_ledger VALUES (1, 60, 0, 300, 'data', 'binance', 1000.0)",
]
LEGACY_LEDGER = [CoverageSegment(0, 300, SegmentKind.DATA, "binance", 1000.0)]


def backend_of(dsn: str) -> str:
    return "duckdb" if dsn.startswith("duckdb:") else "postgres"


async def sql(dsn: str, *statements: str) -> list[tuple[Any, ...]]:
    """Run ``statements`` on the store's database from a connection of its own; the rows of
    the last one. DuckDB work runs in a thread, as blocking work should."""
    if backend_of(dsn) == "duckdb":

        def work() -> list[tuple[Any, ...]]:
            con = duckdb.connect(dsn.removeprefix("duckdb:///"))
            try:
                rows: list[tuple[Any, ...]] = []
                for statement in statements:
                    rows = con.execute(statement).fetchall()
                return rows
            finally:
                con.close()

        return await asyncio.to_thread(work)
    conn = await asyncpg.connect(dsn)
    try:
        rows = []
        for statement in statements:
            rows = [tuple(r) for r in await conn.fetch(statement)]
        return rows
    finally:
        await conn.close()


async def meta_of(dsn: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in await sql(dsn, "SELECT key, value FROM qmtl_meta")}


async def tables_of(dsn: str) -> set[str]:
    query = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    if backend_of(dsn) == "duckdb":
        query = "SELECT table_name FROM duckdb_tables()"
    return {str(name) for (name,) in await sql(dsn, query)}


async def make_legacy(dsn: str) -> None:
    await sql(dsn, *LEGACY_DDL[backend_of(dsn)], *LEGACY_DATA)


@pytest.fixture(params=BACKENDS)
def storage_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'hot.duckdb'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


# -- new stores -------------------------------------------------------------------------------


async def test_a_new_store_is_marked_with_its_schema_version(storage_dsn: str) -> None:
    async with open_storage(storage_dsn) as store:
        await store.write_bars(NODE, bars([0, 60]))
    assert await meta_of(storage_dsn) == {
        "schema_version": str(SCHEMA_VERSION),
        "package_version": qmtl.__version__,
    }
    # The stored bar columns are the canonical ones, in order (bars.py is the one definition).
    if backend_of(storage_dsn) == "duckdb":
        query = "SELECT column_name FROM duckdb_columns() WHERE table_name = 'qmtl_bars'"
        query += " ORDER BY column_index"
    else:
        query = "SELECT column_name FROM information_schema.columns"
        query += " WHERE table_name = 'qmtl_bars' ORDER BY ordinal_position"
    columns = [str(c) for (c,) in await sql(storage_dsn, query)]
    assert columns == ["node_key", *CANONICAL_COLUMNS]
    async with open_storage(storage_dsn) as again:  # reopening changes nothing
        assert len(await again.read_range(NODE, 0, 120)) == 2
    assert (await meta_of(storage_dsn))["schema_version"] == str(SCHEMA_VERSION)


# -- stores from before qmtl_meta -------------------------------------------------------------


async def test_a_legacy_store_is_migrated_in_place(storage_dsn: str) -> None:
    await make_legacy(storage_dsn)
    async with open_storage(storage_dsn) as store:
        assert_bars_equal(await store.read_range(NODE, 0, 10_000), bars(range(0, 300, I)))
        assert await store.read_ledger(NODE, I) == LEGACY_LEDGER
        # Writing goes on where the old release stopped: same node key, ledger merged.
        update = LedgerUpdate(interval=I, data=(Range(300, 600),), source="binance", fetched_at=2e3)
        await store.write_bars(NODE, bars(range(300, 600, I)), ledger_update=update)
        other = "ohlcv:binance:ETH/USDT:1m"
        await store.write_bars(other, bars([0]))  # a new node key after the legacy one
        assert_bars_equal(await store.read_range(NODE, 0, 10_000), bars(range(0, 600, I)))
        assert len(await store.read_range(other, 0, 60)) == 1
    assert await meta_of(storage_dsn) == {
        "schema_version": str(SCHEMA_VERSION),
        "package_version": qmtl.__version__,
    }
    keys = await sql(storage_dsn, "SELECT node_key FROM qmtl_nodes ORDER BY node_key")
    assert [int(k) for (k,) in keys] == [1, 2]


async def test_a_failed_migration_changes_nothing(
    storage_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_legacy(storage_dsn)
    module = duckdb_backend if backend_of(storage_dsn) == "duckdb" else postgres_backend
    broken = (*module._MIGRATIONS[0], "SELECT * FROM qmtl_no_such_table")
    monkeypatch.setitem(module._MIGRATIONS, 0, broken)
    store = open_storage(storage_dsn)
    with pytest.raises(StorageError, match="qmtl_no_such_table"):
        await store.read_range(NODE, 0, 60)
    await store.close()
    assert "qmtl_meta" not in await tables_of(storage_dsn)  # the whole migration rolled back
    monkeypatch.undo()
    async with open_storage(storage_dsn) as store:
        assert len(await store.read_range(NODE, 0, 10_000)) == 5
    assert (await meta_of(storage_dsn))["schema_version"] == str(SCHEMA_VERSION)


async def test_the_next_schema_change_is_one_migration_entry(
    storage_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_storage(storage_dsn) as store:
        await store.write_bars(NODE, bars([0]))
    module = duckdb_backend if backend_of(storage_dsn) == "duckdb" else postgres_backend
    # A pretend release with schema 2: one entry in the table, one bump of the version.
    next_version = SCHEMA_VERSION + 1
    monkeypatch.setattr(storage_base, "SCHEMA_VERSION", next_version)
    step = ("CREATE TABLE qmtl_next_feature (x BIGINT)",)
    monkeypatch.setitem(module._MIGRATIONS, SCHEMA_VERSION, step)
    async with open_storage(storage_dsn) as store:
        assert len(await store.read_range(NODE, 0, 60)) == 1
    assert (await meta_of(storage_dsn))["schema_version"] == str(next_version)
    assert "qmtl_next_feature" in await tables_of(storage_dsn)
    monkeypatch.undo()
    # Back on this release, that store is newer than what it knows.
    with pytest.raises(StorageError, match=rf"schema {next_version} > {SCHEMA_VERSION}"):
        await open_storage(storage_dsn).read_range(NODE, 0, 60)


def test_migration_tables_lead_from_zero_to_the_current_version() -> None:
    for module in (duckdb_backend, postgres_backend):
        check_migrations(module._MIGRATIONS)
        assert migration_steps(module._BASELINE, module._MIGRATIONS, SCHEMA_VERSION) == []
        fresh = migration_steps(module._BASELINE, module._MIGRATIONS, None)
        assert fresh[: len(module._BASELINE)] == list(module._BASELINE)
    with pytest.raises(RuntimeError, match="expected 0"):
        check_migrations({1: ("SELECT 1",)})


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("read_only", [False, True])
async def test_a_newer_schema_is_refused(storage_dsn: str, read_only: bool) -> None:
    async with open_storage(storage_dsn) as store:
        await store.write_bars(NODE, bars([0]))
    newer = SCHEMA_VERSION + 1
    await sql(
        storage_dsn,
        f"UPDATE qmtl_meta SET value = '{newer}' WHERE key = 'schema_version'",
        "UPDATE qmtl_meta SET value = '9.9.9' WHERE key = 'package_version'",
    )
    store = open_storage(storage_dsn, read_only=read_only)
    with pytest.raises(StorageError) as info:
        await store.read_range(NODE, 0, 60)
    message = str(info.value)
    expected = f"written by a newer qmtl-seamless (schema {newer} > {SCHEMA_VERSION}): upgrade"
    assert expected in message and "9.9.9" in message and "\n" not in message
    assert await store.resolved_location() in message
    await store.close()
    assert (await meta_of(storage_dsn))["schema_version"] == str(newer)  # left alone


async def test_a_damaged_meta_table_is_refused(storage_dsn: str) -> None:
    async with open_storage(storage_dsn) as store:
        await store.write_bars(NODE, bars([0]))
    await sql(storage_dsn, "UPDATE qmtl_meta SET value = 'one' WHERE key = 'schema_version'")
    with pytest.raises(StorageError, match="no valid schema_version"):
        await open_storage(storage_dsn).read_range(NODE, 0, 60)


LAYOUTS = {
    "bars without volume": (
        "CREATE TABLE qmtl_bars (node_key BIGINT, ts BIGINT, open DOUBLE PRECISION,"
        " high DOUBLE PRECISION, low DOUBLE PRECISION, close DOUBLE PRECISION)"
    ),
    "someone else's qmtl_nodes": "CREATE TABLE qmtl_nodes (id BIGINT, name TEXT)",
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
async def test_qmtl_tables_that_are_not_ours_are_refused(storage_dsn: str, layout: str) -> None:
    ddl = LEGACY_DDL[backend_of(storage_dsn)][:-1]  # the legacy tables, no data
    table = "qmtl_bars" if "bars" in layout else "qmtl_nodes"
    ddl = [s for s in ddl if f"EXISTS {table} " not in s]
    await sql(storage_dsn, *ddl, LAYOUTS[layout])
    before = await tables_of(storage_dsn)
    with pytest.raises(StorageError, match=f"not a qmtl-seamless store: its table {table}"):
        await open_storage(storage_dsn).read_range(NODE, 0, 60)
    assert await tables_of(storage_dsn) == before


async def test_a_foreign_duckdb_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "analytics.duckdb"
    dsn = f"duckdb:///{path}"
    await sql(
        dsn,
        "CREATE TABLE orders (id INTEGER, amount DOUBLE)",
        "INSERT INTO orders VALUES (1, 9.5)",
        "CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 5",
    )
    for read_only in (False, True):
        store = open_storage(dsn, read_only=read_only)
        with pytest.raises(StorageError) as info:
            await store.write_bars(NODE, bars([0])) if not read_only else await store.read_range(
                NODE, 0, 60
            )
        message = str(info.value)
        assert message == (
            f"{path} is not a qmtl-seamless store: it holds table orders, view big_orders and no"
            " qmtl_meta; use another file for the store (--dsn duckdb:///path/other.duckdb)"
        )
        await store.close()
    assert await tables_of(dsn) == {"orders"}  # nothing of ours was added
    assert await sql(dsn, "SELECT * FROM orders") == [(1, 9.5)]


async def test_a_legacy_duckdb_store_with_a_users_table_is_still_migrated(
    tmp_path: Path,
) -> None:
    dsn = f"duckdb:///{tmp_path / 'hot.duckdb'}"
    await make_legacy(dsn)
    await sql(dsn, "CREATE TABLE my_notes (note VARCHAR)", "INSERT INTO my_notes VALUES ('hi')")
    async with open_storage(dsn) as store:
        assert len(await store.read_range(NODE, 0, 10_000)) == 5
    assert (await meta_of(dsn))["schema_version"] == str(SCHEMA_VERSION)
    assert await sql(dsn, "SELECT * FROM my_notes") == [("hi",)]


async def test_a_duckdb_file_with_only_some_qmtl_tables_is_refused(tmp_path: Path) -> None:
    dsn = f"duckdb:///{tmp_path / 'partial.duckdb'}"
    await sql(dsn, *LEGACY_DDL["duckdb"][1:3])  # qmtl_nodes and qmtl_bars, no ledger
    with pytest.raises(StorageError, match="it holds qmtl_bars, qmtl_nodes and no qmtl_meta"):
        await open_storage(dsn).read_range(NODE, 0, 60)


async def test_postgres_leaves_other_applications_tables_alone(postgres_dsn: str) -> None:
    await sql(
        postgres_dsn,
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount DOUBLE PRECISION)",
        "INSERT INTO orders VALUES (1, 9.5)",
        "CREATE SCHEMA billing",
        "CREATE TABLE billing.invoices (id INTEGER)",
    )
    async with open_storage(postgres_dsn) as store:
        await store.write_bars(NODE, bars([0, 60]))
        assert len(await store.read_range(NODE, 0, 120)) == 2
    assert await sql(postgres_dsn, "SELECT * FROM orders") == [(1, 9.5)]
    assert {"orders", "qmtl_meta", "qmtl_bars"} <= await tables_of(postgres_dsn)


async def test_postgres_stores_open_concurrently_migrate_once(postgres_dsn: str) -> None:
    await make_legacy(postgres_dsn)
    stores = [open_storage(postgres_dsn) for _ in range(4)]
    try:
        frames = await asyncio.gather(*(s.read_range(NODE, 0, 10_000) for s in stores))
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert all(len(frame) == 5 for frame in frames)
    assert await meta_of(postgres_dsn) == {
        "schema_version": str(SCHEMA_VERSION),
        "package_version": qmtl.__version__,
    }


# -- the decision itself (pure) ---------------------------------------------------------------

OURS: Mapping[str, frozenset[str]] = dict(storage_base.STORE_COLUMNS)


def plan(state: SchemaState, *, read_only: bool = False) -> int | None:
    return plan_schema(state, where="STORE", read_only=read_only, remedy="REMEDY")


def test_plan_schema_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plan(SchemaState(meta=None)) is None  # nothing there: create
    assert plan(SchemaState(meta=None, tables=OURS)) == 0  # before qmtl_meta: migrate
    assert plan(SchemaState(meta=None, tables=OURS, foreign=["table notes"])) == 0  # + user's
    meta = {"schema_version": str(SCHEMA_VERSION)}
    assert plan(SchemaState(meta=meta, tables=OURS)) == SCHEMA_VERSION
    with pytest.raises(StorageError, match=r"^STORE is not a qmtl-seamless store: it holds x "):
        plan(SchemaState(meta=None, foreign=["x"]))
    many = [f"table t{i}" for i in range(8)]
    with pytest.raises(StorageError, match=r"t4 \(\+3 more\) and no qmtl_meta; REMEDY$"):
        plan(SchemaState(meta=None, foreign=many))
    # A read-only open never migrates: a store older than what reads understand is refused.
    monkeypatch.setattr(storage_base, "OLDEST_READABLE_VERSION", 1)
    assert plan(SchemaState(meta=None, tables=OURS)) == 0  # writable: will migrate
    with pytest.raises(StorageError, match="open it once for writing"):
        plan(SchemaState(meta=None, tables=OURS), read_only=True)


def test_storage_backends_keep_no_copy_of_the_bar_schema() -> None:
    """Column lists and types of bars live in ``sdk/bars.py``; the storage modules may spell
    them out only in their version-0 baseline DDL (frozen history) and in prose."""
    prices = set(CANONICAL_COLUMNS[1:])
    storage_dir = Path(storage_base.__file__).parent
    for path in sorted(storage_dir.glob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        exempt: set[int] = set()
        for node in ast.walk(tree):
            names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            target = getattr(node, "target", None)
            names += [target.id] if isinstance(target, ast.Name) else []
            prose = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            if prose or {"_BASELINE", "_MIGRATIONS"} & set(names):
                exempt.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if id(node) in exempt:
                continue
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                listed = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                assert len(prices & set(listed)) < 2, f"{where}: a copy of the column list"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.lower()
                typed = [c for c in prices if f"{c} double" in text or f"{c} float" in text]
                assert not typed, f"{where}: column types spelled out: {node.value!r}"
        for dedupe in ("drop_duplicates", "duplicated(", "np.unique("):
            assert dedupe not in source, f"{path.name} dedupes bars itself ({dedupe})"
