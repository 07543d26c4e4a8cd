"""The cluster hot store: PostgreSQL through an asyncpg pool (``postgresql://`` DSNs).

Same schema and semantics as :mod:`qmtl.runtime.io.storage.duckdb` (``TEXT`` node ids,
``BIGINT`` ts, ``DOUBLE PRECISION`` prices), created idempotently under an advisory lock so
several processes may open the same database at once::

    qmtl_nodes  (node_key BIGINT identity PK, node_hash BYTEA UNIQUE, node_id TEXT)
    qmtl_bars   (node_key, ts, open, high, low, close, volume, PRIMARY KEY (node_key, ts))
    qmtl_ledger (node_key, interval_s, seg_start, seg_end, kind, source, fetched_at,
                 PRIMARY KEY (node_key, interval_s, seg_start))

Columnar both ways, no Python per row: writes encode the bars as one binary ``COPY`` payload
with numpy (in a worker thread), copy it into a transaction-scoped temp table and upsert with
one ``INSERT ... ON CONFLICT DO UPDATE``; reads return each column as one ``array_send`` bytea
that numpy decodes.

Serialization: every write and ledger update first locks the node's ``qmtl_nodes`` row
(``SELECT ... FOR UPDATE``, inserting it if new), so writers of one node queue — across
processes — and the ledger read-modify-write never loses an update; different nodes proceed in
parallel. asyncpg and network errors become :class:`StorageError` at this edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Self, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from qmtl.runtime.io.storage.base import (
    check_interval,
    check_ledger_update,
    check_node_id,
    check_span,
    node_hash,
    segments_from_rows,
    short_id,
)
from qmtl.runtime.sdk.bars import (
    CANONICAL_COLUMNS,
    PRICE_COLUMNS,
    BarColumns,
    frame_from_columns,
    prepare_bars,
)
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.history_coverage import CoverageSegment, Range, apply_backfill_outcome
from qmtl.runtime.sdk.history_storage import LedgerUpdate
from qmtl.runtime.sdk.timestamps import InstantLike

__all__ = ["PostgresStorage"]

_T = TypeVar("_T")
#: asyncpg ships no type information; its connection and pool are typed ``Any`` here.
_Conn = Any

_COLS = ", ".join(CANONICAL_COLUMNS)
_INCOMING = "qmtl_incoming_bars"
_NODE_KEY = "(SELECT node_key FROM qmtl_nodes WHERE node_hash = $1)"
_SCHEMA_LOCK = 0x716D746C5F736368  # pg_advisory_xact_lock key for schema creation

_SCHEMA = """
CREATE TABLE IF NOT EXISTS qmtl_nodes (
    node_key BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_hash BYTEA NOT NULL UNIQUE,
    node_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS qmtl_bars (
    node_key BIGINT NOT NULL, ts BIGINT NOT NULL,
    open DOUBLE PRECISION NOT NULL, high DOUBLE PRECISION NOT NULL,
    low DOUBLE PRECISION NOT NULL, close DOUBLE PRECISION NOT NULL,
    volume DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node_key, ts));
CREATE TABLE IF NOT EXISTS qmtl_ledger (
    node_key BIGINT NOT NULL, interval_s BIGINT NOT NULL,
    seg_start BIGINT NOT NULL, seg_end BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('data', 'empty')),
    source TEXT, fetched_at DOUBLE PRECISION,
    PRIMARY KEY (node_key, interval_s, seg_start));
"""
_CREATE_INCOMING = (
    f"CREATE TEMP TABLE {_INCOMING} (ts BIGINT NOT NULL, open DOUBLE PRECISION NOT NULL,"
    " high DOUBLE PRECISION NOT NULL, low DOUBLE PRECISION NOT NULL,"
    " close DOUBLE PRECISION NOT NULL, volume DOUBLE PRECISION NOT NULL) ON COMMIT DROP"
)
_UPSERT = (
    f"INSERT INTO qmtl_bars (node_key, {_COLS}) SELECT $1, {_COLS} FROM pg_temp.{_INCOMING}"
    " ON CONFLICT (node_key, ts) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in PRICE_COLUMNS)
)
_READ = (
    "SELECT " + ", ".join(f"array_send(array_agg({c}))" for c in CANONICAL_COLUMNS)
    + f" FROM (SELECT {_COLS} FROM qmtl_bars WHERE node_key = {_NODE_KEY}"
    " AND ts >= $2 AND ts < $3 ORDER BY ts) AS s"
)  # fmt: skip
_READ_LEDGER = (
    "SELECT seg_start, seg_end, kind, source, fetched_at FROM qmtl_ledger"
    " WHERE node_key = {key} AND interval_s = $2 ORDER BY seg_start"
)

# Binary COPY row: int16 field count, then per field int32 length + big-endian value.
_COPY_ROW = np.dtype(
    [("nfields", ">i2")]
    + [
        item
        for i, name in enumerate(CANONICAL_COLUMNS)
        for item in ((f"len{i}", ">i4"), (name, ">i8" if name == "ts" else ">f8"))
    ]
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header-extension length
_COPY_TRAILER = b"\xff\xff"


def _import_asyncpg() -> Any:
    try:
        return importlib.import_module("asyncpg")
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "PostgreSQL storage needs asyncpg: pip install 'qmtl-seamless[postgres]'"
        ) from exc


class PostgresStorage:
    """:class:`~qmtl.runtime.io.storage.base.HistoryStorage` on PostgreSQL (see module doc).

    The pool opens lazily on first use (or ``async with``); ``min_size``/``max_size`` bound
    its connections, ``command_timeout`` (seconds) bounds each statement.
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float | None = 60.0,
    ) -> None:
        self._pg = _import_asyncpg()
        self._dsn = dsn
        self._pool_args: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "command_timeout": command_timeout,
        }
        self._pool: Any = None
        self._open_lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return "PostgresStorage(...)"  # the DSN may carry a password

    # -- plumbing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, op: str, node_id: str | None) -> Iterator[None]:
        try:
            yield
        except (self._pg.PostgresError, self._pg.InterfaceError, OSError) as exc:
            where = f" for node {short_id(node_id)}" if node_id is not None else ""
            raise StorageError(f"postgres {op} failed{where}: {exc}") from exc

    async def _ensure_pool(self) -> Any:
        if self._closed:
            raise StorageError("PostgresStorage is closed")
        if self._pool is None:
            async with self._open_lock:
                if self._pool is None:
                    pool = await self._pg.create_pool(self._dsn, **self._pool_args)
                    try:
                        async with pool.acquire() as conn, conn.transaction():
                            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                            await conn.execute(_SCHEMA)
                    except BaseException:
                        await pool.close()
                        raise
                    self._pool = pool
        return self._pool

    async def _run(
        self,
        op: str,
        node_id: str | None,
        work: Callable[[_Conn], Awaitable[_T]],
        *,
        transaction: bool = False,
    ) -> _T:
        with self._errors(op, node_id):
            pool = await self._ensure_pool()
            async with pool.acquire() as conn:
                if not transaction:
                    return await work(conn)
                async with conn.transaction():
                    return await work(conn)

    # -- HistoryStorage ------------------------------------------------------------------------

    async def read_range(self, node_id: str, start: InstantLike, end: InstantLike) -> pd.DataFrame:
        node_id = check_node_id(node_id)
        s, e = check_span(start, end)

        async def work(conn: _Conn) -> Any:
            return await conn.fetchrow(_READ, node_hash(node_id), s, e)

        row = await self._run("read_range", node_id, work)
        return await asyncio.to_thread(_decode_bars, tuple(row))

    async def write_bars(
        self, node_id: str, frame: pd.DataFrame, *, ledger_update: LedgerUpdate | None = None
    ) -> int:
        node_id = check_node_id(node_id)
        if ledger_update is not None:
            check_ledger_update(ledger_update)
        rows, payload = await asyncio.to_thread(_encode_bars, frame)

        async def work(conn: _Conn) -> int:
            node_key = await _lock_node(conn, node_id)
            if rows:
                await conn.execute(_CREATE_INCOMING)
                await conn.copy_to_table(
                    _INCOMING, schema_name="pg_temp", source=memoryview(payload), format="binary"
                )
                await conn.execute(_UPSERT, node_key)
            if ledger_update is not None:
                await self._apply_ledger(conn, node_key, ledger_update)
            return rows

        return await self._run("write_bars", node_id, work, transaction=True)

    async def read_ledger(self, node_id: str, interval: int) -> list[CoverageSegment]:
        node_id = check_node_id(node_id)
        interval = check_interval(interval)

        async def work(conn: _Conn) -> list[Any]:
            sql = _READ_LEDGER.format(key=_NODE_KEY)
            rows: list[Any] = await conn.fetch(sql, node_hash(node_id), interval)
            return rows

        return segments_from_rows(tuple(r) for r in await self._run("read_ledger", node_id, work))

    async def update_ledger(self, node_id: str, update: LedgerUpdate) -> list[CoverageSegment]:
        node_id = check_node_id(node_id)
        check_ledger_update(update)

        async def work(conn: _Conn) -> list[CoverageSegment]:
            return await self._apply_ledger(conn, await _lock_node(conn, node_id), update)

        return await self._run("update_ledger", node_id, work, transaction=True)

    async def coverage_bounds(self, node_id: str, interval: int) -> Range | None:
        node_id = check_node_id(node_id)
        interval = check_interval(interval)

        async def work(conn: _Conn) -> Any:
            sql = f"SELECT min(ts), max(ts) FROM qmtl_bars WHERE node_key = {_NODE_KEY}"
            return await conn.fetchrow(sql, node_hash(node_id))

        row = await self._run("coverage_bounds", node_id, work)
        if row is None or row[0] is None:
            return None
        return Range(int(row[0]), int(row[1]) + interval)

    async def delete_node(self, node_id: str) -> None:
        node_id = check_node_id(node_id)

        async def work(conn: _Conn) -> None:
            node_key = await conn.fetchval(
                "SELECT node_key FROM qmtl_nodes WHERE node_hash = $1 FOR UPDATE",
                node_hash(node_id),
            )
            if node_key is None:
                return
            for table in ("qmtl_bars", "qmtl_ledger", "qmtl_nodes"):
                await conn.execute(f"DELETE FROM {table} WHERE node_key = $1", node_key)

        await self._run("delete_node", node_id, work, transaction=True)

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            with self._errors("close", None):
                await pool.close()

    async def __aenter__(self) -> Self:
        with self._errors("open", None):
            await self._ensure_pool()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- ledger (inside the caller's transaction, node row locked) -----------------------------

    async def _apply_ledger(
        self, conn: _Conn, node_key: int, update: LedgerUpdate
    ) -> list[CoverageSegment]:
        rows = await conn.fetch(_READ_LEDGER.format(key="$1"), node_key, update.interval)
        ledger = apply_backfill_outcome(
            segments_from_rows(tuple(r) for r in rows),
            interval=update.interval,
            data=update.data,
            empty=update.empty,
            source=update.source,
            fetched_at=update.fetched_at,
            stabilization_bars=update.stabilization_bars,
        )
        await conn.execute(
            "DELETE FROM qmtl_ledger WHERE node_key = $1 AND interval_s = $2",
            node_key,
            update.interval,
        )
        if ledger:
            await conn.execute(
                "INSERT INTO qmtl_ledger"
                " (node_key, interval_s, seg_start, seg_end, kind, source, fetched_at)"
                " SELECT $1, $2, * FROM unnest($3::bigint[], $4::bigint[], $5::text[],"
                " $6::text[], $7::float8[])",
                node_key,
                update.interval,
                [s.start for s in ledger],
                [s.end for s in ledger],
                [s.kind.value for s in ledger],
                [s.source for s in ledger],
                [s.fetched_at for s in ledger],
            )
        return ledger


async def _lock_node(conn: _Conn, node_id: str) -> int:
    """The node's key, with its ``qmtl_nodes`` row locked until the transaction ends."""
    digest = node_hash(node_id)
    for _ in range(5):  # only loops if a concurrent delete_node removes the row in between
        key = await conn.fetchval(
            "SELECT node_key FROM qmtl_nodes WHERE node_hash = $1 FOR UPDATE", digest
        )
        if key is None:
            key = await conn.fetchval(
                "INSERT INTO qmtl_nodes (node_hash, node_id) VALUES ($1, $2)"
                " ON CONFLICT (node_hash) DO NOTHING RETURNING node_key",
                digest,
                node_id,
            )
        if key is not None:
            return int(key)
    raise StorageError(f"could not lock the row of node {short_id(node_id)}")


def _encode_bars(frame: pd.DataFrame) -> tuple[int, bytes]:
    """Validate ``frame`` and build its binary COPY payload (vectorised)."""
    columns = prepare_bars(frame)
    rows = np.empty(len(columns["ts"]), dtype=_COPY_ROW)
    rows["nfields"] = len(CANONICAL_COLUMNS)
    for i, name in enumerate(CANONICAL_COLUMNS):
        rows[f"len{i}"] = 8
        rows[name] = columns[name]
    return len(rows), _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def _decode_bars(row: tuple[bytes | None, ...]) -> pd.DataFrame:
    """A canonical frame from the ``array_send`` bytea of each column (``None``: no rows)."""
    columns: BarColumns = {
        name: _decode_array(buf, np.dtype(">i8" if name == "ts" else ">f8"))
        for name, buf in zip(CANONICAL_COLUMNS, row, strict=True)
    }
    ts = columns["ts"]
    if ts.size > 1 and not bool((ts[1:] > ts[:-1]).all()):
        # The ordered subquery feeds array_agg in order in practice; never trust it blindly.
        order = np.argsort(ts, kind="stable")
        columns = {name: arr[order] for name, arr in columns.items()}
    return frame_from_columns(columns)


def _decode_array(buf: bytes | None, value: np.dtype[Any]) -> npt.NDArray[Any]:
    """Decode PostgreSQL's binary array format (1-D, fixed-width elements, no NULLs)."""
    native = value.newbyteorder("=")
    if buf is None:
        return np.empty(0, dtype=native)
    ndim, has_null = (int(x) for x in np.frombuffer(buf, dtype=">i4", count=2))
    if ndim == 0:
        return np.empty(0, dtype=native)
    if ndim != 1 or has_null:
        raise StorageError(f"unexpected array shape from PostgreSQL (ndim={ndim})")
    count = int(np.frombuffer(buf, dtype=">i4", count=1, offset=12)[0])
    cells = np.frombuffer(
        buf, dtype=np.dtype([("len", ">i4"), ("v", value)]), count=count, offset=20
    )
    if count and not bool((cells["len"] == value.itemsize).all()):
        raise StorageError("unexpected element width in PostgreSQL array")
    return cells["v"].astype(native)
