"""What both lease stores share: the store protocol, the row codec and schema, and the
queue that turns concurrent decisions into batches.

A store does no deciding. :meth:`LeaseStore.apply` reads one key's row *inside one database
transaction that holds the key*, hands it with the store's ``now_ms`` to a pure decision (from
:mod:`qmtl.runtime.sdk.lease_rules`), writes the row the outcome carries, and computes the
node's completion ratio, all before committing. Two requests on one key therefore never see
the same row, so no key is granted twice while its lease is live.

Both stores apply decisions in batches (:class:`DecisionQueue`): the decisions that arrive
while a batch is in the database wait for it, then go together in one transaction, in
arrival order, each seeing the writes of those before it. One transaction per batch instead
of per request is what lets one database keep up with many clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from qmtl.runtime.sdk.lease_rules import Changed, Granted, LeaseRecord, LeaseState

__all__ = [
    "COLUMNS",
    "INDEX_SQL",
    "SCHEMA_SQL",
    "TABLE",
    "Applied",
    "Decision",
    "DecisionQueue",
    "LeaseStore",
    "Pending",
    "ratio",
    "record_of",
    "values_of",
    "written",
]

TABLE: Final = "qmtl_coordinator_leases"
COLUMNS: Final = "lease_key, node_id, token, lease_until_ms, state, reason, updated_ms"
SCHEMA_SQL: Final = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    lease_key TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    token TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    updated_ms BIGINT NOT NULL
)"""
INDEX_SQL: Final = f"CREATE INDEX IF NOT EXISTS {TABLE}_node ON {TABLE} (node_id)"

_O = TypeVar("_O")

#: A pure decision: the key's row (``None``: never claimed) and the store's clock (epoch ms)
#: → an outcome (:mod:`qmtl.runtime.sdk.lease_rules`).
Decision = Callable[[LeaseRecord | None, int], Any]


@dataclass(frozen=True, slots=True)
class Applied(Generic[_O]):
    """A decision's outcome and the node's completion ratio after it (0.0 .. 1.0)."""

    outcome: _O
    completion_ratio: float


@dataclass(frozen=True, slots=True)
class Pending:
    """One queued decision on ``key`` of ``node_id``."""

    key: str
    node_id: str
    decide: Decision


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


#: Applies a batch in one transaction: one result per decision, in order — its
#: :class:`Applied`, or the exception its decision raised (that decision alone wrote nothing).
BatchApplier = Callable[[Sequence[Pending]], Awaitable[list[Applied[Any] | BaseException]]]


class DecisionQueue:
    """Queues decisions and hands them to ``apply_batch`` in batches, up to ``in_flight``
    batches in the database at a time (module docstring). A store failure fails every
    decision of its batch; a caller that gave up (cancelled) leaves its decision standing.
    Decisions on one key in two batches in flight are ordered by the database's lock on
    the key, as two requests racing on it would be."""

    def __init__(self, apply_batch: BatchApplier, *, in_flight: int = 1) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self._apply_batch = apply_batch
        self._in_flight = in_flight
        self._pending: list[tuple[Pending, asyncio.Future[Applied[Any]]]] = []
        self._drainers: set[asyncio.Task[None]] = set()

    async def submit(self, pending: Pending) -> Applied[Any]:
        future: asyncio.Future[Applied[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((pending, future))
        if len(self._drainers) < self._in_flight:
            self._drainers.add(asyncio.create_task(self._drain()))
        return await future

    async def _drain(self) -> None:
        try:
            await self._drain_pending()
        finally:  # leaves the set in the same step it finds nothing pending (no await between)
            task = asyncio.current_task()
            if task is not None:
                self._drainers.discard(task)

    async def _drain_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._apply_batch([p for p, _ in batch])
            except BaseException as exc:  # the store failed: every request of the batch did
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # its caller gave up (the decision stands: it was applied)
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def written(outcome: object) -> LeaseRecord | None:
    """The row an outcome writes (``None``: it changes nothing)."""
    return outcome.record if isinstance(outcome, Granted | Changed) else None


def ratio(completed: Any, claimed: Any) -> float:
    return float(completed or 0) / claimed if claimed else 0.0


def record_of(row: Any) -> LeaseRecord:
    """A row in :data:`COLUMNS` order as a :class:`LeaseRecord`."""
    return LeaseRecord(
        key=row[0],
        node_id=row[1],
        token=row[2],
        lease_until_ms=int(row[3]),
        state=LeaseState(row[4]),
        reason=row[5],
        updated_ms=int(row[6]),
    )


def values_of(r: LeaseRecord) -> tuple[str, str, str, int, str, str, int]:
    """A record as a row in :data:`COLUMNS` order."""
    return (r.key, r.node_id, r.token, r.lease_until_ms, r.state.value, r.reason, r.updated_ms)
