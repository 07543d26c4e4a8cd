"""Coverage math: concrete cases plus hypothesis properties against a per-bar model."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmtl.runtime.sdk.history_coverage import (
    CoverageSegment,
    Range,
    SegmentKind,
    apply_backfill_outcome,
    compute_missing_ranges,
    coverage_ratio,
    merge_ranges,
    split_range,
    subtract_ranges,
)

I = 60
DATA, EMPTY = SegmentKind.DATA, SegmentKind.EMPTY


def bars_of(ranges: list[Range] | list[CoverageSegment], interval: int = I) -> set[int]:
    """Reference model: the explicit set of bar open times (only for small tests)."""
    out: set[int] = set()
    for r in ranges:
        first = -(-r.start // interval) * interval
        out.update(range(first, r.end, interval))
    return out


def test_interior_and_edge_gaps() -> None:
    covered = [CoverageSegment(600, 1200, DATA), CoverageSegment(1800, 2400, EMPTY)]
    assert compute_missing_ranges(covered, 0, 3000, I) == [
        Range(0, 600),
        Range(1200, 1800),
        Range(2400, 3000),
    ]


def test_last_bar_of_a_range_is_covered_half_open() -> None:
    # [0, 600) holds bars 0..540; asking for [0, 600) again must miss nothing, and asking
    # for [0, 660) misses exactly the bar 600.
    covered = [Range(0, 600)]
    assert compute_missing_ranges(covered, 0, 600, I) == []
    assert compute_missing_ranges(covered, 0, 660, I) == [Range(600, 660)]


def test_misaligned_bounds_are_ceil_aligned_which_keeps_the_same_bars() -> None:
    assert Range.aligned(30, 150, I) == Range(60, 180)
    assert compute_missing_ranges([], 30, 150, I) == [Range(60, 180)]
    assert Range.aligned(0, 10, I).bars(I) == 1  # bar 0 opens inside [0, 10)
    assert Range.aligned(10, 50, I).bars(I) == 0  # no bar opens inside [10, 50)


def test_inputs_accept_datetimes_and_iso_strings() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    got = compute_missing_ranges([], start, "2024-01-01T00:05:00Z", I)
    assert got == [Range(1704067200, 1704067500)]
    assert compute_missing_ranges([], "2024-01-01", "2024-01-01T00:01:00+00:00", I) == [
        Range(1704067200, 1704067260)
    ]


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (datetime(2024, 1, 1), 0, "naive datetime"),
        ("yesterday", 0, "is not a date or time; accepted: ISO-8601"),
        ("2024-01-01T00:00:00", 0, "has no timezone"),
        (600, 0, "is after end"),
        (1.5, 60, "got float"),
        (True, 60, "got bool"),
    ],
)
def test_bad_bounds_are_rejected(start: object, end: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_missing_ranges([], start, end, I)  # type: ignore[arg-type]


@pytest.mark.parametrize("interval", [0, -60, 1.5, True])
def test_bad_interval_is_rejected(interval: object) -> None:
    with pytest.raises(ValueError, match="interval must be a positive int"):
        compute_missing_ranges([], 0, 60, interval)  # type: ignore[arg-type]


def test_range_rejects_inverted_and_non_int_bounds() -> None:
    with pytest.raises(ValueError, match="after end"):
        Range(10, 0)
    with pytest.raises(ValueError, match="must be int"):
        Range(0.0, 10)  # type: ignore[arg-type]


def test_coverage_ratio_and_empty_request() -> None:
    assert coverage_ratio([Range(0, 300)], 0, 600, I) == 0.5
    assert coverage_ratio([], 60, 60, I) == 1.0


def test_split_range_into_windows() -> None:
    assert split_range(Range(0, 600), I, 4) == [Range(0, 240), Range(240, 480), Range(480, 600)]
    # Cut points sit on a fixed grid, whatever the start: overlapping requests share batches.
    assert split_range(Range(120, 600), I, 4) == [Range(120, 240), Range(240, 480), Range(480, 600)]
    assert split_range(Range(300, 300), I, 4) == []
    with pytest.raises(ValueError, match="max_bars"):
        split_range(Range(0, 600), I, 0)


def test_subtract_ranges() -> None:
    got = subtract_ranges([Range(0, 600), Range(900, 1200)], [Range(60, 120), Range(500, 1000)])
    assert got == [Range(0, 60), Range(120, 500), Range(1000, 1200)]


def test_apply_outcome_data_empty_and_failure() -> None:
    now = 100 * I
    ledger = apply_backfill_outcome(
        [],
        interval=I,
        data=[Range(0, 600)],
        empty=[Range(600, 1200)],
        source="ccxt",
        fetched_at=now,
    )
    assert [(s.start, s.end, s.kind) for s in ledger] == [(0, 600, DATA), (600, 1200, EMPTY)]
    # A failure adds nothing: the window stays missing.
    assert compute_missing_ranges(ledger, 0, 1800, I) == [Range(1200, 1800)]


def test_apply_outcome_data_overrides_empty_and_coalesces() -> None:
    ledger = [CoverageSegment(0, 600, DATA, "ccxt"), CoverageSegment(600, 1200, EMPTY, "ccxt")]
    out = apply_backfill_outcome(ledger, interval=I, data=[Range(600, 900)], source="ccxt")
    assert [(s.start, s.end, s.kind) for s in out] == [(0, 900, DATA), (900, 1200, EMPTY)]


def test_apply_outcome_empty_never_overrides_data() -> None:
    ledger = [CoverageSegment(0, 600, DATA, "ccxt")]
    out = apply_backfill_outcome(ledger, interval=I, empty=[Range(0, 1200)], source="ccxt")
    assert [(s.start, s.end, s.kind) for s in out] == [(0, 600, DATA), (600, 1200, EMPTY)]


def test_recent_empty_is_not_final() -> None:
    # Fetched at bar 20: bars closing after 18*I are not stable, so EMPTY stops at 18*I.
    out = apply_backfill_outcome(
        [], interval=I, empty=[Range(0, 20 * I)], fetched_at=20 * I + 5, stabilization_bars=2
    )
    assert [(s.start, s.end) for s in out] == [(0, 18 * I)]
    assert compute_missing_ranges(out, 0, 20 * I, I) == [Range(18 * I, 20 * I)]


# --- properties --------------------------------------------------------------------------

bound = st.integers(min_value=-50, max_value=200).map(lambda b: b * 30)  # half-bar steps
ranges_st = st.lists(st.tuples(bound, bound).map(lambda p: Range(min(p), max(p))), max_size=12)
kinds = st.sampled_from([DATA, EMPTY])
segments_st = st.lists(
    st.tuples(bound, bound, kinds).map(lambda p: CoverageSegment(min(p[:2]), max(p[:2]), p[2])),
    max_size=12,
)


@given(segments_st, bound, bound)
def test_missing_plus_covered_equals_requested_and_disjoint(
    covered: list[CoverageSegment], a: int, b: int
) -> None:
    start, end = min(a, b), max(a, b)
    missing = compute_missing_ranges(covered, start, end, I)
    requested = bars_of([Range(start, end)])
    covered_bars = bars_of(covered) & requested
    missing_bars = bars_of(missing)
    assert missing_bars | covered_bars == requested
    assert not missing_bars & covered_bars
    # Output is aligned, sorted, non-empty and coalesced (no two parts touch).
    for r in missing:
        assert r.start % I == 0 and r.end % I == 0 and r.start < r.end
    for left, right in pairwise(missing):
        assert left.end < right.start


@given(ranges_st, st.randoms())
def test_merge_is_idempotent_and_order_independent(ranges: list[Range], rnd: object) -> None:
    merged = merge_ranges(ranges, I)
    assert merge_ranges(merged, I) == merged
    shuffled = list(ranges)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert merge_ranges(shuffled, I) == merged
    assert bars_of(merged) == bars_of(ranges)
    for left, right in pairwise(merged):
        assert left.end < right.start


@given(segments_st, bound, bound)
def test_coverage_ratio_bounds(covered: list[CoverageSegment], a: int, b: int) -> None:
    start, end = min(a, b), max(a, b)
    ratio = coverage_ratio(covered, start, end, I)
    assert 0.0 <= ratio <= 1.0
    assert (ratio == 1.0) == (compute_missing_ranges(covered, start, end, I) == [])


@settings(max_examples=200)
@given(segments_st, ranges_st, ranges_st)
def test_apply_outcome_matches_per_bar_model(
    ledger_in: list[CoverageSegment], data: list[Range], empty: list[Range]
) -> None:
    # Build a consistent (non-overlapping) starting ledger through the function itself.
    ledger = apply_backfill_outcome(
        [],
        interval=I,
        data=[s.range for s in ledger_in if s.kind is DATA],
        empty=[s.range for s in ledger_in if s.kind is EMPTY],
    )
    before_data = bars_of([s for s in ledger if s.kind is DATA])
    before_empty = bars_of([s for s in ledger if s.kind is EMPTY])
    out = apply_backfill_outcome(ledger, interval=I, data=data, empty=empty, source="x")
    data_bars = bars_of([s for s in out if s.kind is DATA])
    empty_bars = bars_of([s for s in out if s.kind is EMPTY])
    expected_data = before_data | bars_of(data)
    assert data_bars == expected_data
    assert empty_bars == (before_empty | bars_of(empty)) - expected_data
    # Segments are sorted, disjoint and aligned.
    for left, right in pairwise(out):
        assert left.end <= right.start


@given(bound, bound, st.integers(min_value=1, max_value=7))
def test_split_range_partitions_on_the_grid(a: int, b: int, max_bars: int) -> None:
    window = Range(min(a, b), max(a, b))
    parts = split_range(window, I, max_bars)
    assert bars_of(parts) == bars_of([window])
    for part in parts:
        assert 0 < part.bars(I) <= max_bars
        cell = max_bars * I  # the grid: multiples of max_bars bars since the epoch
        assert part.start // cell == (part.end - I) // cell


def test_weekly_bars_align_on_mondays() -> None:
    week = 604_800
    monday = 1_704_067_200  # 2024-01-01 was a Monday
    assert Range.aligned(monday - 1, monday + 1, week) == Range(monday, monday + week)
    assert compute_missing_ranges([], monday, monday + 2 * week, week) == [
        Range(monday, monday + 2 * week)
    ]
    parts = split_range(Range(monday, monday + 3 * week), week, 2)
    assert all((p.start - monday) % week == 0 for p in parts)
