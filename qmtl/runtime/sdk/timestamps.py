"""Reading the instants users write, and writing instants for people (UTC throughout).

Accepted forms, everywhere a range is (the library and the CLI):

- ``int`` epoch **seconds**; tz-aware ``datetime`` (``pandas.Timestamp`` included). Naive
  datetimes are refused: guessing a timezone is how a backtest silently shifts by hours.
- ISO-8601 strings with ``Z`` or an offset (``2024-01-01T00:00:00Z``); a date alone
  (``2024-01-01``) is midnight UTC. A date-time without an offset is refused (ambiguous).
- ``YYYYMMDD`` strings (``"20240101"``, freqtrade's form): midnight UTC.
- Digit strings are epoch seconds, except that a number too large to be epoch seconds (after
  year 9999: 13 digits and more) is epoch **milliseconds** — ccxt's unit — rounded up to the
  second (which keeps the same bars in a half-open range). Beyond milliseconds of year 9999
  it is refused. A millisecond value is never misread as seconds.

User-facing entry points (the provider's ``fetch`` family, the CLI) read bounds with
:func:`parse_instant`, which adds two rules for plain ``int`` values: the millisecond rule
above, and the refusal of an 8-digit ``int`` that is also a valid ``YYYYMMDD`` date
(``20240101`` as seconds is August 1970 — almost certainly not what was meant; pass the string
``"20240101"`` or epoch seconds). Lower layers (storage, coverage math) take ``int`` seconds
as they are, through :func:`to_epoch_seconds`.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta

__all__ = [
    "ACCEPTED_FORMS",
    "LAST_INSTANT",
    "InstantLike",
    "check_span_bounds",
    "format_iso",
    "format_span",
    "parse_as_of",
    "parse_instant",
    "to_epoch_seconds",
]

InstantLike = int | datetime | str

#: The last instant a range may reach (9999-12-31T23:59:59Z, datetime's last second): bar
#: time runs from the epoch (1970-01-01, the first instant) to here.
LAST_INSTANT = 253_402_300_799
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The largest value read as epoch milliseconds (the last millisecond of year 9999).
_LAST_MILLI = LAST_INSTANT * 1000 + 999

#: Named in every refusal, so a user never has to guess what would have worked.
ACCEPTED_FORMS = (
    "accepted: ISO-8601 with Z or an offset (2024-01-01T00:00:00Z), a date (2024-01-01 or "
    "20240101), epoch seconds (1704067200) or epoch milliseconds (1704067200000)"
)

_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_DIGITS = re.compile(r"-?\d+")
#: Longest digit string worth reading: milliseconds of year 9999 have 15 digits, so anything
#: longer is refused without converting it (a 4,000-digit argument is a typo, not an instant).
_MAX_DIGITS = 16


def to_epoch_seconds(value: InstantLike, *, name: str = "timestamp") -> int:
    """Epoch seconds for ``value`` (``int`` taken as seconds, whatever its size); fractional
    seconds in a datetime or ISO string are refused, not rounded."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a date or time, got bool; {ACCEPTED_FORMS}")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        return _from_datetime(value, name)
    if isinstance(value, str):
        return _from_text(value, name)
    raise ValueError(
        f"{name}: expected a date or time, got {type(value).__name__}; {ACCEPTED_FORMS}"
    )


def parse_instant(value: InstantLike, *, name: str = "timestamp") -> int:
    """Epoch seconds for a bound a *user* wrote (module docstring): :func:`to_epoch_seconds`
    plus, for ``int`` values, milliseconds recognised and 8-digit dates refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        if _as_yyyymmdd(value) is not None:
            raise ValueError(
                f"{name}: {value} is ambiguous: epoch seconds ({format_iso(value)}) or the date "
                f"{_as_yyyymmdd(value)}? Pass the string '{value}' for the date, or epoch "
                f"seconds; {ACCEPTED_FORMS}"
            )
        return _from_number(value, name, str(value))
    return to_epoch_seconds(value, name=name)


def parse_as_of(value: InstantLike, *, name: str = "as_of") -> int:
    """Epoch **milliseconds** of a publication instant a user wrote: any form
    :func:`parse_instant` reads, plus fractional seconds (``2024-01-02T00:00:00.123Z``, as
    ``as_of`` values are written; digits beyond milliseconds are truncated)."""
    if isinstance(value, str) and "." in value and not _DIGITS.fullmatch(value.strip()):
        text = value.strip().replace("z", "Z")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a date or time; {ACCEPTED_FORMS}") from None
        value = parsed
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name}: naive datetime {value.isoformat()!r}; give a timezone (UTC)")
        return (value - _EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        digits = value.strip()
        if len(digits) <= _MAX_DIGITS and LAST_INSTANT < int(digits) <= _LAST_MILLI:
            return int(digits)  # epoch milliseconds as text: kept exact, never rounded
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and LAST_INSTANT < value <= _LAST_MILLI
    ):
        return value  # already milliseconds, kept exact
    return parse_instant(value, name=name) * 1000


def _from_text(value: str, name: str) -> int:
    text = value.strip()
    if _DIGITS.fullmatch(text):
        if len(text) > _MAX_DIGITS:
            raise ValueError(f"{name}: {text[:20]}... is not a date or time; {ACCEPTED_FORMS}")
        if len(text) == 8:
            day = _as_yyyymmdd(int(text))
            if day is None:
                raise ValueError(
                    f"{name}: {text!r} is not a date YYYYMMDD; for epoch seconds before 1973 "
                    f"use ISO-8601; {ACCEPTED_FORMS}"
                )
            return _from_datetime(datetime.combine(day, datetime.min.time(), UTC), name)
        return _from_number(int(text), name, text)
    if _DATE_ONLY.fullmatch(text):
        text += "T00:00:00+00:00"
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a date or time; {ACCEPTED_FORMS}") from None
    if parsed.tzinfo is None:
        raise ValueError(
            f"{name}: {value!r} has no timezone (ambiguous); add Z for UTC; {ACCEPTED_FORMS}"
        )
    return _from_datetime(parsed, name)


def _from_number(value: int, name: str, shown: str) -> int:
    """Seconds, or milliseconds when too large to be seconds (rounded up to the second)."""
    if value <= LAST_INSTANT:
        return value
    if value <= _LAST_MILLI:
        return math.ceil(value / 1000) if value % 1000 else value // 1000
    raise ValueError(
        f"{name}: {shown} is after year 9999 even as epoch milliseconds; {ACCEPTED_FORMS}"
    )


def _as_yyyymmdd(value: int) -> date | None:
    """The date an 8-digit number spells as ``YYYYMMDD`` (years 1970-9999), else ``None``."""
    if not 19_700_101 <= value <= 99_991_231:
        return None
    try:
        return date(value // 10_000, value // 100 % 100, value % 100)
    except ValueError:
        return None


def _from_datetime(value: datetime, name: str) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: naive datetime {value.isoformat()!r}; give a timezone (UTC)")
    if value.microsecond:
        raise ValueError(f"{name}: {value.isoformat()!r} has fractional seconds")
    return int(value.timestamp())


def check_span_bounds(start: int, end: int) -> None:
    """``ValueError`` (one line) unless ``0 <= start <= end <= LAST_INSTANT``: bar time starts
    at the epoch, and a bound past year 9999 is a typo (an extra digit), not a request."""
    for name, value in (("start", start), ("end", end)):
        if not 0 <= value <= LAST_INSTANT:
            raise ValueError(
                f"{name} {value} is outside the supported time span "
                f"[{format_iso(0)}, {format_iso(LAST_INSTANT)}] (epoch seconds 0 to "
                f"{LAST_INSTANT})"
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


def format_span(start: int, end: int) -> str:
    """A half-open range for people, ISO-8601 next to the epochs:
    ``[2024-01-01T00:00:00Z, 2024-01-02T00:00:00Z) = [1704067200, 1704153600)``."""
    return f"[{format_iso(start)}, {format_iso(end)}) = [{start}, {end})"
