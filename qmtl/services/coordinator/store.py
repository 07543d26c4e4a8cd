"""Where lease rows live: one small protocol, a SQLite and a PostgreSQL implementation.

A store does no deciding. :meth:`LeaseStore.apply` reads one key's row *inside one database
transaction that holds the key*, hands it with the store's ``now_ms`` to a pure decision (from
:mod:`qmtl.runtime.sdk.lease_rules`), writes the row the outcome carries, and computes the
node's completion ratio, all before committing. Two requests on one key therefore never see
the same row, so no key is granted twice while its lease is live:

- :class:`SQLiteLeaseStore` — one machine: stdlib ``sqlite3`` in ``asyncio.to_thread``, one
  connection used by one request at a time, ``BEGIN IMMEDIATE`` (the write lock is taken
  before the read). ``now_ms`` is this process's clock.
- :class:`PostgresLeaseStore` — several replicas on one database: ``asyncpg`` (imported on
  first use), a transaction-scoped advisory lock on the key (a key without a row has nothing
  to ``SELECT … FOR UPDATE``), then ``SELECT … FOR UPDATE``. ``now_ms`` is the database's
  clock, so replicas agree on expiry.

Keys and values are bound as parameters, never spliced into SQL. The schema is created on open
(idempotent). Driver errors surface as :class:`~qmtl.runtime.sdk.errors.StorageError`.
:func:`open_lease_store` picks the class from the DSN's scheme.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.lease_rules import (
    Changed,
    Granted,
    LeaseRecord,
    LeaseState,
)

__all__ = [
    "DEFAULT_DSN",
    "Applied",
    "LeaseStore",
    "PostgresLeaseStore",
    "SQLiteLeaseStore",
    "open_lease_store",
]

DEFAULT_DSN: Final = "sqlite:///.qmtl/leases.db"
_TABLE: Final = "qmtl_coordinator_leases"
_COLUMNS: Final = "lease_key, node_id, token, lease_until_ms, state, reason, updated_ms"

_O = TypeVar("_O")


@dataclass(frozen=True, slots=True)
class Applied(Generic[_O]):
    """A decision's outcome and the node's completion ratio after it (0.0 .. 1.0)."""

    outcome: _O
    completion_ratio: float


class LeaseStore(Protocol):
    """Durable lease rows with per-key transactional decisions."""

    async def open(self) -> None:
        """Connect and create the schema (idempotent)."""
        ...

    async def close(self) -> None: ...

    async def apply(
        self, key: str, node_id: str, decide: Callable[[LeaseRecord | None, int], _O]
    ) -> Applied[_O]:
        """Run ``decide`` on ``key``'s row under the key's lock; write the row of a
        :class:`Granted` or :class:`Changed` outcome; commit."""
        ...

    async def inspect(self, prefix: str, limit: int) -> list[LeaseRecord]:
        """Up to ``limit`` rows whose key starts with ``prefix``, in key order."""
        ...


def _written(outcome: object) -> LeaseRecord | None:
    return outcome.record if isinstance(outcome, Granted | Changed) else None


def _ratio(completed: Any, claimed: Any) -> float:
    return float(completed or 0) / claimed if claimed else 0.0


def _record(row: Any) -> LeaseRecord:
    return LeaseRecord(
        key=row[0],
        node_id=row[1],
        token=row[2],
        lease_until_ms=int(row[3]),
        state=LeaseState(row[4]),
        reason=row[5],
        updated_ms=int(row[6]),
    )


def _values(r: LeaseRecord) -> tuple[str, str, str, int, str, str, int]:
    return (r.key, r.node_id, r.token, r.lease_until_ms, r.state.value, r.reason, r.updated_ms)


_SCHEMA_SQL: Final = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    lease_key TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    token TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    updated_ms BIGINT NOT NULL
)"""
_INDEX_SQL: Final = f"CREATE INDEX IF NOT EXISTS {_TABLE}_node ON {_TABLE} (node_id)"
_RATIO_SQL: Final = (
    f"SELECT SUM(CASE WHEN state = 'completed' THEN 1 ELSE 0 END), COUNT(*) FROM {_TABLE} "
    "WHERE node_id = {p1}"
)


class SQLiteLeaseStore:
    """Leases in a SQLite file at ``path`` (its directory is created). Single machine, one
    writer: requests run one at a time on one connection, in a worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._pending: list[_Queued] = []
        self._drainer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SQLiteLeaseStore({str(self.path)!r})"

    async def open(self) -> None:
        async with self._lock:
            if self._conn is None:
                self._conn = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a commit no longer syncs the log; a power loss may drop the last
            # transactions but never corrupts the file (a lost grant is a lease re-claimed).
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA_SQL)
            conn.execute(_INDEX_SQL)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite lease store {self.path}: {exc}") from exc
        return conn

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await asyncio.to_thread(conn.close)

    async def _call(self, work: Callable[[sqlite3.Connection], _O]) -> _O:
        async with self._lock:
            if self._conn is None:
                raise StorageError(f"{self!r} is not open")
            conn = self._conn
            try:
                return await asyncio.to_thread(work, conn)
            except sqlite3.Error as exc:
                raise StorageError(f"sqlite lease store {self.path}: {exc}") from exc

    async def apply(
        self, key: str, node_id: str, decide: Callable[[LeaseRecord | None, int], _O]
    ) -> Applied[_O]:
        """Queue the decision; decisions queued while one batch runs are applied together,
        in order, in one ``BEGIN IMMEDIATE`` transaction and one thread hop (each sees the
        writes of those before it). One hop and one commit per batch instead of per
        request is what lets one writer keep up with many clients."""
        future: asyncio.Future[Applied[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((key, node_id, decide, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        applied: Applied[_O] = await future
        return applied

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            items = [(key, node, decide) for key, node, decide, _ in batch]
            try:
                results = await self._call(functools.partial(_apply_batch, items=items))
            except BaseException as exc:  # the store failed: every request of the batch did
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (*_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # its caller gave up (the decision stands: it was applied)
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def inspect(self, prefix: str, limit: int) -> list[LeaseRecord]:
        def work(conn: sqlite3.Connection) -> list[LeaseRecord]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM {_TABLE} WHERE substr(lease_key, 1, length(?)) = ? "
                "ORDER BY lease_key LIMIT ?",
                (prefix, prefix, limit),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._call(work)


_Queued = tuple[str, str, Callable[[LeaseRecord | None, int], Any], "asyncio.Future[Applied[Any]]"]


def _apply_batch(
    conn: sqlite3.Connection,
    *,
    items: list[tuple[str, str, Callable[[LeaseRecord | None, int], Any]]],
) -> list[Applied[Any] | BaseException]:
    """Apply ``items`` in order in one transaction; a decision that raises is rolled back
    alone (a savepoint each) and its exception returned in its place."""
    results: list[Applied[Any] | BaseException] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for key, node_id, decide in items:
            conn.execute("SAVEPOINT decision")
            try:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM {_TABLE} WHERE lease_key = ?", (key,)
                ).fetchone()
                outcome = decide(None if row is None else _record(row), int(time.time() * 1000))
                record = _written(outcome)
                if record is not None:
                    conn.execute(
                        f"INSERT OR REPLACE INTO {_TABLE} ({_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        _values(record),
                    )
                completed, claimed = conn.execute(_RATIO_SQL.format(p1="?"), (node_id,)).fetchone()
            except Exception as exc:
                conn.execute("ROLLBACK TO decision")
                conn.execute("RELEASE decision")
                results.append(exc)
                continue
            conn.execute("RELEASE decision")
            results.append(Applied(outcome, _ratio(completed, claimed)))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return results


#: The key's row (if any), the database clock and the node's counts *without* the key,
#: in one statement (the key's own state is added back once decided).
_READ_SQL: Final = (
    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms, "
    f"t.lease_key, t.node_id, t.token, t.lease_until_ms, t.state, t.reason, t.updated_ms, "
    f"(SELECT SUM(CASE WHEN state = 'completed' THEN 1 ELSE 0 END) FROM {_TABLE} "
    "WHERE node_id = $2 AND lease_key <> $1) AS completed, "
    f"(SELECT COUNT(*) FROM {_TABLE} WHERE node_id = $2 AND lease_key <> $1) AS claimed "
    f"FROM (SELECT 1) AS one LEFT JOIN {_TABLE} AS t ON t.lease_key = $1"
)
_UPSERT_SQL: Final = (
    f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
    "ON CONFLICT (lease_key) DO UPDATE SET node_id = EXCLUDED.node_id, "
    "token = EXCLUDED.token, lease_until_ms = EXCLUDED.lease_until_ms, "
    "state = EXCLUDED.state, reason = EXCLUDED.reason, updated_ms = EXCLUDED.updated_ms"
)


def _advisory_key(key: str) -> int:
    """The signed 64-bit advisory lock id of a lease key (SHA-256 based: stable across
    replicas and versions, unlike ``hashtext``)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


class PostgresLeaseStore:
    """Leases in PostgreSQL at ``dsn``; safe for several coordinator replicas on one
    database (every decision holds the key's lock in its transaction)."""

    def __init__(self, dsn: str, *, max_pool_size: int = 10) -> None:
        self._dsn = dsn
        self._max = max_pool_size
        self._pool: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        _, at, tail = self._dsn.rpartition("@")
        shown = f"postgresql://***@{tail}" if at else self._dsn  # credentials masked
        return f"PostgresLeaseStore({shown!r})"

    def _error(self, exc: BaseException) -> StorageError:
        return StorageError(f"postgres lease store: {str(exc) or type(exc).__name__}")

    async def open(self) -> None:
        async with self._lock:
            if self._pool is not None:
                return
            asyncpg = importlib.import_module("asyncpg")
            try:
                pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._max)
                async with pool.acquire() as conn, conn.transaction():
                    # Replicas may start together: CREATE … IF NOT EXISTS races in the catalog.
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _TABLE)
                    await conn.execute(_SCHEMA_SQL)
                    await conn.execute(_INDEX_SQL)
            except (OSError, asyncpg.PostgresError) as exc:
                raise self._error(exc) from exc
            self._pool = pool

    async def close(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    async def _pool_or_fail(self) -> Any:
        if self._pool is None:
            raise StorageError(f"{self!r} is not open")
        return self._pool

    async def apply(
        self, key: str, node_id: str, decide: Callable[[LeaseRecord | None, int], _O]
    ) -> Applied[_O]:
        pool = await self._pool_or_fail()
        asyncpg = importlib.import_module("asyncpg")
        lock = _advisory_key(key)
        try:
            async with pool.acquire() as conn:
                # 4 round trips: BEGIN with the key's lock (one simple query: the lock id is an
                # integer, no parameter), then the row, the clock and the node's counts without
                # this key in one statement — read after the lock, so every earlier decision
                # on the key is visible — then the write, then COMMIT.
                await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({lock})")
                try:
                    found = await conn.fetchrow(_READ_SQL, key, node_id)
                    now_ms = int(found["now_ms"])
                    columns = ("lease_key", "node_id", "token", "lease_until_ms", "state",
                               "reason", "updated_ms")  # fmt: skip
                    row = (
                        None if found["lease_key"] is None else _record([found[c] for c in columns])
                    )
                    outcome = decide(row, now_ms)
                    record = _written(outcome)
                    if record is not None:
                        await conn.execute(_UPSERT_SQL, *_values(record))
                    await conn.execute("COMMIT")
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._error(exc) from exc
        final = record if record is not None else row
        completed = int(found["completed"] or 0)
        claimed = int(found["claimed"] or 0)
        if final is not None:  # this key's own window, as it stands after the decision
            claimed += 1
            completed += final.state is LeaseState.COMPLETED
        return Applied(outcome, _ratio(completed, claimed))

    async def inspect(self, prefix: str, limit: int) -> list[LeaseRecord]:
        pool = await self._pool_or_fail()
        asyncpg = importlib.import_module("asyncpg")
        try:
            rows = await pool.fetch(
                f"SELECT {_COLUMNS} FROM {_TABLE} WHERE left(lease_key, length($1)) = $1 "
                'ORDER BY lease_key COLLATE "C" LIMIT $2',
                prefix,
                limit,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._error(exc) from exc
        return [_record(row) for row in rows]


def open_lease_store(dsn: str) -> LeaseStore:
    """The store for ``dsn`` (not yet opened): ``sqlite:///relative/path.db``,
    ``sqlite:////absolute/path.db``, or ``postgresql://…`` (``postgres://``)."""
    scheme, sep, rest = dsn.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ValueError(f"lease store DSN {dsn!r} names no file (sqlite:///path/leases.db)")
        return SQLiteLeaseStore(path)
    if sep and scheme in ("postgresql", "postgres"):
        return PostgresLeaseStore(dsn)
    raise ValueError(
        f"unsupported lease store DSN {dsn.split('@')[-1]!r}; supported schemes: "
        "sqlite:///path, postgresql://"
    )
