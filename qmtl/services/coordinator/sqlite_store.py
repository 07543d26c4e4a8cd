"""Leases in a SQLite file: one machine, one writer.

Stdlib ``sqlite3`` in ``asyncio.to_thread``, one connection used by one batch at a time,
``BEGIN IMMEDIATE`` (the write lock is taken before the read), a savepoint per decision.
``now_ms`` is this process's clock. Keys and values are bound as parameters, never spliced
into SQL. Driver errors surface as :class:`~qmtl.runtime.sdk.errors.StorageError`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.lease_rules import LeaseRecord
from qmtl.services.coordinator.lease_rows import (
    COLUMNS,
    INDEX_SQL,
    SCHEMA_SQL,
    TABLE,
    Applied,
    DecisionQueue,
    Pending,
    ratio,
    record_of,
    values_of,
    written,
)

__all__ = ["SQLiteLeaseStore"]

_O = TypeVar("_O")
_RATIO_SQL = (
    f"SELECT SUM(CASE WHEN state = 'completed' THEN 1 ELSE 0 END), COUNT(*) FROM {TABLE} "
    "WHERE node_id = ?"
)


class SQLiteLeaseStore:
    """Leases in a SQLite file at ``path`` (its directory is created)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._queue = DecisionQueue(self._apply_batch)

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
            conn.execute(SCHEMA_SQL)
            conn.execute(INDEX_SQL)
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
        applied: Applied[_O] = await self._queue.submit(Pending(key, node_id, decide))
        return applied

    async def _apply_batch(self, batch: Sequence[Pending]) -> list[Applied[Any] | BaseException]:
        return await self._call(lambda conn: _apply_batch(conn, batch))

    async def inspect(self, prefix: str, limit: int) -> list[LeaseRecord]:
        def work(conn: sqlite3.Connection) -> list[LeaseRecord]:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM {TABLE} WHERE substr(lease_key, 1, length(?)) = ? "
                "ORDER BY lease_key LIMIT ?",
                (prefix, prefix, limit),
            ).fetchall()
            return [record_of(row) for row in rows]

        return await self._call(work)


def _apply_batch(
    conn: sqlite3.Connection, batch: Sequence[Pending]
) -> list[Applied[Any] | BaseException]:
    """Apply ``batch`` in order in one transaction; a decision that raises is rolled back
    alone (a savepoint each) and its exception returned in its place."""
    results: list[Applied[Any] | BaseException] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for item in batch:
            conn.execute("SAVEPOINT decision")
            try:
                row = conn.execute(
                    f"SELECT {COLUMNS} FROM {TABLE} WHERE lease_key = ?", (item.key,)
                ).fetchone()
                now_ms = int(time.time() * 1000)
                outcome = item.decide(None if row is None else record_of(row), now_ms)
                record = written(outcome)
                if record is not None:
                    conn.execute(
                        f"INSERT OR REPLACE INTO {TABLE} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        values_of(record),
                    )
                completed, claimed = conn.execute(_RATIO_SQL, (item.node_id,)).fetchone()
            except Exception as exc:
                conn.execute("ROLLBACK TO decision")
                conn.execute("RELEASE decision")
                results.append(exc)
                continue
            conn.execute("RELEASE decision")
            results.append(Applied(outcome, ratio(completed, claimed)))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return results
