"""Normalizing user-supplied instants to epoch seconds (UTC).

Public functions accept ``int`` epoch seconds, tz-aware ``datetime`` or ISO-8601 strings with
an offset (``2024-01-01T00:00:00Z``). Naive datetimes and offset-less strings are refused:
guessing a timezone is how a backtest silently shifts by hours. A date-only string
(``2024-01-01``) means midnight UTC, as in freqtrade's ``--timerange``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["LAST_INSTANT", "InstantLike", "check_span_bounds", "format_iso", "to_epoch_seconds"]

InstantLike = int | datetime | str

_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def to_epoch_seconds(value: InstantLike, *, name: str = "timestamp") -> int:
    """Epoch seconds for ``value``; fractional seconds are refused, not rounded."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected int seconds, datetime or ISO string, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        return _from_datetime(value, name)
    if isinstance(value, str):
        text = value.strip()
        if _DATE_ONLY.fullmatch(text):
            text += "T00:00:00+00:00"
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not an ISO-8601 timestamp") from None
        return _from_datetime(parsed, name)
    raise ValueError(
        f"{name}: expected int seconds, datetime or ISO string, got {type(value).__name__}"
    )


def _from_datetime(value: datetime, name: str) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: naive datetime {value.isoformat()!r}; give a timezone (UTC)")
    if value.microsecond:
        raise ValueError(f"{name}: {value.isoformat()!r} has fractional seconds")
    return int(value.timestamp())


#: The last instant a range may reach (9999-12-31T23:59:59Z, datetime's last second): bar
#: time runs from the epoch (1970-01-01, the first instant) to here.
LAST_INSTANT = 253_402_300_799


def check_span_bounds(start: int, end: int) -> None:
    """``ValueError`` (one line) unless ``0 <= start <= end <= LAST_INSTANT``: bar time starts
    at the epoch, and a bound past year 9999 is a typo (epoch milliseconds, an extra digit),
    not a request."""
    for name, value in (("start", start), ("end", end)):
        if not 0 <= value <= LAST_INSTANT:
            raise ValueError(
                f"{name} {value} is outside the supported time span "
                f"[{format_iso(0)}, {format_iso(LAST_INSTANT)}] (epoch seconds 0 to "
                f"{LAST_INSTANT}; epoch milliseconds are not seconds)"
            )


def format_iso(epoch_seconds: float) -> str:
    """ISO-8601 UTC with a ``Z`` suffix (millisecond precision when fractional); an instant
    datetime cannot show is written as ``<n> s since the epoch``."""
    try:
        dt = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{epoch_seconds} s since the epoch"
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
