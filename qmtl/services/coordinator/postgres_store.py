"""Leases in PostgreSQL: several coordinator replicas on one database.

Each batch of decisions (:class:`~qmtl.services.coordinator.lease_rows.DecisionQueue`, up
to :data:`BATCHES_IN_FLIGHT` at once) is one transaction on one pooled ``asyncpg``
connection (imported on first use), four round trips whatever the batch size:

1. ``BEGIN`` and a transaction-scoped advisory lock on every key of the batch, taken in
   ascending lock-id order (so batches locking overlapping keys — of this replica or
   another — never deadlock). A key without a row has nothing to ``SELECT … FOR UPDATE``;
   the advisory lock holds it anyway.
2. One statement, read after the locks (so every earlier decision on these keys, by any
   replica, is visible): the database's clock (``now_ms``: replicas agree on expiry), the
   batch's rows, and per node of the batch its completed and claimed windows from the
   counts table (the batch's own rows are taken out and added back as they stand after
   each decision).
3. One statement: the rows the decisions wrote, one per key (``INSERT … ON CONFLICT`` of
   arrays), and the counts' changes.
4. ``COMMIT``.

Keys and values are bound as parameters, never spliced into SQL (the lock ids are integers
this module computes). Driver errors surface as
:class:`~qmtl.runtime.sdk.errors.StorageError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.lease_rules import LeaseRecord, LeaseState
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

logger = logging.getLogger(__name__)

__all__ = ["COUNTS_TABLE", "VACUUM_EVERY", "PostgresLeaseStore", "advisory_key"]

_O = TypeVar("_O")

#: Batches in the database at once (each on its own connection): while one waits on a
#: round trip, the next is already being decided.
BATCHES_IN_FLIGHT: Final = 1

#: Completed and claimed windows per node, kept in step with the lease rows by every batch
#: (a primary-key read per node instead of counting a node's rows: the lease table is
#: update-heavy, and counting through its dead row versions grew with every claim).
COUNTS_TABLE: Final = "qmtl_coordinator_node_counts"
_COUNTS_SCHEMA_SQL: Final = (
    f"CREATE TABLE IF NOT EXISTS {COUNTS_TABLE} (node_id TEXT PRIMARY KEY, "
    "completed BIGINT NOT NULL, claimed BIGINT NOT NULL)"
)
#: Count-row updates between two vacuums of the counts table. A node's count row changes
#: with every batch that touches the node; the dead versions pile up on the table's few
#: pages far faster than autovacuum (once a minute at most) removes them, and every read and
#: write of a count then walks them: latency grew round after round (1,000 claims/s with
#: completions: p99 5 → 170 ms over 40 s; flat 2.5–2.9 ms with the counts table vacuumed).
#: Vacuuming ~100 rows costs next to nothing.
VACUUM_EVERY: Final = 5_000
#: Counts of the rows already there when the counts table is created (older schema).
_COUNTS_SEED_SQL: Final = (
    f"INSERT INTO {COUNTS_TABLE} (node_id, completed, claimed) "
    f"SELECT node_id, COUNT(*) FILTER (WHERE state = 'completed'), COUNT(*) FROM {TABLE} "
    "GROUP BY node_id"
)
_READ_SQL: Final = (
    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms, "
    f"ARRAY(SELECT ROW({COLUMNS}) FROM {TABLE} WHERE lease_key = ANY($1::text[])) AS rows, "
    f"ARRAY(SELECT ROW(node_id, completed, claimed) FROM {COUNTS_TABLE} "
    "WHERE node_id = ANY($2::text[])) AS counts"
)
#: The batch's rows and the counts' changes, one statement.
_WRITE_SQL: Final = (
    f"WITH written AS (INSERT INTO {TABLE} ({COLUMNS}) SELECT * FROM unnest($1::text[], "
    "$2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[]) "
    "ON CONFLICT (lease_key) DO UPDATE SET node_id = EXCLUDED.node_id, "
    "token = EXCLUDED.token, lease_until_ms = EXCLUDED.lease_until_ms, "
    "state = EXCLUDED.state, reason = EXCLUDED.reason, updated_ms = EXCLUDED.updated_ms) "
    f"INSERT INTO {COUNTS_TABLE} AS c (node_id, completed, claimed) "
    "SELECT * FROM unnest($8::text[], $9::bigint[], $10::bigint[]) "
    "ON CONFLICT (node_id) DO UPDATE SET completed = c.completed + EXCLUDED.completed, "
    "claimed = c.claimed + EXCLUDED.claimed"
)


def advisory_key(key: str) -> int:
    """The signed 64-bit advisory lock id of a lease key (SHA-256 based: stable across
    replicas and versions, unlike ``hashtext``)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


def _lock_sql(keys: Sequence[str]) -> str:
    ids = ",".join(str(i) for i in sorted({advisory_key(k) for k in keys}))
    return (
        "BEGIN; SELECT pg_advisory_xact_lock(k) "
        f"FROM (SELECT unnest(ARRAY[{ids}]::bigint[]) AS k ORDER BY 1) AS ordered"
    )


class PostgresLeaseStore:
    """Leases in PostgreSQL at ``dsn``; safe for several coordinator replicas on one
    database (every decision holds its key's lock in its transaction)."""

    def __init__(self, dsn: str, *, max_pool_size: int = BATCHES_IN_FLIGHT + 2) -> None:
        self._dsn = dsn
        self._max = max_pool_size
        self._pool: Any = None
        self._lock = asyncio.Lock()
        self._queue = DecisionQueue(self._apply_batch, in_flight=BATCHES_IN_FLIGHT)
        self._count_updates = 0  #: since the last vacuum of the counts table
        self._vacuum: asyncio.Task[None] | None = None

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
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", TABLE)
                    await conn.execute(SCHEMA_SQL)
                    await conn.execute(INDEX_SQL)
                    seeded = await conn.fetchval("SELECT to_regclass($1)", COUNTS_TABLE)
                    await conn.execute(_COUNTS_SCHEMA_SQL)
                    if seeded is None:
                        await conn.execute(_COUNTS_SEED_SQL)
            except (OSError, asyncpg.PostgresError) as exc:
                raise self._error(exc) from exc
            self._pool = pool

    async def close(self) -> None:
        if self._vacuum is not None:
            await asyncio.gather(self._vacuum, return_exceptions=True)
        async with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    def _pool_or_fail(self) -> Any:
        if self._pool is None:
            raise StorageError(f"{self!r} is not open")
        return self._pool

    async def apply(
        self, key: str, node_id: str, decide: Callable[[LeaseRecord | None, int], _O]
    ) -> Applied[_O]:
        applied: Applied[_O] = await self._queue.submit(Pending(key, node_id, decide))
        return applied

    async def _apply_batch(self, batch: Sequence[Pending]) -> list[Applied[Any] | BaseException]:
        pool = self._pool_or_fail()
        asyncpg = importlib.import_module("asyncpg")
        keys = list(dict.fromkeys(p.key for p in batch))
        nodes = list(dict.fromkeys(p.node_id for p in batch))
        try:
            async with pool.acquire() as conn:
                await conn.execute(_lock_sql(keys))
                try:
                    found = await conn.fetchrow(_READ_SQL, keys, nodes)
                    rows = {row[0]: record_of(row) for row in found["rows"]}
                    base = {
                        node: [int(done), int(claimed)] for node, done, claimed in found["counts"]
                    }
                    before = dict(rows)
                    for row in rows.values():  # counted apart, as they stand after each decision
                        counts = base.setdefault(row.node_id, [0, 0])
                        counts[0] -= row.state is LeaseState.COMPLETED
                        counts[1] -= 1
                    results, writes = _decide(batch, rows, base, int(found["now_ms"]))
                    if writes:
                        columns = list(zip(*(values_of(r) for r in writes.values()), strict=True))
                        changes = _count_changes(before, writes)
                        await conn.execute(_WRITE_SQL, *columns, *changes)
                        self._count_updates += len(changes[0])
                    await conn.execute("COMMIT")
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._error(exc) from exc
        if self._count_updates >= VACUUM_EVERY and (self._vacuum is None or self._vacuum.done()):
            self._count_updates = 0
            self._vacuum = asyncio.create_task(self._vacuum_counts(pool))
        return results

    async def _vacuum_counts(self, pool: Any) -> None:
        """``VACUUM`` the counts table (:data:`VACUUM_EVERY`) on a connection of its own,
        beside the decisions (it takes no lock they wait for). A failure is logged only."""
        try:
            async with pool.acquire() as conn:
                await conn.execute(f"VACUUM {COUNTS_TABLE}")
        except Exception as exc:  # the next batch past the threshold tries again
            logger.warning("could not vacuum %s: %s", COUNTS_TABLE, exc)

    async def inspect(self, prefix: str, limit: int) -> list[LeaseRecord]:
        pool = self._pool_or_fail()
        asyncpg = importlib.import_module("asyncpg")
        try:
            rows = await pool.fetch(
                f"SELECT {COLUMNS} FROM {TABLE} WHERE left(lease_key, length($1)) = $1 "
                'ORDER BY lease_key COLLATE "C" LIMIT $2',
                prefix,
                limit,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._error(exc) from exc
        return [record_of(row) for row in rows]


def _count_changes(
    before: dict[str, LeaseRecord], writes: dict[str, LeaseRecord]
) -> tuple[list[str], list[int], list[int]]:
    """Per node: how its completed and claimed windows change when ``writes`` replace the
    rows ``before`` (columns for the counts upsert)."""
    changes: dict[str, list[int]] = {}
    for key, after in writes.items():
        old = before.get(key)
        change = changes.setdefault(after.node_id, [0, 0])
        change[0] += (after.state is LeaseState.COMPLETED) - (
            old is not None and old.state is LeaseState.COMPLETED
        )
        change[1] += old is None
    nodes = sorted(changes)  # every batch updates count rows in one order: no deadlock
    return nodes, [changes[n][0] for n in nodes], [changes[n][1] for n in nodes]


def _decide(
    batch: Sequence[Pending],
    rows: dict[str, LeaseRecord],
    base: dict[str, list[int]],
    now_ms: int,
) -> tuple[list[Applied[Any] | BaseException], dict[str, LeaseRecord]]:
    """Run the batch's decisions in order on ``rows`` (updated in place): each result, and
    the final row of every key a decision wrote. A node's ratio counts its rows outside the
    batch (``base``: completed, claimed) plus the batch's rows of that node as they stand."""
    results: list[Applied[Any] | BaseException] = []
    writes: dict[str, LeaseRecord] = {}
    batch_keys: dict[str, set[str]] = {}
    for item in batch:
        batch_keys.setdefault(item.node_id, set()).add(item.key)
    for item in batch:
        try:
            outcome = item.decide(rows.get(item.key), now_ms)
        except Exception as exc:  # this decision writes nothing; the others stand
            results.append(exc)
            continue
        record = written(outcome)
        if record is not None:
            rows[item.key] = writes[item.key] = record
        completed, claimed = base.get(item.node_id, (0, 0))
        for key in batch_keys[item.node_id]:
            row = rows.get(key)
            if row is not None:
                claimed += 1
                completed += row.state is LeaseState.COMPLETED
        results.append(Applied(outcome, ratio(completed, claimed)))
    return results, writes
