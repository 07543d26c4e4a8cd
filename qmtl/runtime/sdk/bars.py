"""The one canonical bar schema, written once and used by every layer.

A canonical OHLCV frame has exactly the columns :data:`CANONICAL_COLUMNS` in that order:
``ts`` is the bar *open* time as int64 epoch **seconds** UTC, aligned to the interval's grid
(:func:`~qmtl.runtime.sdk.node_id.alignment_origin`: the epoch, or a Monday for weeks); the
prices and the volume are float64. Rows are sorted by ``ts`` with unique ``ts``; where the
input repeats a ``ts`` the **last** row wins (:func:`keep_last`).

Conformance, the hot stores, the ccxt fetcher and its adapter, and the exchange simulator all
use these functions, so "sorted, last wins, aligned, finite" means one thing everywhere.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from qmtl.runtime.sdk.node_id import alignment_origin

__all__ = [
    "CANONICAL_COLUMNS",
    "PRICE_COLUMNS",
    "BarColumns",
    "bar_open_at",
    "block_to_frame",
    "empty_frame",
    "frame_from_columns",
    "keep_last",
    "keep_last_with_keys",
    "misaligned",
    "prepare_bars",
    "row_problem",
    "rows_to_block",
    "sorted_columns",
]

#: Canonical OHLCV column order.
CANONICAL_COLUMNS: Final[tuple[str, ...]] = ("ts", "open", "high", "low", "close", "volume")
#: The value columns (float64).
PRICE_COLUMNS: Final[tuple[str, ...]] = CANONICAL_COLUMNS[1:]

#: Columns as numpy arrays: ``ts`` int64, the rest float64, all the same length.
BarColumns = dict[str, npt.NDArray[Any]]

_INT64_MAX = 2**63 - 1
_F8 = np.dtype(np.float64)
_I8 = np.dtype(np.int64)


def keep_last(keys: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
    """Positions of the rows to keep, in ascending key order: one per distinct key, the
    *last* occurrence in input order (a stable sort keeps equal keys in input order)."""
    return keep_last_with_keys(keys)[0]


def keep_last_with_keys(
    keys: npt.NDArray[Any],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[Any]]:
    """:func:`keep_last` and the kept keys, ascending (no second gather of the keys)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    last_of_run = np.ones(sorted_keys.size, dtype=bool)
    last_of_run[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    kept: npt.NDArray[np.intp] = order[last_of_run]
    return kept, sorted_keys[last_of_run]


def misaligned(ts: npt.NDArray[Any], interval: int) -> npt.NDArray[np.bool_]:
    """Mask of open times (epoch seconds) that are not on ``interval``'s bar grid — weekly
    bars open on Mondays, every other timeframe on multiples since the epoch."""
    mask: npt.NDArray[np.bool_] = (ts - alignment_origin(interval)) % interval != 0
    return mask


def bar_open_at(instant: float, interval: int) -> int:
    """Open time (epoch seconds) of the ``interval`` bar that contains ``instant`` — the
    forming bar when ``instant`` is now."""
    origin = alignment_origin(interval)
    return origin + int((instant - origin) // interval) * interval


def rows_to_block(rows: object) -> npt.NDArray[np.float64]:
    """ccxt-style OHLCV rows ``[[ts_ms, o, h, l, c, v], ...]`` as an ``(n, 6)`` float64
    array, in input order; ``ValueError`` naming the first bad row (see :func:`row_problem`:
    six values, an integer timestamp, finite numbers — ``None``/NaN/inf refused). One numpy
    pass accepts a clean page; only a page that fails it is walked row by row."""
    if not isinstance(rows, list | tuple):
        raise ValueError(f"expected a list of rows, got {type(rows).__name__}")
    if not rows:
        return np.empty((0, 6), dtype=np.float64)
    try:
        block = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        block = None
    if (
        block is not None
        and block.ndim == 2
        and block.shape[1] == len(CANONICAL_COLUMNS)
        and bool(np.isfinite(block).all())
        and all(type(row[0]) is int for row in rows)
    ):
        return block
    for i, row in enumerate(rows):
        problem = row_problem(row)
        if problem is not None:
            raise ValueError(f"row {i}: {problem}")
    raise ValueError("rows are not a rectangular numeric table")  # pragma: no cover


def row_problem(row: object) -> str | None:
    """What is wrong with one ``[timestamp, open, high, low, close, volume]`` row (as ccxt
    parses them), or ``None``: six values, an integer timestamp, finite int/float prices."""
    names = ("timestamp", *PRICE_COLUMNS)
    if not isinstance(row, list | tuple) or len(row) != len(names):
        size = len(row) if isinstance(row, list | tuple) else type(row).__name__
        return f"expected 6 values, got {size}"
    for name, value in zip(names, row, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} is {value!r:.40}"
        if name == "timestamp" and not isinstance(value, int):
            return f"timestamp is {value!r:.40}, not an integer"
        if isinstance(value, float) and not np.isfinite(value):
            return f"{name} is {value!r}"
    return None


def prepare_bars(frame: pd.DataFrame) -> BarColumns:
    """Validate ``frame`` and return its canonical columns as contiguous numpy arrays, sorted
    by ``ts`` with duplicates resolved *last row wins*. Vectorised: no per-row Python.

    ``ts`` must be an integer dtype without nulls (conformance casts timestamps before
    storage; storage never guesses units). Prices must be numeric; nulls become NaN.
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
    keep = keep_last(ts)
    return {name: np.ascontiguousarray(arr[keep]) for name, arr in columns.items()}


def block_to_frame(block: npt.NDArray[np.float64] | None) -> pd.DataFrame:
    """An ``(n, 6)`` float64 block of ccxt-style rows (``ts`` in epoch **milliseconds**,
    then open, high, low, close, volume) as a frame of canonical columns (``ts`` in epoch
    seconds), rows in block order — duplicates kept, for conformance to count and resolve
    (last wins). ``None`` is no rows. REST pages and archive files both arrive this way, so
    the same bars make the same frame whatever their source."""
    if block is None:
        block = np.empty((0, 6), dtype=np.float64)
    data: dict[str, Any] = {"ts": (block[:, 0] // 1000).astype(np.int64)}
    for i, name in enumerate(CANONICAL_COLUMNS[1:], start=1):
        data[name] = block[:, i].copy()
    return pd.DataFrame(data, columns=list(CANONICAL_COLUMNS))


def frame_from_columns(columns: BarColumns, *, copy: bool = True) -> pd.DataFrame:
    """A canonical frame (RangeIndex, exact dtypes) from per-column arrays. ``copy=False``
    adopts the arrays as they are (only for fresh, writable arrays nobody else holds: the
    frame is the caller's to mutate)."""
    data = {"ts": np.asarray(columns["ts"], dtype=_I8)}
    data.update({n: np.asarray(columns[n], dtype=_F8) for n in PRICE_COLUMNS})
    return pd.DataFrame(data, columns=list(CANONICAL_COLUMNS), copy=copy)


def sorted_columns(columns: BarColumns) -> tuple[BarColumns, bool]:
    """``columns`` in ``ts`` order (``ts`` assumed unique): as they are when already sorted,
    else taken through a stable argsort — radix-fast on the nearly sorted runs a store's
    parallel scan returns. The flag says whether the arrays are fresh copies."""
    ts = columns["ts"]
    if ts.size < 2 or bool(np.all(ts[1:] > ts[:-1])):
        return columns, False
    order = np.argsort(ts, kind="stable")
    return {name: arr[order] for name, arr in columns.items()}, True


def empty_frame() -> pd.DataFrame:
    """A canonical frame with no rows and the right dtypes."""
    cols: BarColumns = {"ts": np.empty(0, dtype=_I8)}
    cols.update({n: np.empty(0, dtype=_F8) for n in PRICE_COLUMNS})
    return frame_from_columns(cols)
