"""The hot-store port: :class:`HistoryStorage` and the values that cross it — the
:class:`LedgerUpdate` a write carries, the :class:`NodeSummary` a listing returns.

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
- As-of marks (:meth:`HistoryStorage.advance_as_of`) live in the store, not in memory, so
  the newest ``as_of`` a ``(world_id, node_id)`` was served survives restarts and is shared by
  every process on the store: a fetch asking for less is served as a regression (HOLD).
  Marks only ever rise; ``delete_node`` leaves them alone (they record what was *asked*, not
  what is stored). World ids follow the node-id rules, except that ``""`` means "no world".
- Failures of the store itself (unreachable server, disk full, foreign file) raise
  :class:`~qmtl.runtime.sdk.errors.StorageError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from qmtl.runtime.sdk.history_coverage import (
    DEFAULT_STABILIZATION_BARS,
    CoverageSegment,
    Range,
    SegmentKind,
    check_bar_interval,
    compute_missing_ranges,
    merge_ranges,
)
from qmtl.runtime.sdk.node_id import parse_node_id
from qmtl.runtime.sdk.timestamps import format_iso

if TYPE_CHECKING:
    import pandas as pd

    from qmtl.runtime.sdk.timestamps import InstantLike

__all__ = ["HistoryStorage", "LedgerUpdate", "NodeSummary", "summarize_node"]


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


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeSummary:
    """What a store holds for one ``(node_id, interval)``: a row of
    :meth:`HistoryStorage.list_nodes`. Instants are epoch seconds (UTC), counts are bars of
    ``interval`` seconds.

    - ``interval``: the interval of the node's ledger. Bars are stored per node, not per
      interval, so a node whose ledger holds several intervals shows the same bar fields on
      each of its rows (nodes the engine writes have one: their id's timeframe). A node with
      bars and no ledger has one row at its id's timeframe (``ohlcv:…:1m`` → 60), or ``0``
      (unknown) when the id names none.
    - ``first_bar`` / ``last_bar``: open time of the first / last *stored* bar; ``None``
      when the node has no bars. ``stored_bars``: how many bars are stored.
    - ``known_empty_bars``: bars in EMPTY ledger segments (the exchange has none there).
    - ``missing_bars``: bars between the start of the first ledger segment and the end of
      the last that no segment covers — interior gaps (never fetched, or the fetch failed).
      Bars before the first or after the last segment are *not* counted: a ledger does not
      say how far back a series should reach or how current it should be (``coverage`` with
      a window answers that).
    - ``last_fetched_at``: the newest ``fetched_at`` of the ledger segments (fractional
      epoch seconds); ``None`` when there are none or none records it.
    """

    node_id: str
    interval: int
    first_bar: int | None = None
    last_bar: int | None = None
    stored_bars: int = 0
    known_empty_bars: int = 0
    missing_bars: int = 0
    last_fetched_at: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int):
            raise ValueError(f"interval must be an int number of seconds, got {self.interval!r}")
        for name in ("interval", "stored_bars", "known_empty_bars", "missing_bars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if (self.first_bar is None) != (self.last_bar is None) or (
            self.first_bar is None and self.stored_bars
        ):
            raise ValueError("first_bar and last_bar are both None exactly when no bar is stored")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, and next to each instant its ISO-8601 UTC text
        (``first_bar_iso``, ``last_bar_iso``, ``last_fetched_at_iso``; ``None`` with it)."""
        return {
            "node_id": self.node_id,
            "interval": self.interval,
            "first_bar": self.first_bar,
            "first_bar_iso": _iso(self.first_bar),
            "last_bar": self.last_bar,
            "last_bar_iso": _iso(self.last_bar),
            "stored_bars": self.stored_bars,
            "known_empty_bars": self.known_empty_bars,
            "missing_bars": self.missing_bars,
            "last_fetched_at": self.last_fetched_at,
            "last_fetched_at_iso": _iso(self.last_fetched_at),
        }


def _iso(epoch_seconds: float | None) -> str | None:
    return None if epoch_seconds is None else format_iso(epoch_seconds)


def summarize_node(
    node_id: str,
    ledgers: Mapping[int, Sequence[CoverageSegment]],
    *,
    first_bar: int | None = None,
    last_bar: int | None = None,
    stored_bars: int = 0,
) -> list[NodeSummary]:
    """The :class:`NodeSummary` rows of one node, sorted by interval, from its ledger
    segments per interval and what the store aggregated of its bars (pure, O(segments)).
    A node holding neither bars nor ledger segments has no row (``[]``)."""
    counted = [
        (interval, _count(ledger, interval)) for interval, ledger in ledgers.items() if ledger
    ]
    if not counted and stored_bars:
        counted = [(_timeframe_of(node_id), (0, 0, None))]
    return [
        NodeSummary(
            node_id=node_id,
            interval=interval,
            first_bar=first_bar,
            last_bar=last_bar,
            stored_bars=stored_bars,
            known_empty_bars=empty,
            missing_bars=missing,
            last_fetched_at=fetched,
        )
        for interval, (empty, missing, fetched) in sorted(counted, key=lambda c: c[0])
    ]


def _count(ledger: Sequence[CoverageSegment], interval: int) -> tuple[int, int, float | None]:
    """Known-empty bars, interior missing bars and the newest ``fetched_at`` of one ledger."""
    check_bar_interval(interval)
    empty = merge_ranges([s for s in ledger if s.kind is SegmentKind.EMPTY], interval)
    start, end = min(s.start for s in ledger), max(s.end for s in ledger)
    missing = compute_missing_ranges(ledger, start, end, interval)
    fetched = [s.fetched_at for s in ledger if s.fetched_at is not None]
    return (
        sum(r.bars(interval) for r in empty),
        sum(r.bars(interval) for r in missing),
        max(fetched, default=None),
    )


def _timeframe_of(node_id: str) -> int:
    """The interval a node id names (``ohlcv:…:1m`` → 60), ``0`` when it is no such id."""
    try:
        return parse_node_id(node_id).interval
    except ValueError:
        return 0


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

    async def list_nodes(self) -> list[NodeSummary]:
        """Every node that holds bars or ledger segments, one :class:`NodeSummary` per
        ``(node_id, interval)``, sorted by node id (code points, so the same order on every
        backend) then interval; ``[]`` for an empty store. The database aggregates the bars
        (count, first, last): no bar is loaded, so this stays cheap for large stores. Works
        on a store opened read-only."""
        ...

    async def delete_node(self, node_id: str) -> None:
        """Remove every bar and ledger entry of ``node_id`` (all intervals) in one transaction."""
        ...

    async def advance_as_of(self, world_id: str, node_id: str, as_of_ms: int) -> int | None:
        """Record that ``(world_id, node_id)`` read as of ``as_of_ms`` (epoch milliseconds): the
        stored mark becomes ``max(mark, as_of_ms)``, atomically (concurrent callers, other
        processes included, never lose an advance). Returns the mark *before* this call
        (``None``: first sighting), so ``as_of_ms < returned`` is a regression. ``world_id``
        ``""`` stands for "no world". ``as_of_ms`` must be an ``int`` (not ``bool``) in int64,
        else ``ValueError``; a store opened read-only refuses with :class:`StorageError`."""
        ...

    async def as_of_mark(self, world_id: str, node_id: str) -> int | None:
        """The current mark of ``(world_id, node_id)`` in epoch milliseconds (``None`` when
        never recorded, or when a store opened read-only predates marks)."""
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
