"""The cluster hot store: PostgreSQL through an asyncpg pool (``postgresql://`` DSNs).

Same schema and semantics as :mod:`qmtl.runtime.io.storage.duckdb` (``TEXT`` node ids,
``BIGINT`` ts, ``DOUBLE PRECISION`` prices), in the connection's current schema::

    qmtl_meta   (key TEXT PK, value TEXT)           -- schema_version, package_version
    qmtl_nodes  (node_key BIGINT identity PK, node_hash BYTEA UNIQUE, node_id TEXT)
    qmtl_bars   (node_key, ts, open, high, low, close, volume, PRIMARY KEY (node_key, ts))
    qmtl_ledger (node_key, interval_s, seg_start, seg_end, kind, source, fetched_at,
                 PRIMARY KEY (node_key, interval_s, seg_start))
    qmtl_as_of_marks (mark_key BYTEA PK, world_id TEXT, node_id TEXT, as_of_ms BIGINT)

Versions and migrations (rules in :mod:`qmtl.runtime.io.storage.base`, inspection in
:mod:`qmtl.runtime.io.storage.postgres_schema`): when the pool opens, one transaction under an
advisory lock creates, migrates (``_MIGRATIONS``: ``{from_version: statements}``, in order,
then ``qmtl_meta`` stamped), accepts or refuses — a newer schema, or ``qmtl_*`` tables that
are not ours. Other applications' tables are never looked at, let alone refused.

Read-only (``read_only=True``): no DDL is ever sent and every session runs with
``default_transaction_read_only`` on (the server itself refuses writes); the schema version is
checked, missing ``qmtl_*`` tables mean nothing is stored (reads answer empty, ``as_of_mark``
``None``), and writes raise ``StorageError``.

Columnar both ways, no Python per row: writes encode the bars as one binary ``COPY`` payload
with numpy (in a worker thread), copy it into a transaction-scoped temp table and upsert with
one ``INSERT ... ON CONFLICT DO UPDATE``; reads return each column as one ``array_send`` bytea
that numpy decodes. The wire types come from the canonical bar schema
(:func:`~qmtl.runtime.sdk.bars.empty_frame`), never from a copy of it.

Serialization: every write and ledger update first locks the node's ``qmtl_nodes`` row
(``SELECT ... FOR UPDATE``, inserting it if new), so writers of one node queue — across
processes — and the ledger read-modify-write never loses an update; different nodes proceed in
parallel. ``advance_as_of`` locks its mark row the same way (see :meth:`advance_as_of`).

Outages: asyncpg and network errors (refused, reset, timeouts) become :class:`StorageError`
at this edge, naming the store with its password masked. A connection the server dropped is
replaced on next use, so the same instance works again once the server is back; connecting is
bounded by ``connect_timeout`` and each statement by ``command_timeout``.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, Self, TypeVar

import pandas as pd

from qmtl.runtime.io.storage.base import (
    LIST_LEDGER_SQL,
    LIST_NODES_SQL,
    MARKS_TABLE,
    META_TABLE,
    check_as_of_ms,
    check_ledger_update,
    check_migrations,
    check_node_id,
    check_span,
    check_world_id,
    mark_key,
    masked_dsn,
    node_hash,
    node_summaries,
    segments_from_rows,
    short_id,
)
from qmtl.runtime.io.storage.pg_wire import decode_bars, encode_bars
from qmtl.runtime.io.storage.postgres_schema import prepare_schema
from qmtl.runtime.sdk.bars import (
    CANONICAL_COLUMNS,
    PRICE_COLUMNS,
    empty_frame,
)
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.history_coverage import (
    CoverageSegment,
    Range,
    apply_backfill_outcome,
    check_bar_interval,
)
from qmtl.runtime.sdk.history_storage import LedgerUpdate, NodeSummary
from qmtl.runtime.sdk.timestamps import InstantLike

__all__ = ["PostgresStorage"]

_T = TypeVar("_T")
#: asyncpg ships no type information; its connection and pool are typed ``Any`` here.
_Conn = Any

_COLS = ", ".join(CANONICAL_COLUMNS)
_INCOMING = "qmtl_incoming_bars"
_NODE_KEY = "(SELECT node_key FROM qmtl_nodes WHERE node_hash = $1)"
_CLOSE_TIMEOUT_S = 5.0

#: Version 0 — what releases before ``qmtl_meta`` created. History: never edit, migrate.
_BASELINE: Final[tuple[str, ...]] = (
    """CREATE TABLE IF NOT EXISTS qmtl_nodes (
    node_key BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_hash BYTEA NOT NULL UNIQUE,
    node_id TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS qmtl_bars (
    node_key BIGINT NOT NULL, ts BIGINT NOT NULL,
    open DOUBLE PRECISION NOT NULL, high DOUBLE PRECISION NOT NULL,
    low DOUBLE PRECISION NOT NULL, close DOUBLE PRECISION NOT NULL,
    volume DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node_key, ts))""",
    """CREATE TABLE IF NOT EXISTS qmtl_ledger (
    node_key BIGINT NOT NULL, interval_s BIGINT NOT NULL,
    seg_start BIGINT NOT NULL, seg_end BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('data', 'empty')),
    source TEXT, fetched_at DOUBLE PRECISION,
    PRIMARY KEY (node_key, interval_s, seg_start))""",
)
#: ``{from_version: statements}`` taking the schema from that version to the next.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    0: (f"CREATE TABLE {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",),
    1: (
        f"CREATE TABLE {MARKS_TABLE} (mark_key BYTEA PRIMARY KEY, world_id TEXT NOT NULL,"
        " node_id TEXT NOT NULL, as_of_ms BIGINT NOT NULL)",
    ),
}
check_migrations(_MIGRATIONS)

# The temp table takes its column types from qmtl_bars itself: no second copy of them here.
_CREATE_INCOMING = (
    f"CREATE TEMP TABLE {_INCOMING} ON COMMIT DROP AS SELECT {_COLS} FROM qmtl_bars WITH NO DATA"
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
_MARK = f"SELECT as_of_ms FROM {MARKS_TABLE} WHERE mark_key = $1"
_MARK_LOCK = _MARK + " FOR UPDATE"
_MARK_INSERT = (
    f"INSERT INTO {MARKS_TABLE} (mark_key, world_id, node_id, as_of_ms) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (mark_key) DO NOTHING RETURNING as_of_ms"
)
_MARK_RAISE = f"UPDATE {MARKS_TABLE} SET as_of_ms = $2 WHERE mark_key = $1 AND as_of_ms < $2"


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
    its connections, ``connect_timeout`` (seconds) bounds opening one and ``command_timeout``
    (seconds) each statement. ``min_size`` is 0 by default: connections open on demand, so an
    outage surfaces on the call that needed the server — asyncpg (0.32+) would otherwise
    reconnect a floor in the background and log a traceback on every failed retry.
    """

    def __init__(
        self,
        dsn: str,
        *,
        read_only: bool = False,
        min_size: int = 0,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 60.0,
    ) -> None:
        self._pg = _import_asyncpg()
        self._dsn = dsn
        self.read_only = read_only
        self._location = masked_dsn(dsn)
        self._pool_args: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "timeout": connect_timeout,
            "command_timeout": command_timeout,
        }
        if read_only:
            # Belt and braces: the server refuses any write this store might still attempt.
            self._pool_args["server_settings"] = {"default_transaction_read_only": "on"}
        self._driver_errors: tuple[type[BaseException], ...] = (
            self._pg.PostgresError,
            self._pg.InterfaceError,
            self._pg.exceptions.InternalClientError,
            OSError,  # refused, reset, unreachable; TimeoutError (connect, command) is one too
        )
        self._pool: Any = None
        self._open_lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"PostgresStorage({self._location!r}{mode})"  # password masked

    async def resolved_location(self) -> str:
        """The DSN with any password masked (``postgresql://user:***@host:port/db``)."""
        return self._location

    # -- plumbing ------------------------------------------------------------------------------

    def _storage_error(self, op: str, node_id: str | None, exc: BaseException) -> StorageError:
        where = f" for node {short_id(node_id)}" if node_id is not None else ""
        detail = str(exc) or type(exc).__name__  # a timeout's message is empty
        return StorageError(f"postgres {op} failed{where} ({self._location}): {detail}")

    async def _ensure_pool(self) -> Any:
        if self._closed:
            raise StorageError(f"{self!r} is closed")
        if self._pool is None:
            async with self._open_lock:
                if self._pool is None:
                    pool = await self._pg.create_pool(self._dsn, **self._pool_args)
                    try:
                        async with pool.acquire() as conn:
                            await prepare_schema(
                                conn,
                                self._location,
                                read_only=self.read_only,
                                baseline=_BASELINE,
                                migrations=_MIGRATIONS,
                            )
                    except BaseException:
                        pool.terminate()
                        raise
                    if self._closed:  # close() ran while the pool was opening
                        pool.terminate()
                        raise StorageError(f"{self!r} is closed")
                    self._pool = pool
        return self._pool

    async def _run(
        self,
        op: str,
        node_id: str | None,
        work: Callable[[_Conn], Awaitable[_T]],
        *,
        transaction: bool = False,
        unstored: Callable[[], _T] | None = None,
    ) -> _T:
        """Run ``work`` on a pooled connection, driver errors as :class:`StorageError`.
        ``unstored`` answers a read of a read-only store whose tables do not exist (yet)."""
        try:
            pool = await self._ensure_pool()
            async with pool.acquire() as conn:
                if not transaction:
                    return await work(conn)
                async with conn.transaction():
                    return await work(conn)
        except StorageError:
            raise
        except Exception as exc:
            if (
                unstored is not None
                and self.read_only
                and isinstance(exc, self._pg.exceptions.UndefinedTableError)
            ):
                return unstored()
            if isinstance(exc, self._driver_errors):
                raise self._storage_error(op, node_id, exc) from exc
            raise

    def _refuse_if_read_only(self, op: str) -> None:
        if self.read_only:
            raise StorageError(f"PostgreSQL store {self._location} is open read-only: {op} refused")

    # -- HistoryStorage ------------------------------------------------------------------------

    async def read_range(self, node_id: str, start: InstantLike, end: InstantLike) -> pd.DataFrame:
        node_id = check_node_id(node_id)
        s, e = check_span(start, end)

        async def work(conn: _Conn) -> Any:
            return await conn.fetchrow(_READ, node_hash(node_id), s, e)

        row = await self._run("read_range", node_id, work, unstored=lambda: None)
        if row is None:
            return empty_frame()
        return await asyncio.to_thread(decode_bars, tuple(row))

    async def write_bars(
        self, node_id: str, frame: pd.DataFrame, *, ledger_update: LedgerUpdate | None = None
    ) -> int:
        node_id = check_node_id(node_id)
        if ledger_update is not None:
            check_ledger_update(ledger_update)
        self._refuse_if_read_only("write_bars")
        rows, payload = await asyncio.to_thread(encode_bars, frame)

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
        interval = check_bar_interval(interval)

        async def work(conn: _Conn) -> list[Any]:
            sql = _READ_LEDGER.format(key=_NODE_KEY)
            rows: list[Any] = await conn.fetch(sql, node_hash(node_id), interval)
            return rows

        rows = await self._run("read_ledger", node_id, work, unstored=list)
        return segments_from_rows(tuple(r) for r in rows)

    async def update_ledger(self, node_id: str, update: LedgerUpdate) -> list[CoverageSegment]:
        node_id = check_node_id(node_id)
        check_ledger_update(update)
        self._refuse_if_read_only("update_ledger")

        async def work(conn: _Conn) -> list[CoverageSegment]:
            return await self._apply_ledger(conn, await _lock_node(conn, node_id), update)

        return await self._run("update_ledger", node_id, work, transaction=True)

    async def coverage_bounds(self, node_id: str, interval: int) -> Range | None:
        node_id = check_node_id(node_id)
        interval = check_bar_interval(interval)

        async def work(conn: _Conn) -> Any:
            sql = f"SELECT min(ts), max(ts) FROM qmtl_bars WHERE node_key = {_NODE_KEY}"
            return await conn.fetchrow(sql, node_hash(node_id))

        row = await self._run("coverage_bounds", node_id, work, unstored=lambda: None)
        if row is None or row[0] is None:
            return None
        return Range(int(row[0]), int(row[1]) + interval)

    async def list_nodes(self) -> list[NodeSummary]:
        async def work(conn: _Conn) -> tuple[list[Any], list[Any]]:
            # One snapshot for both reads: a write in between cannot split a node's answer.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await conn.fetch(LIST_NODES_SQL), await conn.fetch(LIST_LEDGER_SQL)

        nodes, ledger = await self._run("list_nodes", None, work, unstored=lambda: ([], []))
        return await asyncio.to_thread(node_summaries, map(tuple, nodes), map(tuple, ledger))

    async def revision(self, node_id: str) -> int | None:
        """``None``: other processes write the same database, and nothing here counts their
        writes yet (see the protocol), so nothing computed from a read is reused."""
        check_node_id(node_id)
        return None

    async def delete_node(self, node_id: str) -> None:
        node_id = check_node_id(node_id)
        self._refuse_if_read_only("delete_node")

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

    async def advance_as_of(self, world_id: str, node_id: str, as_of_ms: int) -> int | None:
        """Atomic across processes: one READ COMMITTED transaction locks the mark row
        (``SELECT ... FOR UPDATE``) and raises it; a first sighting inserts it with
        ``ON CONFLICT DO NOTHING``, which waits for a concurrent first sighting of the same key
        to end — a conflict then loops back to lock the row that one committed."""
        world_id, node_id = check_world_id(world_id), check_node_id(node_id)
        as_of_ms = check_as_of_ms(as_of_ms)
        self._refuse_if_read_only("advance_as_of")
        key = mark_key(world_id, node_id)

        async def work(conn: _Conn) -> int | None:
            # READ COMMITTED whatever the server's default: each statement sees what committed
            # before it, which is what makes the retry after a lost insert find the row.
            async with conn.transaction(isolation="read_committed"):
                for _ in range(5):  # a second pass only after losing the first-sighting race
                    previous = await conn.fetchval(_MARK_LOCK, key)
                    if previous is not None:
                        if as_of_ms > previous:
                            await conn.execute(_MARK_RAISE, key, as_of_ms)
                        return int(previous)
                    inserted = await conn.fetchval(_MARK_INSERT, key, world_id, node_id, as_of_ms)
                    if inserted is not None:
                        return None
            raise StorageError(f"could not lock the as-of mark of node {short_id(node_id)}")

        return await self._run("advance_as_of", node_id, work)

    async def as_of_mark(self, world_id: str, node_id: str) -> int | None:
        world_id, node_id = check_world_id(world_id), check_node_id(node_id)

        async def work(conn: _Conn) -> Any:
            return await conn.fetchval(_MARK, mark_key(world_id, node_id))

        mark = await self._run("as_of_mark", node_id, work, unstored=lambda: None)
        return None if mark is None else int(mark)

    async def close(self) -> None:
        """Close the pool gracefully; if the server is gone or a connection is still busy
        after a few seconds, drop the connections instead (closing never hangs or raises on
        an outage: it releases what is local)."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT_S)
            except BaseException as exc:
                pool.terminate()
                if not isinstance(exc, self._driver_errors):  # e.g. cancelled: propagate
                    raise

    async def __aenter__(self) -> Self:
        await self._run("open", None, _nothing)
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


async def _nothing(conn: _Conn) -> None:
    """Work for ``async with``: opening the pool (and checking the schema) is the point."""


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
