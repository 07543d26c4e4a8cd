"""The hot-store seam: the :class:`HistoryStorage` protocol, its shared checks, and
:func:`open_storage` (backend by URI).

Conventions every backend honours (the behaviour suite in ``tests/test_storage.py`` runs
unchanged over each of them):

- Bars are canonical OHLCV: ``ts`` is the bar *open* time in int64 epoch seconds (UTC), prices
  and volume float64 (NaN allowed, kept as NaN). A read returns exactly the columns
  :data:`CANONICAL_COLUMNS`, sorted by ``ts``, unique ``ts``, with those dtypes.
- Reads are half-open: ``read_range(node, start, end)`` returns the bars with
  ``start <= ts < end``, so reading the ledger's ``[start, end)`` back never loses a last bar.
- Writes are idempotent upserts keyed by ``(node_id, ts)``: the last write wins, inside a batch
  too (a later row with the same ``ts`` replaces an earlier one).
- The coverage ledger changes in the *same transaction* as the bars it describes, so a crash
  never leaves bars without ledger or ledger without bars. Ledger read-modify-writes of one node
  are serialized (no lost update between concurrent writers).
- Node ids are data, never SQL: they are only ever bound as parameters. Both backends key rows by
  a surrogate ``node_key`` found through the SHA-256 of the UTF-8 id, so an id of any length
  (PostgreSQL b-tree entries cannot exceed ~2.7 kB) indexes in constant size.
- A node id must be a non-empty ``str`` encodable as UTF-8 and free of NUL: PostgreSQL ``TEXT``
  cannot hold NUL, so *both* backends refuse it with ``ValueError`` (same behaviour everywhere).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import pandas as pd

from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.history_coverage import CoverageSegment, Range
from qmtl.runtime.sdk.timestamps import InstantLike, to_epoch_seconds

__all__ = [
    "CANONICAL_COLUMNS",
    "DEFAULT_DSN",
    "PRICE_COLUMNS",
    "SUPPORTED_SCHEMES",
    "BarColumns",
    "HistoryStorage",
    "LedgerUpdate",
    "StorageError",
    "check_interval",
    "check_ledger_update",
    "check_node_id",
    "check_span",
    "empty_frame",
    "frame_from_columns",
    "node_hash",
    "open_storage",
    "prepare_bars",
    "segments_from_rows",
    "short_id",
]

#: Canonical OHLCV column order (SPEC §3).
CANONICAL_COLUMNS: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = CANONICAL_COLUMNS[1:]
#: Used when ``open_storage(None)``: a DuckDB file relative to the working directory.
DEFAULT_DSN = "duckdb:///.qmtl/seamless.duckdb"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: Columns as numpy arrays: ``ts`` int64, the rest float64, all the same length.
BarColumns = dict[str, npt.NDArray[Any]]


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
    stabilization_bars: int = 2

    def __post_init__(self) -> None:
        check_interval(self.interval)
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

    async def close(self) -> None:
        """Release connections; further calls raise :class:`StorageError`. Idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


def check_node_id(node_id: object) -> str:
    """Validate a node id at the storage boundary (see the module doc for why NUL is refused)."""
    if not isinstance(node_id, str):
        raise ValueError(f"node id must be a str, got {type(node_id).__name__}")
    if not node_id:
        raise ValueError("node id is empty")
    if "\x00" in node_id:
        raise ValueError("node id contains NUL, which storage cannot hold")
    try:
        node_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("node id is not valid Unicode (lone surrogate)") from None
    return node_id


def check_interval(interval: object) -> int:
    """A bar interval: a positive ``int`` number of seconds."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
        raise ValueError(f"interval must be a positive int number of seconds, got {interval!r}")
    return interval


def check_ledger_update(update: object) -> LedgerUpdate:
    """Refuse anything but a :class:`LedgerUpdate` before a transaction starts."""
    if not isinstance(update, LedgerUpdate):
        raise ValueError(f"expected a LedgerUpdate, got {type(update).__name__}")
    return update


def short_id(node_id: object) -> str:
    """A node id for error messages: ``repr``, cut to 80 characters (ids may be 10 kB)."""
    text = repr(node_id)
    return text if len(text) <= 80 else text[:77] + "..."


def node_hash(node_id: str) -> bytes:
    """The 32-byte key both backends index node ids by (SHA-256 of the UTF-8 id)."""
    return hashlib.sha256(node_id.encode("utf-8")).digest()


def check_span(start: InstantLike, end: InstantLike) -> tuple[int, int]:
    """Normalize read bounds to int64 epoch seconds; ``start >= end`` means an empty read."""
    s = to_epoch_seconds(_as_instant(start), name="start")
    e = to_epoch_seconds(_as_instant(end), name="end")
    for name, value in (("start", s), ("end", e)):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{name} {value} is outside int64 epoch seconds")
    return s, e


def _as_instant(value: InstantLike) -> InstantLike:
    # numpy integers are ints to a user; operator.index accepts them and nothing lossy.
    if isinstance(value, np.integer):
        return operator.index(value)
    return value


def prepare_bars(frame: pd.DataFrame) -> BarColumns:
    """Validate ``frame`` and return its canonical columns as contiguous numpy arrays, sorted
    by ``ts`` with duplicates resolved *last row wins*. Vectorised: no per-row Python.

    ``ts`` must be an integer dtype without nulls (conformance casts timestamps before storage;
    storage never guesses units). Prices must be numeric; nulls become NaN.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in CANONICAL_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks canonical column(s) {missing}")
    ts_col = frame["ts"]
    if isinstance(ts_col, pd.DataFrame):
        raise ValueError("frame has duplicate 'ts' columns")
    if not pd.api.types.is_integer_dtype(ts_col.dtype) or ts_col.isna().any():
        raise ValueError(f"'ts' must be integer epoch seconds without nulls, got {ts_col.dtype}")
    unsigned = pd.api.types.is_unsigned_integer_dtype(ts_col.dtype)
    if unsigned and len(ts_col) and int(ts_col.max()) > _INT64_MAX:
        raise ValueError("'ts' exceeds int64 epoch seconds")
    ts = ts_col.to_numpy(dtype=np.int64)
    columns: BarColumns = {"ts": ts}
    for name in PRICE_COLUMNS:
        col = frame[name]
        if isinstance(col, pd.DataFrame):
            raise ValueError(f"frame has duplicate {name!r} columns")
        if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            raise ValueError(f"{name!r} must be numeric, got {col.dtype}")
        columns[name] = col.to_numpy(dtype=np.float64, na_value=np.nan)
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    last_of_run = np.ones(sorted_ts.size, dtype=bool)
    last_of_run[:-1] = sorted_ts[1:] != sorted_ts[:-1]
    keep = order[last_of_run]
    return {name: np.ascontiguousarray(arr[keep]) for name, arr in columns.items()}


def frame_from_columns(columns: BarColumns) -> pd.DataFrame:
    """A canonical frame (RangeIndex, exact dtypes) from per-column arrays."""
    data = {"ts": np.asarray(columns["ts"], dtype=np.int64)}
    data.update({n: np.asarray(columns[n], dtype=np.float64) for n in PRICE_COLUMNS})
    return pd.DataFrame(data, columns=list(CANONICAL_COLUMNS))


def empty_frame() -> pd.DataFrame:
    """A canonical frame with no rows and the right dtypes."""
    return frame_from_columns(_empty_columns())


def _empty_columns() -> BarColumns:
    cols: BarColumns = {"ts": np.empty(0, dtype=np.int64)}
    cols.update({n: np.empty(0, dtype=np.float64) for n in PRICE_COLUMNS})
    return cols


def segments_from_rows(rows: Iterable[tuple[Any, ...]]) -> list[CoverageSegment]:
    """Ledger rows ``(start, end, kind, source, fetched_at)`` to segments (O(segments))."""
    return [
        CoverageSegment(int(s), int(e), k, src, None if f is None else float(f))
        for s, e, k, src, f in rows
    ]


#: scheme -> (module, class). Imported lazily so that choosing DuckDB never imports asyncpg.
_BACKENDS: dict[str, tuple[str, str]] = {
    "duckdb": ("qmtl.runtime.io.storage.duckdb", "DuckDBStorage"),
    "postgresql": ("qmtl.runtime.io.storage.postgres", "PostgresStorage"),
    "postgres": ("qmtl.runtime.io.storage.postgres", "PostgresStorage"),
}
SUPPORTED_SCHEMES: tuple[str, ...] = tuple(_BACKENDS)
_SCHEME_HELP = "duckdb:///relative/file.duckdb, duckdb:////abs/file.duckdb, duckdb:///:memory:, "
_SCHEME_HELP += "postgresql://user@host/db, postgres://user@host/db"


def open_storage(dsn: str | None = None) -> HistoryStorage:
    """The backend for ``dsn`` (``None``: :data:`DEFAULT_DSN`). Nothing connects yet: the
    store opens on first use or ``async with``, so this is safe to call on the event loop.

    Raises ``ValueError`` for an unknown scheme, listing the supported ones (the DSN itself is
    not echoed: it may hold a password).
    """
    dsn = DEFAULT_DSN if dsn is None else dsn
    if not isinstance(dsn, str) or not dsn.strip():
        raise ValueError(f"storage DSN must be a non-empty string; supported: {_SCHEME_HELP}")
    scheme = urlsplit(dsn.strip()).scheme.lower() if "://" in dsn else ""
    if scheme not in _BACKENDS:
        shown = repr(scheme) if scheme else "no scheme"
        raise ValueError(f"unsupported storage DSN scheme ({shown}); supported: {_SCHEME_HELP}")
    module_name, class_name = _BACKENDS[scheme]
    backend: HistoryStorage = getattr(importlib.import_module(module_name), class_name)(dsn.strip())
    return backend
