"""How a DuckDB file is opened as a store — connected, inspected and brought to a schema
version — for :mod:`qmtl.runtime.io.storage.duckdb` (which keeps the DDL itself: its version-0
baseline and migration table, next to the queries that depend on them).

The rules — what is adopted, migrated or refused — are :mod:`qmtl.runtime.io.storage.base`'s
(:func:`~qmtl.runtime.io.storage.base.plan_schema`); this module only says what a DuckDB file
holds and applies the steps. A file is a whole database, so anything in it that is not ours
(a table, a view, a sequence) means the file is not ours.

Every function runs on the caller's (worker) thread with the store's lock held (DuckDB
connections are not safe to share between threads); all but :func:`open_store` take the
store's connection.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, TypeVar

import duckdb

from qmtl.runtime.io.storage.base import (
    MARKS_TABLE,
    META_TABLE,
    STORE_COLUMNS,
    SchemaState,
    meta_rows,
    migration_steps,
    plan_schema,
)
from qmtl.runtime.sdk.errors import StorageError

__all__ = [
    "MEMORY",
    "NODE_KEY_SEQUENCE",
    "inspect_schema",
    "open_store",
    "prepare_schema",
    "transaction",
]

_T = TypeVar("_T")
_Con = duckdb.DuckDBPyConnection

#: The sequence node keys are drawn from (part of the version-0 layout).
NODE_KEY_SEQUENCE: Final = "qmtl_node_key_seq"
#: DuckDB's name for an in-memory database (``duckdb:///:memory:``).
MEMORY: Final = ":memory:"
_REMEDY = "use another file for the store (--dsn duckdb:///path/other.duckdb)"

_OBJECTS = """
SELECT 'table', schema_name, table_name FROM duckdb_tables()
    WHERE database_name = current_database()
UNION ALL SELECT 'view', schema_name, view_name FROM duckdb_views()
    WHERE database_name = current_database() AND NOT internal
UNION ALL SELECT 'sequence', schema_name, sequence_name FROM duckdb_sequences()
    WHERE database_name = current_database()
"""
_OURS = {("table", "main", name) for name in (*STORE_COLUMNS, META_TABLE, MARKS_TABLE)}
_OURS.add(("sequence", "main", NODE_KEY_SEQUENCE))
# Tables later migrations added are ours only next to qmtl_meta (no release wrote them before).
_LATER = {("table", "main", MARKS_TABLE)}


def open_store(
    where: str,
    *,
    read_only: bool,
    baseline: Sequence[str],
    migrations: Mapping[int, Sequence[str]],
) -> tuple[_Con, int | None]:
    """Connect to the file at ``where`` (an absolute path or :data:`MEMORY`) and prepare its
    schema (:func:`prepare_schema`): the connection and the version found before any migration.
    Read-only, nothing is created: a missing file is a :class:`StorageError`."""
    if read_only and where == MEMORY:
        raise StorageError("no store at :memory: (a new in-memory database holds nothing)")
    if read_only and not os.path.exists(where):
        raise StorageError(f"no store at {where}: nothing has been stored there yet (check --dsn)")
    try:
        if where != MEMORY and not read_only:
            Path(where).parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(where, read_only=read_only)
    except (duckdb.Error, OSError) as exc:
        raise StorageError(_open_failure(where, exc)) from exc
    try:
        found = prepare_schema(
            con, where, read_only=read_only, baseline=baseline, migrations=migrations
        )
    except duckdb.Error as exc:
        con.close()
        raise StorageError(f"cannot open DuckDB store {where}: {exc}") from exc
    except BaseException:
        con.close()
        raise
    return con, found


def _open_failure(where: str, exc: BaseException) -> str:
    """One line for a store that would not open; DuckDB's lock conflict gets the rule behind
    it (its own text points at an option of DuckDB's CLI, not ours)."""
    text = " ".join(str(exc).split())
    if "Could not set lock" in text:
        pid = re.search(r"\(PID (\d+)\)", text)
        holder = f" (process {pid.group(1)})" if pid else ""
        return (
            f"DuckDB store {where} is in use by another process{holder}: a DuckDB file has "
            "one writer at a time, and no reader while it writes. Wait for it, use another "
            "store (--dsn), or PostgreSQL for many processes"
        )
    return f"cannot open DuckDB store {where}: {text}"


def prepare_schema(
    con: _Con,
    where: str,
    *,
    read_only: bool,
    baseline: Sequence[str],
    migrations: Mapping[int, Sequence[str]],
) -> int | None:
    """Bring the file to the current schema in one transaction (writable: ``baseline`` for
    a new store, then the ``migrations`` from the version found), or check that it can be
    read as it is (read-only). Returns the version found before any migration (``None``:
    nothing of ours was there)."""
    if read_only:
        return plan_schema(inspect_schema(con), where=where, read_only=True, remedy=_REMEDY)

    def tx(c: _Con) -> int | None:
        found = plan_schema(inspect_schema(c), where=where, read_only=False, remedy=_REMEDY)
        steps = migration_steps(baseline, migrations, found)
        for sql in steps:
            c.execute(sql)
        if steps:
            for key, value in meta_rows():
                c.execute(
                    f"INSERT INTO {META_TABLE} VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [key, value],
                )
        return found

    return transaction(con, tx)


def inspect_schema(con: _Con) -> SchemaState:
    """What the file holds: our tables with their columns, ``qmtl_meta``, everything else."""
    objects = [(str(k), str(s), str(n)) for k, s, n in con.execute(_OBJECTS).fetchall()]
    mine = _OURS if ("table", "main", META_TABLE) in objects else _OURS - _LATER
    ours = {name for kind, schema, name in objects if (kind, schema, name) in mine}
    foreign = [
        f"{kind} {name if schema == 'main' else f'{schema}.{name}'}"
        for kind, schema, name in sorted(objects)
        if (kind, schema, name) not in mine
    ]
    tables: dict[str, set[str]] = {t: set() for t in STORE_COLUMNS if t in ours}
    if tables:
        placeholders = ", ".join("?" for _ in tables)
        rows = con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name ="
            f" current_database() AND schema_name = 'main' AND table_name IN ({placeholders})",
            list(tables),
        ).fetchall()
        for table, column in rows:
            tables[str(table)].add(str(column))
    meta = None
    if META_TABLE in ours:
        rows = con.execute(f"SELECT key, value FROM {META_TABLE}").fetchall()
        meta = {str(k): str(v) for k, v in rows}
    return SchemaState(
        meta=meta, tables={t: frozenset(c) for t, c in tables.items()}, foreign=foreign
    )


def transaction(con: _Con, work: Callable[[_Con], _T]) -> _T:
    """Run ``work`` in one DuckDB transaction: committed on success, rolled back on any error
    (the schema preparation here, and every write of the store)."""
    con.execute("BEGIN TRANSACTION")
    try:
        result = work(con)
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT already ended it
            con.execute("ROLLBACK")
        raise
    return result
