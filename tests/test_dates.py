"""Dates as users write them: every accepted form means one instant, and nothing is ever
misread — a millisecond value is never taken for seconds, an 8-digit date never for 1970."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmtl.cli._common import window_bounds
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.timestamps import (
    LAST_INSTANT,
    format_iso,
    format_span,
    parse_as_of,
    parse_instant,
    to_epoch_seconds,
)

instants = st.integers(min_value=0, max_value=LAST_INSTANT)
days = st.dates(min_value=date(1970, 1, 1), max_value=date(9999, 12, 30))


def midnight(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


@given(instants)
def test_iso_and_epoch_seconds_round_trip(t: int) -> None:
    assert parse_instant(format_iso(t)) == t
    text = str(t)
    if len(text) != 8:  # 8 digits is a date
        assert parse_instant(text) == t
        assert parse_instant(t) == t


@given(st.integers(min_value=LAST_INSTANT + 1, max_value=LAST_INSTANT * 1000 + 999))
def test_a_value_too_large_for_seconds_is_milliseconds_rounded_up(ms: int) -> None:
    expected = -(-ms // 1000)
    assert parse_instant(ms) == expected
    assert parse_instant(str(ms)) == expected


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from([60, 3600, 86_400]))
def test_rounding_milliseconds_up_keeps_the_same_bars(offset_ms: int, interval: int) -> None:
    """A bar with open time ``t`` belongs to ``[start_ms, end_ms)`` exactly when it belongs to
    the range the millisecond bounds are read as."""
    start_ms = 1_700_000_000_000 + offset_ms
    end_ms = start_ms + 5 * interval * 1000 + offset_ms % 7
    window = Range.aligned(parse_instant(start_ms), parse_instant(end_ms), interval)
    grid = range(
        (start_ms // 1000 // interval - 1) * interval, (end_ms // 1000 + interval), interval
    )
    meant = [t for t in grid if start_ms <= t * 1000 < end_ms]
    assert list(range(window.start, window.end, interval)) == meant


@given(days)
def test_yyyymmdd_text_is_a_date_and_an_8_digit_int_that_spells_one_is_refused(day: date) -> None:
    text = day.strftime("%Y%m%d")
    assert parse_instant(text) == midnight(day) == parse_instant(day.isoformat())
    with pytest.raises(ValueError, match="ambiguous"):
        parse_instant(int(text))
    assert to_epoch_seconds(int(text)) == int(text)  # lower layers take ints as seconds


@given(days, st.integers(min_value=1, max_value=400))
def test_timerange_means_midnight_to_midnight(first: date, length: int) -> None:
    last = min(first + timedelta(days=length), date(9999, 12, 31))
    if last <= first:
        return
    args = argparse.Namespace(
        start=None, end=None, days=None, open_start=None,
        timerange=f"{first:%Y%m%d}-{last:%Y%m%d}",
    )  # fmt: skip
    assert window_bounds(args) == (midnight(first), midnight(last))


@pytest.mark.parametrize(
    "value",
    ["2024-01-01T00:00", "2024-13-01", "20241301", "yesterday", "1e9", "", 1.5, None],
)
def test_unreadable_values_name_every_accepted_form(value: object) -> None:
    with pytest.raises(ValueError, match="accepted: ISO-8601") as caught:
        parse_instant(value)  # type: ignore[arg-type]
    assert "20240101" in str(caught.value) and "epoch milliseconds" in str(caught.value)


def test_ranges_show_iso_next_to_the_epoch() -> None:
    assert format_span(0, 60) == "[1970-01-01T00:00:00Z, 1970-01-01T00:01:00Z) = [0, 60)"
    assert "1970-01-01T00:01:00Z" in repr(Range(0, 60))
    with pytest.raises(ValueError, match=r"2024-01-02T00:00:00Z \(1704153600\) is after end"):
        Range(1_704_153_600, 1_704_067_200)


@given(st.integers(min_value=LAST_INSTANT + 1, max_value=LAST_INSTANT * 1000 + 999))
def test_as_of_milliseconds_are_kept_exact_as_int_and_as_text(ms: int) -> None:
    assert parse_as_of(ms) == parse_as_of(str(ms)) == ms


@given(instants, st.integers(0, 999))
def test_as_of_text_keeps_its_milliseconds(t: int, ms: int) -> None:
    text = format_iso(t).replace("Z", f".{ms:03d}Z")
    assert parse_as_of(text) == t * 1000 + ms
    if len(str(t)) != 8:  # an 8-digit int is refused as ambiguous, as everywhere
        assert parse_as_of(t) == t * 1000
