"""The hot-store port: :class:`HistoryStorage` and the :class:`LedgerUpdate` that crosses it.

The engine (provider, backfiller) talks to storage only through this protocol; the DuckDB and
PostgreSQL backends in :mod:`qmtl.runtime.io.storage` implement it, and one behaviour suite
(``tests/test_storage.py``) runs unchanged over each of them.

Conventions every backend honours:

- Bars are canonical (:mod:`qmtl.runtime.sdk.bars`): a read returns exactly the canonical
  columns and dtypes, sorted by ``ts``, unique ``ts``.
- Reads are half-open: ``read_range(node, start, end)`` returns the bars with
  ``start <= ts < end``, so reading the ledger's ``[start, end)`` back never loses a last bar.
- Writes are idempotent upserts keyed by ``(node_id, ts)``: the last write wins, inside a batch
  too (a later row with the same ``ts`` replaces an earlier one).
- The coverage ledger changes in the *same transaction* as the bars it describes, so a crash
  never leaves bars without ledger or ledger without bars. Ledger read-modify-writes of one
  node are serialized (no lost update between concurrent writers).
- Node ids are data, never SQL or paths: only ever bound as parameters. A node id must be a
  non-empty ``str`` encodable as UTF-8 and free of NUL (PostgreSQL ``TEXT`` cannot hold NUL, so
  every backend refuses it with ``ValueError``: same behaviour everywhere).
- Failures of the store itself (unreachable server, disk full, foreign file) raise
  :class:`~qmtl.runtime.sdk.errors.StorageError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from qmtl.runtime.sdk.history_coverage import (
    DEFAULT_STABILIZATION_BARS,
    CoverageSegment,
    Range,
    check_bar_interval,
)

if TYPE_CHECKING:
    import pandas as pd

    from qmtl.runtime.sdk.timestamps import InstantLike

__all__ = ["HistoryStorage", "LedgerUpdate"]


@dataclass(frozen=True, kw_only=True, slots=True)
class LedgerUpdate:
    """One backfill outcome for the ledger of ``(node_id, interval)``, applied with
    :func:`~qmtl.runtime.sdk.history_coverage.apply_backfill_outcome`.

    ``interval`` in seconds; ``data``/``empty`` are half-open ranges in epoch seconds;
    ``fetched_at`` in epoch seconds (``None``: unknown, and EMPTY claims are then not trimmed
    by stabilization); EMPTY claims closer than ``stabilization_bars`` intervals to
    ``fetched_at`` are not recorded.
    """

    interval: int
    data: tuple[Range, ...] = ()
    empty: tuple[Range, ...] = ()
    source: str | None = None
    fetched_at: float | None = None
    stabilization_bars: int = DEFAULT_STABILIZATION_BARS

    def __post_init__(self) -> None:
        check_bar_interval(self.interval)
        for name in ("data", "empty"):
            ranges = tuple(getattr(self, name))
            if not all(isinstance(r, Range) for r in ranges):
                raise ValueError(f"{name} must hold Range values")
            object.__setattr__(self, name, ranges)
        if self.source is not None and (not isinstance(self.source, str) or "\x00" in self.source):
            raise ValueError("source must be a str without NUL, or None")
        if self.fetched_at is not None and not math.isfinite(self.fetched_at):
            raise ValueError(f"fetched_at must be finite epoch seconds, got {self.fetched_at!r}")
        bars = self.stabilization_bars
        if isinstance(bars, bool) or not isinstance(bars, int) or bars < 0:
            raise ValueError(f"stabilization_bars must be an int >= 0, got {bars!r}")


@runtime_checkable
class HistoryStorage(Protocol):
    """The hot store behind the provider. Every method is a coroutine and never blocks the
    event loop; one instance may be shared by many tasks. Instances connect lazily (on first
    use or ``async with``) and must be closed."""

    async def read_range(self, node_id: str, start: InstantLike, end: InstantLike) -> pd.DataFrame:
        """Bars with ``start <= ts < end`` (canonical columns and dtypes, sorted by ``ts``)."""
        ...

    async def write_bars(
        self, node_id: str, frame: pd.DataFrame, *, ledger_update: LedgerUpdate | None = None
    ) -> int:
        """Upsert ``frame``'s bars (last write wins) and apply ``ledger_update`` in the same
        transaction. Extra columns are ignored. Returns the number of distinct bars written."""
        ...

    async def read_ledger(self, node_id: str, interval: int) -> list[CoverageSegment]:
        """The coverage segments of ``(node_id, interval)``, sorted by start; ``[]`` if none."""
        ...

    async def update_ledger(self, node_id: str, update: LedgerUpdate) -> list[CoverageSegment]:
        """Apply ``update`` to the ledger of ``(node_id, update.interval)`` atomically and
        serialized per node; returns the new ledger."""
        ...

    async def coverage_bounds(self, node_id: str, interval: int) -> Range | None:
        """``[min ts, max ts + interval)`` of the stored bars (gaps inside included), or
        ``None`` when the node has no bars. Says nothing about the ledger."""
        ...

    async def delete_node(self, node_id: str) -> None:
        """Remove every bar and ledger entry of ``node_id`` (all intervals) in one transaction."""
        ...

    async def revision(self, node_id: str) -> int | None:
        """A number that changes whenever ``node_id``'s bars may have changed in this store,
        or ``None`` when the backend cannot tell. Two equal answers around a read prove that
        no write landed in between, so what was computed from the first read's bars (their
        fingerprint) holds for the second. Cheap: no I/O where the backend can avoid it."""
        ...

    async def resolved_location(self) -> str:
        """Where the store is, for people (the CLI prints ``store: ...``): an absolute file
        path, ``:memory:``, or a server DSN with any password masked. Connects to nothing;
        a coroutine because resolving a relative path reads the working directory."""
        ...

    async def close(self) -> None:
        """Release connections; further calls raise :class:`StorageError`. Idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
