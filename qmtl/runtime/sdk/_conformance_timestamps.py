"""Timestamp parsing for Conformance v2: any ``ts`` column to epoch seconds (private).

The unit of a number is chosen per value by its magnitude (see the table in
:mod:`qmtl.runtime.sdk.conformance`); strings are ISO-8601 (no offset means UTC) or epoch
numbers; datetimes are normalized to UTC. Vectorised: no Python loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Timestamps", "parse_timestamps", "read_as_seconds"]

_I8 = np.dtype(np.int64)
_F8 = np.dtype(np.float64)

_SECONDS_BELOW = 1e11
_MILLIS_BELOW = 1e14
_MICROS_BELOW = 1e17
_INT64_BOUND = 9.2e18  # floats at or beyond this cannot be an int64 timestamp
# An ISO string with a time part ending in an explicit offset ("Z", "+02", "+0200", "+02:00").
_OFFSET_RE = r"^.*?[Tt ].*?(?:[zZ]|[+-]\d{2}(?::?\d{2})?)\s*$"


@dataclass(frozen=True, slots=True)
class Timestamps:
    seconds: np.ndarray[Any, np.dtype[np.int64]]  # epoch seconds, meaningful where ``ok``
    ok: np.ndarray[Any, np.dtype[np.bool_]]  # parsed to a whole second
    unparseable: int  # rows without any usable instant
    cast: bool
    tz: bool


def read_as_seconds(lowest: int, highest: int) -> bool:
    """Whether every integer in ``[lowest, highest]`` is read as epoch **seconds** by the
    magnitude rule (``|v| < 1e11``; larger magnitudes are ms, µs or ns and get rescaled).

    Conformance's fast path passes the first and last ``ts`` of a strictly increasing int64
    column, so one O(1) call answers for the whole column. The threshold is the one
    :func:`_from_integers` applies (float64 represents every integer below it exactly, so
    comparing Python ints here and float magnitudes there agree)."""
    return lowest > -_SECONDS_BELOW and highest < _SECONDS_BELOW


def parse_timestamps(ser: pd.Series[Any]) -> Timestamps:
    """Epoch seconds of every row of ``ts`` (see the module docstring for the rules)."""
    dtype = ser.dtype
    n = len(ser)
    if isinstance(dtype, pd.DatetimeTZDtype):
        naive = ser.dt.tz_convert("UTC").dt.tz_localize(None)
        return _from_datetime64(naive.to_numpy(), tz=True)
    if isinstance(dtype, np.dtype) and dtype.kind == "M":
        return _from_datetime64(ser.to_numpy(), tz=False)
    if pd.api.types.is_integer_dtype(dtype):  # numpy, nullable and arrow ints (not bool)
        if isinstance(dtype, np.dtype):
            raw, valid = ser.to_numpy(), np.ones(n, dtype=bool)
        else:
            valid = ser.notna().to_numpy(dtype=bool)
            raw = np.asarray(ser.fillna(0).to_numpy())
        np_dtype = raw.dtype
        if np_dtype.kind == "u":
            valid &= raw <= np.iinfo(np.int64).max
            raw = np.where(valid, raw, 0)
        return _from_integers(raw.astype(_I8, copy=False), valid, already=np_dtype == _I8)
    if pd.api.types.is_float_dtype(dtype):
        return _from_floats(ser.to_numpy(dtype=_F8, na_value=np.nan))
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_complex_dtype(dtype):
        return Timestamps(np.zeros(n, dtype=_I8), np.zeros(n, dtype=bool), n, True, False)
    if pd.api.types.is_datetime64_any_dtype(dtype):  # e.g. an arrow-backed timestamp
        return parse_timestamps(ser.astype("datetime64[ns, UTC]"))
    return _from_objects(pd.Series(ser.astype(object).to_numpy(), dtype=object))


def _from_datetime64(arr: np.ndarray[Any, Any], *, tz: bool) -> Timestamps:
    unit, count = np.datetime_data(arr.dtype)
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}.get(unit)
    if per_second is None or count != 1:
        arr, per_second = arr.astype("datetime64[ns]"), 10**9
    ticks = arr.view(_I8)
    valid = ~np.isnat(arr)
    seconds, rem = np.divmod(ticks, per_second)
    return Timestamps(seconds, valid & (rem == 0), int(np.count_nonzero(~valid)), cast=True, tz=tz)


def _from_integers(
    raw: np.ndarray[Any, np.dtype[np.int64]],
    valid: np.ndarray[Any, np.dtype[np.bool_]],
    *,
    already: bool,
) -> Timestamps:
    magnitude = np.abs(raw.astype(_F8))
    per_second = np.where(
        magnitude < _SECONDS_BELOW,
        1,
        np.where(
            magnitude < _MILLIS_BELOW, 10**3, np.where(magnitude < _MICROS_BELOW, 10**6, 10**9)
        ),
    ).astype(_I8)
    seconds, rem = np.divmod(raw, per_second)
    rescaled = bool(np.any(valid & (per_second != 1)))
    return Timestamps(
        seconds,
        valid & (rem == 0),
        int(np.count_nonzero(~valid)),
        cast=not already or rescaled,
        tz=False,
    )


def _from_floats(values: np.ndarray[Any, np.dtype[np.float64]]) -> Timestamps:
    finite = np.isfinite(values) & (np.abs(values) < _INT64_BOUND)
    whole = finite & (values == np.trunc(np.where(finite, values, 0.0)))
    stamps = _from_integers(np.where(whole, values, 0.0).astype(_I8), finite, already=False)
    return Timestamps(stamps.seconds, stamps.ok & whole, stamps.unparseable, True, False)


def _from_objects(ser: pd.Series[Any]) -> Timestamps:
    """Object/string ``ts``: numbers first, then ISO-8601 text (offset / no-offset apart)."""
    n = len(ser)
    ser = _strip(ser)
    numeric = pd.to_numeric(ser, errors="coerce", dtype_backend="numpy_nullable")
    is_num = numeric.notna().to_numpy(dtype=bool)
    rest = ~is_num & ser.notna().to_numpy(dtype=bool)
    seconds = np.zeros(n, dtype=_I8)
    ok = np.zeros(n, dtype=bool)
    unparseable = int(np.count_nonzero(~is_num & ~rest))  # nulls
    tz = False
    if is_num.any():
        sub = numeric[is_num]
        if pd.api.types.is_integer_dtype(sub.dtype):
            ints = sub.to_numpy(dtype=_I8)
            stamps = _from_integers(ints, np.ones(len(ints), dtype=bool), already=False)
        else:
            stamps = _from_floats(sub.to_numpy(dtype=_F8, na_value=np.nan))
        seconds[is_num], ok[is_num] = stamps.seconds, stamps.ok
        unparseable += stamps.unparseable
    if rest.any():
        text = ser[rest]
        try:
            has_offset = text.str.contains(_OFFSET_RE, regex=True, na=False).to_numpy(dtype=bool)
        except AttributeError:  # no strings at all (e.g. datetime objects)
            has_offset = np.zeros(len(text), dtype=bool)
        tz = bool(has_offset.any())
        parsed = np.empty(len(text), dtype="datetime64[ns]")
        # pandas applies one string's offset to the naive strings after it, so parse apart.
        for group in (has_offset, ~has_offset):
            if group.any():
                when = pd.to_datetime(text[group], format="ISO8601", utc=True, errors="coerce")
                parsed[group] = when.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        stamps = _from_datetime64(parsed, tz=tz)
        seconds[rest], ok[rest] = stamps.seconds, stamps.ok
        unparseable += stamps.unparseable
    return Timestamps(seconds, ok, unparseable, cast=True, tz=tz)


def _strip(ser: pd.Series[Any]) -> pd.Series[Any]:
    """``ser`` with surrounding spaces removed from its strings (other objects untouched)."""
    try:
        stripped = ser.str.strip()
    except AttributeError:
        return ser
    values = np.where(stripped.notna().to_numpy(dtype=bool), stripped.to_numpy(), ser.to_numpy())
    return pd.Series(values, dtype=object)
