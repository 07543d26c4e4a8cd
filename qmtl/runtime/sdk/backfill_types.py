"""The backfill seams: :class:`DataFetcher` (exchange side) and :class:`Backfiller` (engine
side), with the values that cross them.

A fetcher establishes what the exchange has in a window. Its answer,
:class:`FetchWindowResult`, vouches for ``[start, covered_until)``: every bar open time there
is either in ``frame`` or inside one of the ``empty`` ranges (the exchange showed it has no
bar there, on evidence a fault cannot produce). Bars after ``covered_until`` (the
still-forming bar, the future, or what the exchange did not answer) are not vouched for and
stay *missing*; when that part lies in the settled past, ``missing_reason`` says why it is
worth asking again (the backfiller retries it). ``unavailable`` ranges inside the window are
not vouched for either, and asking again cannot help (``unavailable_reason``: e.g. beyond
the exchange's history depth): they stay missing with that reason, never known-empty.
Failures are raised as :class:`~qmtl.runtime.sdk.errors.ExchangeError` subclasses, never
returned as partial frames.

An :class:`ArchiveSource` (a fetcher's ``archive`` attribute, when it has one) serves whole
stable periods from an exchange's bulk archives: the backfiller reads those first and asks
the fetcher only for the rest. An archive's bars are only ever *data*: a bar absent from a
file stays missing until the REST API has its say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from qmtl.runtime.sdk.history_coverage import Range, merge_ranges, subtract_ranges

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from qmtl.runtime.sdk.archive_plan import ArchiveWindow
    from qmtl.runtime.sdk.conformance import ConformanceReport

__all__ = [
    "ArchiveSource",
    "BackfillReport",
    "Backfiller",
    "BatchOutcome",
    "DataFetcher",
    "FetchWindowResult",
]


@dataclass(frozen=True, slots=True)
class FetchWindowResult:
    """Bars (canonical columns) and known-empty ranges for ``[start, covered_until)``."""

    frame: pd.DataFrame
    empty: tuple[Range, ...] = ()
    covered_until: int | None = None
    requests: int = 0
    missing_reason: str | None = None
    warnings: tuple[str, ...] = ()
    unavailable: tuple[Range, ...] = ()
    unavailable_reason: str | None = None


@runtime_checkable
class DataFetcher(Protocol):
    """Anything that can fetch one window of one node (half-open epoch seconds)."""

    async def fetch_window(
        self, start: int, end: int, *, node_id: str, interval: int
    ) -> FetchWindowResult: ...


@runtime_checkable
class ArchiveSource(Protocol):
    """Whole stable periods of a node from the exchange's bulk archives.

    ``archive_windows`` plans the files covering ``missing`` (``[]``: none applies — another
    exchange, an unarchived timeframe, an unknown symbol); ``read_archive`` returns one
    window's bars (canonical columns, possibly with holes the REST API must confirm) or
    raises :class:`~qmtl.runtime.sdk.errors.ArchiveError`, never a partial file. Reads are
    limited to ``max_concurrent_downloads`` at once, apart from the exchange's weight budget.
    """

    max_concurrent_downloads: int

    async def archive_windows(
        self, node_id: str, interval: int, missing: Sequence[Range]
    ) -> list[ArchiveWindow]: ...

    async def read_archive(
        self, node_id: str, interval: int, window: ArchiveWindow
    ) -> pd.DataFrame: ...


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What became of one batch: rows stored and ranges established, or the final error.
    ``held``: another worker's live coordinator lease holds the batch, so it was not fetched
    (``attempts == 0``, ``error`` says so) and stays *missing*; a later pass asks again."""

    batch: Range
    attempts: int
    rows: int = 0
    data: tuple[Range, ...] = ()
    empty: tuple[Range, ...] = ()
    error: str | None = None
    conformance: ConformanceReport | None = None
    shared: bool = False  # another caller's batch covered it (single flight)
    held: bool = False  # another worker's lease holds it: not fetched, still missing
    source: str = "rest"  # "archive": read from a bulk-archive file

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class BackfillReport:
    """Every batch outcome of one backfill call."""

    node_id: str
    interval: int
    outcomes: tuple[BatchOutcome, ...] = ()

    @property
    def rows(self) -> int:
        return sum(o.rows for o in self.outcomes)

    @property
    def failed(self) -> list[Range]:
        """What failed batches left missing: each failed batch less what it did establish
        (a batch answered in part keeps that part)."""
        return merge_ranges(
            [
                part
                for o in self.outcomes
                if not o.ok
                for part in subtract_ranges([o.batch], [*o.data, *o.empty])
            ],
            self.interval,
        )

    @property
    def errors(self) -> list[str]:
        return [o.error for o in self.outcomes if o.error is not None]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


@runtime_checkable
class Backfiller(Protocol):
    """What the provider needs to repair gaps."""

    async def backfill(
        self, node_id: str, interval: int, ranges: Sequence[Range]
    ) -> BackfillReport:
        """Backfill ``ranges`` and report every batch (failures are outcomes, not raises)."""
        ...
