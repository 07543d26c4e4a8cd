"""Conformance v2: turn any OHLCV-ish frame into the canonical frame, and say what changed.

The canonical frame is the one of :mod:`qmtl.runtime.sdk.bars` (its column names,
*last row wins* duplicate rule and grid alignment are used here, never copied): the columns
``ts, open, high, low, close, volume`` in that order; ``ts`` is the bar open time as
``int64`` epoch **seconds** UTC, aligned to the interval; prices and volume are ``float64``;
rows are sorted by ``ts`` with unique ``ts`` and a ``RangeIndex``.
:meth:`ConformancePipeline.normalize` is pure and vectorised (numpy/pandas, no per-row Python
loop) and never invents a row: every output row is an input row.

Decisions (the contract of this module):

- **Timestamps.** ``ts`` may be ``int`` epoch seconds / ms / µs / ns, floats, ``datetime64``
  (any unit; naive means UTC), tz-aware ``datetime64`` (converted to UTC), ISO-8601 strings
  (a string without offset means UTC; numeric strings are epoch numbers) or a pyarrow
  timestamp. The unit of a number is chosen **per value** by its magnitude ``|v|``:
  ``< 1e11`` seconds, ``< 1e14`` milliseconds, ``< 1e17`` microseconds, else nanoseconds
  (each threshold is year 5138 in the smaller unit and 1973 in the larger one).
- **Invalid timestamps** (null, NaN, ±inf, unparseable text, sub-second fractions, or not
  aligned to the interval) drop their row; each dropped row counts once in
  ``invalid_timestamp`` and a warning says how many were unparseable and how many
  unaligned. Alignment means ``(ts - alignment_origin(interval)) % interval == 0`` with
  :func:`~qmtl.runtime.sdk.node_id.alignment_origin`: 0, except for one week (604800 s),
  whose bars open on Monday 00:00 UTC as on every major exchange (1970-01-05, 345600).
- **Duplicates**: of the rows sharing a ``ts`` the **last in input order** is kept;
  ``duplicate_ts`` counts the rows removed. Hence ``rows_in == rows_out + invalid_timestamp
  + duplicate_ts``.
- **Value columns** are inspected only on the kept rows: ``non_finite`` counts the ±inf
  cells of the output (replaced by NaN) and unparseable cells are those of kept rows.
- **Flag units**: ``ts_cast``, ``ts_timezone_normalized`` count columns (0 or 1);
  ``missing_column``, ``dtype_cast``, ``dtype_mismatch`` count value columns; the other flags
  count rows (``gap``: missing bars; ``non_finite``: cells). ``ts_cast`` is 1 unless ``ts``
  already was int64 epoch seconds; ``ts_timezone_normalized`` is 1 when ``ts`` carried
  timezone information (a tz-aware dtype, or a string with an explicit offset such as
  ``Z`` or ``+02:00``).
- **dtypes**: float64 stays; other floats, integers, nullable numerics and numeric strings
  are cast (``dtype_cast``; integers beyond 2**53 round, with a warning). Text that is not a
  number, booleans, datetimes and other dtypes are a ``dtype_mismatch``: ``strict`` raises
  :class:`ConformanceError` naming the column, ``coerce`` flags it and sets the bad cells
  (every cell for a wrong dtype) to NaN. Null, ``""`` and ``"nan"`` cells are missing values,
  not mismatches.
- **Columns**: a missing value column raises under ``strict`` and is added as NaN (flagged)
  under ``coerce``. A missing ``ts`` raises under both policies (no row could be placed);
  an index named ``ts`` is used when there is no ``ts`` column. Extra columns are dropped
  with a warning. Duplicate canonical column names raise.
- **invalid_ohlc** counts rows with ``high < max(open, close)``, ``low > min(open, close)``,
  ``high < low`` or ``volume < 0``, comparing only the values that are present (NaN never
  violates). Rows are kept and never fixed.
- **gap** (when ``gap_flagging``) is the number of missing bars between consecutive output
  rows, ``sum(diff / interval - 1)``; like ``invalid_ohlc`` it describes the data, so
  normalizing an already canonical frame reports it again while every other flag is 0.
- **Layout does not matter**: the same data gives the same frame and the same flags whatever
  the column order, extra columns (which only add their warning) or index. A frame that is
  canonical already (the hot store's) is recognised in O(n) vectorised checks and returned
  without copying; that shortcut applies the same rules, so e.g. an int64 ``ts`` in epoch
  milliseconds is rescaled even when the columns and dtypes are exactly canonical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from qmtl.runtime.sdk._conformance_timestamps import parse_timestamps, read_as_seconds
from qmtl.runtime.sdk.bars import (
    CANONICAL_COLUMNS,
    PRICE_COLUMNS,
    keep_last_with_keys,
    misaligned,
)
from qmtl.runtime.sdk.errors import ConformanceError

__all__ = [
    "CONFORMANCE_FLAG_KEYS",
    "CONFORMANCE_VERSION",
    "DTYPE_POLICIES",
    "ConformancePipeline",
    "ConformanceReport",
    "DtypePolicy",
]

CONFORMANCE_VERSION: Final = "v2"
#: The stable flag vocabulary; every report carries all of them.
CONFORMANCE_FLAG_KEYS: Final[tuple[str, ...]] = (
    "duplicate_ts",
    "gap",
    "missing_column",
    "dtype_cast",
    "dtype_mismatch",
    "ts_cast",
    "ts_timezone_normalized",
    "non_finite",
    "invalid_timestamp",
    "invalid_ohlc",
)
#: The flags that only *describe* the bars (a gap, an OHLC oddity kept as is); every other
#: flag means conformance changed what came in.
_DESCRIPTIVE_FLAGS: Final = frozenset({"gap", "invalid_ohlc"})
DtypePolicy = Literal["strict", "coerce"]
DTYPE_POLICIES: Final[tuple[str, ...]] = ("strict", "coerce")

_F8 = np.dtype(np.float64)
_I8 = np.dtype(np.int64)
_EXACT_INT = 2**53
_ARROW_INT_MAPPER: dict[Any, Any] = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
}


@dataclass(frozen=True, slots=True)
class ConformanceReport:
    """What :meth:`ConformancePipeline.normalize` changed; ``flags`` has every flag key."""

    flags: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    version: str = CONFORMANCE_VERSION
    rows_in: int = 0
    rows_out: int = 0

    @property
    def unchanged(self) -> bool:
        """Whether the bars came out exactly as they went in (no row dropped, no value or
        timestamp altered) — gaps and OHLC oddities are only described."""
        return self.rows_in == self.rows_out and not any(
            count for flag, count in self.flags.items() if flag not in _DESCRIPTIVE_FLAGS
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (as stored in manifests)."""
        return {
            "version": self.version,
            "flags": dict(self.flags),
            "warnings": list(self.warnings),
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
        }


@dataclass(frozen=True, slots=True)
class _Values:
    data: np.ndarray[Any, np.dtype[np.float64]]
    cast: bool = False
    bad_cells: int = 0  # > 0, or ``wrong_dtype``, means dtype_mismatch
    wrong_dtype: str | None = None
    example: str | None = None
    warning: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ConformancePipeline:
    """Conformance v2 (module docstring); immutable and safe to share between threads."""

    version: str = CONFORMANCE_VERSION
    """Version of the conformance rules; only ``v2``."""
    dtype_policy: DtypePolicy = "strict"
    """``strict``: a missing column or a value of the wrong type fails the fetch;
    ``coerce``: it is counted in the conformance report and the bad values become NaN."""
    gap_flagging: bool = True
    """Count the missing bars between consecutive rows in the conformance report."""

    def __post_init__(self) -> None:
        if self.version != CONFORMANCE_VERSION:
            raise ValueError(
                f"conformance version {self.version!r} is not supported (expected 'v2')"
            )
        if self.dtype_policy not in DTYPE_POLICIES:
            raise ValueError(
                f"dtype_policy must be one of {', '.join(DTYPE_POLICIES)}, "
                f"got {self.dtype_policy!r}"
            )
        if not isinstance(self.gap_flagging, bool):
            raise ValueError(f"gap_flagging must be a bool, got {self.gap_flagging!r}")

    def normalize(
        self, df: pd.DataFrame | pa.Table, interval: int
    ) -> tuple[pd.DataFrame, ConformanceReport]:
        """Conform ``df`` (pandas or pyarrow) for bars of ``interval`` seconds.

        Returns a new canonical frame and its report; the input is never modified. Raises
        :class:`ConformanceError` per the dtype policy and ``ValueError`` for a bad interval.
        """
        if isinstance(interval, bool) or not isinstance(interval, int | np.integer):
            raise ValueError(f"interval must be an int number of seconds, got {interval!r}")
        interval = int(interval)
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        frame = _as_pandas(df)
        fast = self._already_canonical(frame, interval)
        if fast is not None:
            return fast
        flags = dict.fromkeys(CONFORMANCE_FLAG_KEYS, 0)
        warnings: list[str] = []
        strict = self.dtype_policy == "strict"

        missing = [name for name in PRICE_COLUMNS if name not in frame.columns]
        extra = [str(name) for name in frame.columns if name not in CANONICAL_COLUMNS]
        if missing and strict:
            raise ConformanceError(f"strict conformance: missing column(s) {_names(missing)}")
        if extra:
            warnings.append(f"dropped extra column(s) {_names(extra)}")
        if missing:
            flags["missing_column"] = len(missing)
            warnings.append(f"added missing column(s) {_names(missing)} as NaN")

        rows_in = len(frame)
        stamps = parse_timestamps(frame["ts"])
        flags["ts_cast"] = int(stamps.cast)
        flags["ts_timezone_normalized"] = int(stamps.tz)
        ok = stamps.ok & ~misaligned(stamps.seconds, interval)
        unaligned = int(np.count_nonzero(~ok)) - stamps.unparseable
        flags["invalid_timestamp"] = stamps.unparseable + unaligned
        if stamps.unparseable:
            warnings.append(f"dropped {stamps.unparseable} row(s) with unparseable timestamps")
        if unaligned:
            warnings.append(
                f"dropped {unaligned} row(s) whose timestamp is not aligned to {interval} s"
            )

        candidates = np.flatnonzero(ok)  # input positions, last row per ts wins (bars.py)
        kept, ts = keep_last_with_keys(stamps.seconds[candidates])
        rows = candidates[kept]
        flags["duplicate_ts"] = int(np.count_nonzero(ok)) - len(rows)

        # One (5, n) float64 block: the frame is built around it without consolidation copies.
        block = np.empty((len(PRICE_COLUMNS), len(rows)), dtype=_F8)
        mismatches: list[str] = []
        for i, name in enumerate(PRICE_COLUMNS):
            if name in missing:
                block[i] = np.nan
                continue
            values = _to_float64(frame[name], rows)
            if values.wrong_dtype is not None or values.bad_cells:
                mismatches.append(_describe_mismatch(name, values))
            elif values.cast:
                flags["dtype_cast"] += 1
            if values.warning:
                warnings.append(f"column {name!r}: {values.warning}")
            block[i] = values.data
            inf = np.isinf(block[i])
            flags["non_finite"] += int(np.count_nonzero(inf))
            block[i][inf] = np.nan
        if mismatches and strict:
            raise ConformanceError("strict conformance: " + "; ".join(mismatches))
        if mismatches:
            flags["dtype_mismatch"] = len(mismatches)
            warnings.extend(f"set to NaN: {text}" for text in mismatches)
        if flags["non_finite"]:
            warnings.append(f"replaced {flags['non_finite']} ±inf value(s) by NaN")

        flags["invalid_ohlc"] = _count_invalid_ohlc(block)
        if self.gap_flagging and len(ts) > 1:
            flags["gap"] = int(np.sum(np.diff(ts) // interval - 1))
        report = ConformanceReport(
            flags=flags,
            warnings=warnings,
            version=self.version,
            rows_in=rows_in,
            rows_out=len(ts),
        )
        out = pd.DataFrame(block.T, columns=list(PRICE_COLUMNS), copy=False)
        out.insert(0, "ts", ts)
        return out, report

    def _already_canonical(
        self, frame: pd.DataFrame, interval: int
    ) -> tuple[pd.DataFrame, ConformanceReport] | None:
        """The report for a frame that is canonical already (what the hot store returns),
        in a few vectorised passes and without copying; ``None`` when anything needs work.

        This is only a shortcut: for every frame it accepts, the result equals what the full
        path returns for the same data in any column order (the same output, the same
        flags). So it accepts a frame only if the full path would change nothing: canonical
        columns, dtypes and index, ``ts`` strictly increasing, aligned, and **read as epoch
        seconds** by the per-value unit rule (an int64 ``ts`` in milliseconds is rescaled
        by the full path, so it must not pass here). Because ``ts`` is checked sorted
        first, its first and last values bound all the others: the unit check is O(1).

        The returned frame is a new object over the *same* column arrays: treat it, like the
        input, as read-only."""
        if list(frame.columns) != list(CANONICAL_COLUMNS) or frame.columns.name is not None:
            return None
        if frame["ts"].dtype != _I8 or any(frame[c].dtype != _F8 for c in PRICE_COLUMNS):
            return None
        ts = frame["ts"].to_numpy()
        if len(ts) > 1 and not bool(np.all(ts[1:] > ts[:-1])):
            return None
        if len(ts) and not read_as_seconds(int(ts[0]), int(ts[-1])):
            return None
        if bool(misaligned(ts, interval).any()):
            return None
        columns = [frame[c].to_numpy() for c in PRICE_COLUMNS]
        if any(bool(np.isinf(col).any()) for col in columns):
            return None
        flags = dict.fromkeys(CONFORMANCE_FLAG_KEYS, 0)
        flags["invalid_ohlc"] = _count_invalid_ohlc(columns)
        if self.gap_flagging and len(ts) > 1:
            flags["gap"] = int((ts[-1] - ts[0]) // interval + 1 - len(ts))
        report = ConformanceReport(
            flags=flags, warnings=[], version=self.version, rows_in=len(ts), rows_out=len(ts)
        )
        index = frame.index
        plain = (
            isinstance(index, pd.RangeIndex)
            and index.start == 0
            and index.step == 1
            and index.name is None
        )
        out = frame if plain else frame.reset_index(drop=True)
        return pd.DataFrame(out, copy=False), report


def _names(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _as_pandas(df: pd.DataFrame | pa.Table) -> pd.DataFrame:
    if isinstance(df, pa.Table):
        # Integers become nullable pandas ints so that null never turns ns into float64.
        df = df.to_pandas(types_mapper=_ARROW_INT_MAPPER.get)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame or pyarrow Table, got {type(df).__name__}")
    if "ts" not in df.columns and df.index.name == "ts":
        df = df.reset_index()
    if "ts" not in df.columns:
        raise ConformanceError("conformance: missing column 'ts' (no row can be placed)")
    dup = [str(c) for c in df.columns[df.columns.duplicated()] if c in CANONICAL_COLUMNS]
    if dup:
        raise ConformanceError(f"conformance: duplicate column name(s) {_names(dup)}")
    return df


def _to_float64(ser: pd.Series[Any], rows: np.ndarray[Any, np.dtype[np.intp]]) -> _Values:
    """The kept ``rows`` of one value column as float64 (see the module docstring)."""
    dtype = ser.dtype
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        return _Values(ser.to_numpy()[rows].astype(_F8, copy=False), cast=dtype != _F8)
    if pd.api.types.is_bool_dtype(dtype):
        return _wrong_dtype(len(rows), dtype)
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        sub = ser.iloc[rows]
        data = sub.to_numpy(dtype=_F8, na_value=np.nan)
        warning = None
        if pd.api.types.is_integer_dtype(dtype) and bool(np.any(np.abs(data) > _EXACT_INT)):
            warning = "integers beyond 2**53 were rounded to float64"
        return _Values(data, cast=True, warning=warning)
    if (
        pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
        or isinstance(dtype, pd.CategoricalDtype)
    ):
        return _from_text(pd.Series(ser.iloc[rows].astype(object).to_numpy(), dtype=object))
    return _wrong_dtype(len(rows), dtype)


def _wrong_dtype(n: int, dtype: Any) -> _Values:
    return _Values(np.full(n, np.nan), wrong_dtype=str(dtype))


def _from_text(ser: pd.Series[Any]) -> _Values:
    parsed = pd.to_numeric(ser, errors="coerce").to_numpy(dtype=_F8, na_value=np.nan)
    failed = np.isnan(parsed) & ser.notna().to_numpy(dtype=bool)
    if failed.any():  # "", "nan" (any case, any spaces) are missing values, not failures
        words = ser[failed].astype(str).str.strip().str.lower()
        failed[np.flatnonzero(failed)[words.isin(["", "nan"]).to_numpy(dtype=bool)]] = False
    bad = int(np.count_nonzero(failed))
    example = repr(ser[failed].iloc[0])[:40] if bad else None
    return _Values(parsed, cast=True, bad_cells=bad, example=example)


def _describe_mismatch(name: str, values: _Values) -> str:
    if values.wrong_dtype is not None:
        return f"column {name!r} has dtype {values.wrong_dtype}, not a number"
    return (
        f"column {name!r} has {values.bad_cells} value(s) that are not numbers "
        f"(e.g. {values.example})"
    )


def _count_invalid_ohlc(
    block: np.ndarray[Any, np.dtype[np.float64]] | list[np.ndarray[Any, np.dtype[np.float64]]],
) -> int:
    o, h, lo, c, v = block
    with np.errstate(invalid="ignore"):
        top = np.fmax(o, c)  # NaN only when both are NaN; comparisons with NaN are False
        bottom = np.fmin(o, c)
        bad = (h < top) | (lo > bottom) | (h < lo) | (v < 0)
    return int(np.count_nonzero(bad))
