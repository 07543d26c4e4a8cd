"""The archive plan (pure) against a brute-force model: whole stable UTC months inside the
missing ranges from monthly files, whole stable UTC days of the rest from daily files."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from qmtl.runtime.sdk.archive_plan import (
    ArchiveWindow,
    archive_prefix,
    archived_timeframe,
    plan_archive_windows,
)
from qmtl.runtime.sdk.history_coverage import Range, merge_ranges, subtract_ranges

DAY = 86_400
BASE = int(datetime(2023, 10, 1, tzinfo=UTC).timestamp())  # a leap February is ahead


def _period_start(epoch_s: int, monthly: bool) -> int:
    d = datetime.fromtimestamp(epoch_s, UTC)
    start = datetime(d.year, d.month, 1 if monthly else d.day, tzinfo=UTC)
    return int(start.timestamp())


def model(missing: list[Range], now: int, monthly: bool, daily_delay: int, monthly_delay: int
          ) -> list[ArchiveWindow]:  # fmt: skip
    """Day by day: a day inside a missing range belongs to its month's file when the whole
    month is inside the same range and published, else to its own file when published."""
    plan: list[ArchiveWindow] = []
    for span in merge_ranges(missing, 1):
        day = -(-span.start // DAY) * DAY
        while day + DAY <= span.end:
            month_start = _period_start(day, monthly=True)
            d = datetime.fromtimestamp(month_start, UTC)
            nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
            month = Range(month_start, int(nxt.timestamp()))
            whole = span.start <= month.start and month.end <= span.end
            if monthly and whole and month.end + monthly_delay <= now:
                if not plan or plan[-1].window != month:
                    plan.append(ArchiveWindow("monthly", month))
            elif day + DAY + daily_delay <= now:
                plan.append(ArchiveWindow("daily", Range(day, day + DAY)))
            day += DAY
    return plan


spans = st.lists(
    st.tuples(st.integers(0, 200 * DAY), st.integers(1, 120 * DAY)).map(
        lambda t: Range(BASE + t[0], BASE + t[0] + t[1])
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    missing=spans,
    now_offset=st.integers(0, 400 * DAY),
    monthly=st.booleans(),
    daily_delay=st.sampled_from([0, 3600, DAY]),
    monthly_delay=st.sampled_from([0, DAY, 3 * DAY]),
)
def test_the_plan_is_the_models(
    missing: list[Range], now_offset: int, monthly: bool, daily_delay: int, monthly_delay: int
) -> None:
    now = BASE + now_offset
    plan = plan_archive_windows(missing, now=now, monthly=monthly, daily_delay_s=daily_delay,
                                monthly_delay_s=monthly_delay)  # fmt: skip
    assert plan == model(missing, now, monthly, daily_delay, monthly_delay)
    windows = [w.window for w in plan]
    assert windows == sorted(windows)
    assert all(a.end <= b.start for a, b in itertools.pairwise(windows))
    merged = merge_ranges(missing, 1)
    assert not subtract_ranges(windows, merged)  # never outside what is missing


def test_a_year_is_twelve_monthly_files_and_the_tail_is_days_or_rest() -> None:
    year = Range(int(datetime(2024, 1, 1, tzinfo=UTC).timestamp()),
                 int(datetime(2025, 1, 1, tzinfo=UTC).timestamp()))  # fmt: skip
    plan = plan_archive_windows([year], now=year.end + 10 * DAY)
    assert [w.period for w in plan] == ["monthly"] * 12
    assert plan[1].window.bars(DAY) == 29  # leap February
    # Just under a day after the year ends, December's file is not published yet: its days
    # are, but for the last one.
    early = plan_archive_windows([year], now=year.end + DAY - 1)
    assert [w.period for w in early] == ["monthly"] * 11 + ["daily"] * 30
    # A range starting mid-day: the partial day is left for REST.
    partial = plan_archive_windows([Range(year.start + 3600, year.start + 3 * DAY)],
                                   now=year.end)  # fmt: skip
    assert [w.window for w in partial] == [
        Range(year.start + DAY, year.start + 2 * DAY),
        Range(year.start + 2 * DAY, year.start + 3 * DAY),
    ]


def test_which_exchanges_publish_archives() -> None:
    assert archive_prefix("binance", "spot") == "data/spot"
    assert archive_prefix("binance", "swap") == "data/futures/um"
    assert archive_prefix("binanceusdm", "swap") == "data/futures/um"
    assert archive_prefix("binance", "margin") is None
    assert archive_prefix("okx", "spot") is None
    assert archived_timeframe("1s", "data/spot") and not archived_timeframe("1s", "data/futures/um")
    assert archived_timeframe("1h", "data/futures/um") and not archived_timeframe("1w", "data/spot")
