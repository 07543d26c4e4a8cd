"""Conformance v2: concrete cases for every flag, timestamp formats, and model-based properties."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS, empty_frame
from qmtl.runtime.sdk.conformance import (
    CONFORMANCE_FLAG_KEYS,
    ConformancePipeline,
    ConformanceReport,
)
from qmtl.runtime.sdk.errors import ConformanceError
from qmtl.runtime.sdk.node_id import WEEK_ORIGIN, alignment_origin

T0 = 1_704_067_200  # 2024-01-01T00:00:00Z, aligned to every interval but 1w
STRICT = ConformancePipeline()
COERCE = ConformancePipeline(dtype_policy="coerce")
EXPECTED_KEYS = {
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
}


def bars(ts: Any, **overrides: Any) -> pd.DataFrame:
    """A valid OHLCV frame for ``ts`` (values derived from the row number)."""
    n = len(ts)
    base = np.arange(n, dtype=np.float64) + 100.0
    data: dict[str, Any] = {
        "ts": ts,
        "open": base,
        "high": base + 2.0,
        "low": base - 2.0,
        "close": base + 1.0,
        "volume": np.full(n, 10.0),
    }
    data.update(overrides)
    return pd.DataFrame(data)


def canonical(ts: list[int]) -> pd.DataFrame:
    return bars(np.asarray(ts, dtype=np.int64))


def nonzero(report: ConformanceReport) -> dict[str, int]:
    return {key: value for key, value in report.flags.items() if value}


def assert_canonical(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(CANONICAL_COLUMNS)
    assert frame["ts"].dtype == np.int64
    assert all(frame[name].dtype == np.float64 for name in CANONICAL_COLUMNS[1:])
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame.index.start == 0
    assert frame.index.step == 1
    assert bool(frame["ts"].is_monotonic_increasing)
    assert frame["ts"].is_unique
    assert not np.isinf(frame[list(CANONICAL_COLUMNS[1:])].to_numpy()).any()


# --- construction -------------------------------------------------------------------------


def test_flag_keys_are_the_contract() -> None:
    assert set(CONFORMANCE_FLAG_KEYS) == EXPECTED_KEYS
    _, report = STRICT.normalize(canonical([T0]), 60)
    assert set(report.flags) == EXPECTED_KEYS
    assert report.version == "v2"
    assert report.to_dict()["flags"] == report.flags


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": "v1"}, "version"),
        ({"dtype_policy": "lenient"}, "dtype_policy"),
        ({"gap_flagging": "yes"}, "gap_flagging"),
    ],
)
def test_pipeline_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConformancePipeline(**kwargs)


@pytest.mark.parametrize("interval", [0, -60, 1.5, True, "60"])
def test_bad_interval_is_value_error(interval: Any) -> None:
    with pytest.raises(ValueError, match="interval"):
        STRICT.normalize(canonical([T0]), interval)


def test_empty_frame_is_canonical() -> None:
    frame = empty_frame()
    assert_canonical(frame)
    assert len(frame) == 0
    out, report = STRICT.normalize(frame, 60)
    pd.testing.assert_frame_equal(out, frame)
    assert nonzero(report) == {}


def test_canonical_input_is_unchanged_and_clean() -> None:
    frame = canonical([T0, T0 + 60, T0 + 120])
    out, report = STRICT.normalize(frame, 60)
    pd.testing.assert_frame_equal(out, frame)
    assert nonzero(report) == {}
    assert report.warnings == []
    assert (report.rows_in, report.rows_out) == (3, 3)


def test_input_is_not_modified() -> None:
    frame = bars([T0 + 60, T0, T0], close=[1.0, math.inf, 2.0])
    before = frame.copy()
    COERCE.normalize(frame, 60)
    pd.testing.assert_frame_equal(frame, before)


# --- one concrete case per flag -----------------------------------------------------------


def test_duplicate_ts_keeps_last_in_input_order() -> None:
    frame = bars([T0 + 60, T0, T0 + 60, T0], close=[1.0, 2.0, 3.0, 4.0])
    out, report = STRICT.normalize(frame, 60)
    assert out["ts"].tolist() == [T0, T0 + 60]
    assert out["close"].tolist() == [4.0, 3.0]
    assert report.flags["duplicate_ts"] == 2
    assert (report.rows_in, report.rows_out) == (4, 2)


def test_gap_counts_missing_bars() -> None:
    frame = canonical([T0, T0 + 60, T0 + 240, T0 + 300, T0 + 600])
    _, report = STRICT.normalize(frame, 60)
    assert report.flags["gap"] == 2 + 4
    _, report = ConformancePipeline(gap_flagging=False).normalize(frame, 60)
    assert report.flags["gap"] == 0


def test_missing_column_strict_raises_naming_columns() -> None:
    frame = canonical([T0]).drop(columns=["volume", "low"])
    with pytest.raises(ConformanceError, match=r"missing column\(s\) 'low', 'volume'"):
        STRICT.normalize(frame, 60)


def test_missing_column_coerce_adds_nan() -> None:
    frame = canonical([T0, T0 + 60]).drop(columns=["volume", "low"])
    out, report = COERCE.normalize(frame, 60)
    assert_canonical(out)
    assert out["volume"].isna().all()
    assert out["low"].isna().all()
    assert report.flags["missing_column"] == 2
    assert any("'low', 'volume'" in text for text in report.warnings)


@pytest.mark.parametrize("policy", ["strict", "coerce"])
def test_missing_ts_always_raises(policy: Any) -> None:
    with pytest.raises(ConformanceError, match="'ts'"):
        ConformancePipeline(dtype_policy=policy).normalize(canonical([T0]).drop(columns="ts"), 60)


def test_ts_index_is_accepted() -> None:
    frame = canonical([T0, T0 + 60]).set_index("ts")
    out, _ = STRICT.normalize(frame, 60)
    pd.testing.assert_frame_equal(out, canonical([T0, T0 + 60]))


def test_dtype_cast_counts_cast_columns() -> None:
    frame = bars(
        np.array([T0, T0 + 60], dtype=np.int64),
        open=np.array([1.5, 2.5], dtype=np.float32),
        high=np.array([3, 4], dtype=np.int64),
        low=["1", " 2.25 "],
        close=pd.array([1.5, None], dtype="Float64"),
    )
    out, report = STRICT.normalize(frame, 60)
    assert_canonical(out)
    assert report.flags["dtype_cast"] == 4
    assert report.flags["dtype_mismatch"] == 0
    assert out["open"].tolist() == [1.5, 2.5]
    assert out["high"].tolist() == [3.0, 4.0]
    assert out["low"].tolist() == [1.0, 2.25]
    assert out["close"].iloc[0] == 1.5
    assert math.isnan(out["close"].iloc[1])


def test_dtype_mismatch_strict_raises_naming_column_and_value() -> None:
    frame = bars([T0, T0 + 60], close=["1.5", "abc"])
    with pytest.raises(ConformanceError) as info:
        STRICT.normalize(frame, 60)
    assert str(info.value) == (
        "strict conformance: column 'close' has 1 value(s) that are not numbers (e.g. 'abc')"
    )


def test_dtype_mismatch_strict_wrong_dtype() -> None:
    frame = bars([T0], volume=[True])
    with pytest.raises(ConformanceError, match="column 'volume' has dtype bool, not a number"):
        STRICT.normalize(frame, 60)


def test_dtype_mismatch_coerce_sets_nan() -> None:
    frame = bars(
        [T0, T0 + 60, T0 + 120],
        close=["1.5", "abc", None],
        open=["nan", "", "2"],
        volume=pd.to_datetime([T0, T0, T0], unit="s"),
    )
    out, report = COERCE.normalize(frame, 60)
    assert_canonical(out)
    assert out["close"].iloc[0] == 1.5
    assert out["close"].iloc[1:].isna().all()
    assert out["open"].iloc[:2].isna().all()  # "nan" and "" are missing, not mismatches
    assert out["volume"].isna().all()
    assert report.flags["dtype_mismatch"] == 2  # close, volume
    assert report.flags["dtype_cast"] == 1  # open
    assert any("'abc'" in text for text in report.warnings)


@pytest.mark.parametrize(
    ("ts", "scale"),
    [
        (np.int32, 1),  # int32 seconds: a width cast
        (np.int64, 1_000),
        (np.int64, 1_000_000),
        (np.int64, 1_000_000_000),
        (np.uint64, 1_000),
        (np.float64, 1),
        (np.float64, 1_000),
    ],
)
def test_numeric_timestamp_units(ts: Any, scale: int) -> None:
    seconds = [T0 + 60, T0] if ts is not np.int32 else [120, 60]
    frame = bars(np.array([s * scale for s in seconds], dtype=ts))
    out, report = STRICT.normalize(frame, 60)
    assert out["ts"].tolist() == sorted(seconds)
    assert report.flags["ts_cast"] == 1
    assert report.flags["ts_timezone_normalized"] == 0
    assert report.flags["invalid_timestamp"] == 0


def test_nullable_and_arrow_timestamps() -> None:
    frame = bars(pd.array([T0 * 1000, None, (T0 + 60) * 1000], dtype="Int64"))
    out, report = STRICT.normalize(frame, 60)
    assert out["ts"].tolist() == [T0, T0 + 60]
    assert report.flags["invalid_timestamp"] == 1
    assert report.flags["ts_cast"] == 1


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_naive_datetime_is_utc(unit: str) -> None:
    stamps = pd.to_datetime([T0, T0 + 60], unit="s").astype(f"datetime64[{unit}]")
    out, report = STRICT.normalize(bars(stamps), 60)
    assert out["ts"].tolist() == [T0, T0 + 60]
    assert nonzero(report) == {"ts_cast": 1}


def test_tz_aware_is_normalized_to_utc() -> None:
    stamps = pd.to_datetime([T0, T0 + 3600], unit="s", utc=True).tz_convert("Asia/Kolkata")
    out, report = STRICT.normalize(bars(stamps), 3600)
    assert out["ts"].tolist() == [T0, T0 + 3600]
    assert report.flags["ts_timezone_normalized"] == 1
    assert report.flags["ts_cast"] == 1


def test_iso_strings_with_and_without_offsets() -> None:
    # An offset must not leak into the naive strings that follow it (a pandas pitfall).
    texts = [
        "2024-01-01T05:31:00+05:30",
        "2024-01-01 00:00:00",
        "2024-01-01T00:02:00Z",
        " 2024-01-01T00:03:00.000Z ",
        "2024-01-01T01:04:00+0100",
        str((T0 + 300) * 1000),
        "2024-01-01",
    ]
    out, report = STRICT.normalize(bars(texts, close=np.arange(7.0)), 60)
    assert out["ts"].tolist() == [T0 + 60 * k for k in range(6)]
    assert out["close"].tolist() == [6.0, 0.0, 2.0, 3.0, 4.0, 5.0]  # 00:00 twice: last wins
    assert report.flags["duplicate_ts"] == 1
    assert report.flags["ts_timezone_normalized"] == 1
    assert report.flags["ts_cast"] == 1
    assert report.flags["invalid_timestamp"] == 0


def test_naive_strings_do_not_flag_timezone() -> None:
    _, report = STRICT.normalize(bars(["2024-01-01 00:00:00", "2024-01-01T00:01"]), 60)
    assert report.flags["ts_timezone_normalized"] == 0


def test_invalid_timestamps_are_dropped_and_counted() -> None:
    frame = bars([str(T0), None, "garbage", "nan", str(T0 + 60), "inf"])
    out, report = STRICT.normalize(frame, 60)
    assert out["ts"].tolist() == [T0, T0 + 60]
    assert report.flags["invalid_timestamp"] == 4
    assert any("4 row(s) with unparseable" in text for text in report.warnings)
    frame = bars(np.array([T0, np.nan, np.inf, T0 + 60.5]))
    out, report = STRICT.normalize(frame, 60)
    assert out["ts"].tolist() == [T0]
    assert report.flags["invalid_timestamp"] == 3


def test_unaligned_and_subsecond_timestamps_are_dropped() -> None:
    frame = bars(np.array([T0 * 1000, T0 * 1000 + 500, (T0 + 30) * 1000, (T0 + 60) * 1000]))
    out, report = STRICT.normalize(frame, 60)
    assert out["ts"].tolist() == [T0, T0 + 60]
    assert report.flags["invalid_timestamp"] == 2
    assert any("2 row(s) whose timestamp is not aligned to 60 s" in t for t in report.warnings)


def test_weekly_bars_align_to_monday() -> None:
    week = 604_800
    assert alignment_origin(week) == WEEK_ORIGIN
    assert alignment_origin(86_400) == 0
    monday = 1_704_067_200  # 2024-01-01 was a Monday
    out, report = STRICT.normalize(canonical([monday, monday + week, monday + 3 * 86_400]), week)
    assert out["ts"].tolist() == [monday, monday + week]
    assert report.flags["invalid_timestamp"] == 1


def test_non_finite_cells_become_nan() -> None:
    frame = bars(
        [T0, T0 + 60, T0 + 60],
        open=[math.inf, 1.0, -math.inf],
        volume=[-math.inf, math.inf, 1.0],
    )
    out, report = STRICT.normalize(frame, 60)
    # Row 2 (two infs) superseded row 1's values; only kept cells are counted.
    assert report.flags["non_finite"] == 3
    assert math.isnan(out["open"].iloc[0])
    assert math.isnan(out["open"].iloc[1])
    assert math.isnan(out["volume"].iloc[0])


def test_invalid_ohlc_rows_are_kept_and_counted() -> None:
    nan = math.nan
    frame = bars(
        [T0 + 60 * k for k in range(7)],
        open=[10.0, 10.0, 10.0, 10.0, nan, 10.0, nan],
        high=[12.0, 9.0, 12.0, 12.0, 12.0, nan, 1.0],
        low=[8.0, 8.0, 11.0, 8.0, 13.0, nan, 2.0],
        close=[11.0, 11.0, 11.0, 11.0, 11.0, 11.0, nan],
        volume=[1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0],
    )
    out, report = STRICT.normalize(frame, 60)
    # rows: ok, high<close, low>open, volume<0, low>close (open NaN), NaN-only ok, high<low
    assert report.flags["invalid_ohlc"] == 5
    pd.testing.assert_frame_equal(out, frame)  # nothing fixed, nothing dropped


def test_extra_columns_dropped_with_warning() -> None:
    frame = canonical([T0]).assign(symbol="BTC/USDT", trades=3)
    out, report = STRICT.normalize(frame, 60)
    assert list(out.columns) == list(CANONICAL_COLUMNS)
    assert "dropped extra column(s) 'symbol', 'trades'" in report.warnings
    assert nonzero(report) == {}


def test_column_order_and_index_are_canonical() -> None:
    frame = canonical([T0 + 60, T0])[["volume", "close", "ts", "low", "high", "open"]]
    frame.index = pd.Index([7, 3])
    out, _ = STRICT.normalize(frame, 60)
    assert_canonical(out)


def test_duplicate_column_names_raise() -> None:
    frame = pd.concat([canonical([T0]), canonical([T0])[["close"]]], axis=1)
    with pytest.raises(ConformanceError, match="duplicate column"):
        COERCE.normalize(frame, 60)


def test_pyarrow_table_input() -> None:
    table = pa.table(
        {
            "ts": pa.array([(T0 + 60) * 1000, None, T0 * 1000], pa.int64()),
            "open": pa.array([1.0, 2.0, 3.0], pa.float32()),
            "high": [4.0, 5.0, 6.0],
            "low": [0.5, 0.5, 0.5],
            "close": [2.0, 2.0, 2.0],
            "volume": pa.array([1, None, 3], pa.int64()),
        }
    )
    out, report = STRICT.normalize(table, 60)
    assert_canonical(out)
    assert out["ts"].tolist() == [T0, T0 + 60]
    assert out["volume"].tolist() == [3.0, 1.0]
    assert report.flags["invalid_timestamp"] == 1
    assert report.flags["dtype_cast"] == 2


def test_pyarrow_timestamp_and_canonical_table() -> None:
    table = pa.table({"ts": pa.array([T0, T0 + 60], pa.timestamp("s", tz="Europe/Paris"))})
    frame = pa.Table.from_pandas(canonical([T0, T0 + 60]).drop(columns="ts"))
    out, report = STRICT.normalize(frame.append_column("ts", table["ts"]), 60)
    assert out["ts"].tolist() == [T0, T0 + 60]
    assert report.flags["ts_timezone_normalized"] == 1
    out2, report2 = STRICT.normalize(pa.Table.from_pandas(out), 60)
    pd.testing.assert_frame_equal(out2, out)
    assert nonzero(report2) == {}


# --- properties against a reference model -------------------------------------------------

VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1.5, math.inf, -math.inf, math.nan]),
)
SLOT = st.one_of(
    st.integers(0, 12).map(lambda k: T0 + 60 * k),  # aligned (many duplicates)
    st.integers(0, 12).map(lambda k: T0 + 60 * k + 7),  # not aligned
    st.none(),  # unparseable
)
ROW = st.tuples(SLOT, VALUES, VALUES, VALUES, VALUES, VALUES)
SCALES = st.sampled_from([1, 1_000, 1_000_000, 1_000_000_000])


def build(rows: list[tuple[Any, ...]], scale: int) -> pd.DataFrame:
    """Input frame; ``ts`` scaled to the unit, nullable when a slot is ``None``."""
    ts = pd.array([None if r[0] is None else r[0] * scale for r in rows], dtype="Int64")
    data = {name: [r[i] for r in rows] for i, name in enumerate(CANONICAL_COLUMNS) if i}
    return pd.DataFrame({"ts": ts, **{k: np.array(v, dtype=np.float64) for k, v in data.items()}})


def model(rows: list[tuple[Any, ...]]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Plain-Python reference: drop invalid, keep last per ts, sort, inf -> NaN."""
    valid = [r for r in rows if r[0] is not None and r[0] % 60 == 0]
    kept: dict[int, tuple[Any, ...]] = {}
    for r in valid:
        kept[r[0]] = r
    ordered = [kept[t] for t in sorted(kept)]
    non_finite = sum(1 for r in ordered for v in r[1:] if math.isinf(v))
    clean = [[r[0], *(math.nan if math.isinf(v) else v for v in r[1:])] for r in ordered]
    frame = pd.DataFrame(clean, columns=list(CANONICAL_COLUMNS)) if clean else empty_frame()
    frame = frame.astype({"ts": np.int64, **dict.fromkeys(CANONICAL_COLUMNS[1:], np.float64)})
    gaps = sum((b - a) // 60 - 1 for a, b in zip(sorted(kept), sorted(kept)[1:], strict=False))
    flags = {
        "invalid_timestamp": len(rows) - len(valid),
        "duplicate_ts": len(valid) - len(kept),
        "non_finite": non_finite,
        "gap": gaps,
    }
    return frame, flags


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(rows=st.lists(ROW, max_size=30), scale=SCALES)
def test_matches_reference_model(rows: list[tuple[Any, ...]], scale: int) -> None:
    out, report = STRICT.normalize(build(rows, scale), 60)
    expected, flags = model(rows)
    pd.testing.assert_frame_equal(out, expected)
    assert_canonical(out)
    for key, value in flags.items():
        assert report.flags[key] == value, key
    assert report.rows_in == report.rows_out + flags["invalid_timestamp"] + flags["duplicate_ts"]
    # Int64 (nullable) seconds are not a cast; other units are rescaled.
    assert report.flags["ts_cast"] == int(scale != 1 and any(r[0] is not None for r in rows))
    assert report.flags["dtype_cast"] == 0
    assert report.flags["missing_column"] == report.flags["dtype_mismatch"] == 0


@FAST
@given(rows=st.lists(ROW, max_size=30), scale=SCALES, policy=st.sampled_from(["strict", "coerce"]))
def test_idempotent_and_never_invents_rows(
    rows: list[tuple[Any, ...]], scale: int, policy: Any
) -> None:
    pipeline = ConformancePipeline(dtype_policy=policy)
    out, first = pipeline.normalize(build(rows, scale), 60)
    assert set(out["ts"]) <= {r[0] for r in rows if r[0] is not None}
    again, second = pipeline.normalize(out, 60)
    pd.testing.assert_frame_equal(again, out)
    recounted = ("gap", "invalid_ohlc")
    assert {k: v for k, v in second.flags.items() if k not in recounted and v} == {}
    assert second.flags["gap"] == first.flags["gap"]
    assert second.flags["invalid_ohlc"] == first.flags["invalid_ohlc"]


@FAST
@given(rows=st.lists(ROW, max_size=20), data=st.data())
def test_row_order_only_matters_for_duplicates(
    rows: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    unique = list({r[0]: r for r in rows}.values())
    shuffled = data.draw(st.permutations(unique))
    a, _ = STRICT.normalize(build(unique, 1), 60)
    b, _ = STRICT.normalize(build(shuffled, 1), 60)
    pd.testing.assert_frame_equal(a, b)


def test_object_column_of_datetimes() -> None:
    stamps = [
        datetime(2024, 1, 1, 5, 31, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 1, 1, 0, 0),  # naive: UTC
        datetime(2024, 1, 1, 0, 2, tzinfo=UTC),
    ]
    out, report = STRICT.normalize(bars(pd.Series(stamps, dtype=object)), 60)
    assert out["ts"].tolist() == [T0, T0 + 60, T0 + 120]
    assert report.flags["ts_cast"] == 1


def test_strict_names_every_mismatched_column() -> None:
    frame = bars([T0], open=["x"], volume=pd.to_timedelta([1], unit="s"))
    with pytest.raises(ConformanceError) as info:
        STRICT.normalize(frame, 60)
    assert "column 'open'" in str(info.value)
    assert "column 'volume' has dtype timedelta64[ns]" in str(info.value)


ISO_STYLES = st.sampled_from(["Z", "+00:00", "naive", "+05:30", "-0800", "space"])


def iso(seconds: int, style: str) -> str:
    offsets = {"+05:30": 330, "-0800": -480}
    shift = offsets.get(style, 0) * 60
    text = pd.Timestamp(seconds + shift, unit="s").strftime("%Y-%m-%dT%H:%M:%S")
    if style == "space":
        return text.replace("T", " ")
    return text if style == "naive" else text + ("Z" if style == "Z" else style)


@FAST
@given(rows=st.lists(st.tuples(SLOT, VALUES), max_size=20), data=st.data())
def test_iso_strings_match_integer_input(
    rows: list[tuple[Any, float]], data: st.DataObject
) -> None:
    full = [(t, v, v, v, v, v) for t, v in rows]
    texts = [None if r[0] is None else iso(r[0], data.draw(ISO_STYLES)) for r in full]
    frame = build(full, 1).assign(ts=pd.Series(texts, dtype=object))
    out, report = STRICT.normalize(frame, 60)
    expected, flags = model(full)
    pd.testing.assert_frame_equal(out, expected)
    assert report.flags["invalid_timestamp"] == flags["invalid_timestamp"]


# --- the fast path for canonical frames is only a shortcut ---------------------------------

PRICES = CANONICAL_COLUMNS[1:]
LAYOUTS = st.sampled_from(["sorted", "shuffled", "duplicates"])
VARIANTS = st.sampled_from(["reorder", "extra", "index"])


def relayout(frame: pd.DataFrame, variant: str, data: st.DataObject) -> pd.DataFrame:
    """The same data in another layout: columns reordered, one extra column, or another
    index (none of which may change what conformance returns)."""
    if variant == "reorder":
        order = data.draw(st.permutations(list(frame.columns)), label="order")
        return frame[order]
    if variant == "extra":
        at = data.draw(st.integers(0, len(frame.columns)), label="at")
        extra = frame.copy()
        extra.insert(at, "exchange", "binance")
        return extra
    index = data.draw(st.sampled_from(["step", "named", "labels"]), label="index")
    moved = frame.copy()
    n = len(moved)
    if index == "step":
        moved.index = pd.RangeIndex(0, 2 * n, 2)
    elif index == "named":
        moved.index = pd.RangeIndex(n, name="row")
    else:
        moved.index = pd.Index(np.arange(n)[::-1] * 3)
    return moved


@FAST
@given(data=st.data(), layout=LAYOUTS, scale=SCALES, variant=VARIANTS)
def test_same_data_in_any_layout_conforms_the_same(
    data: st.DataObject, layout: str, scale: int, variant: str
) -> None:
    slots = st.integers(0, 12)
    if layout == "duplicates":
        ks = data.draw(st.lists(slots, min_size=2, max_size=20), label="ks")
    else:
        ks = sorted(data.draw(st.sets(slots, max_size=13), label="ks"))
        if layout == "shuffled":
            ks = data.draw(st.permutations(ks), label="shuffled")
    values = data.draw(st.lists(st.tuples(*[VALUES] * 5), min_size=len(ks), max_size=len(ks)))
    ts = np.array([(T0 + 60 * k) * scale for k in ks], dtype=np.int64)
    frame = bars(ts, **{n: np.array([v[i] for v in values]) for i, n in enumerate(PRICES)})
    other = relayout(frame, variant, data)
    before = other.copy()

    out, report = STRICT.normalize(frame, 60)
    out2, report2 = STRICT.normalize(other, 60)

    pd.testing.assert_frame_equal(out2, out)
    assert_canonical(out)
    assert report2.flags == report.flags
    assert (report2.rows_in, report2.rows_out) == (report.rows_in, report.rows_out)
    extra = [w for w in report2.warnings if w.startswith("dropped extra column")]
    assert [w for w in report2.warnings if w not in extra] == report.warnings
    assert out["ts"].tolist() == sorted({T0 + 60 * k for k in ks})  # always epoch seconds
    assert report.flags["ts_cast"] == int(scale != 1 and bool(ks))
    pd.testing.assert_frame_equal(other, before)  # the input is never modified


@pytest.mark.parametrize("scale", [1_000, 1_000_000, 1_000_000_000])
def test_canonical_layout_with_subsecond_unit_is_rescaled(scale: int) -> None:
    # Exactly the canonical columns and dtypes, sorted and aligned — but ts is not seconds.
    frame = canonical([(T0 + 60 * k) * scale for k in range(3)])
    out, report = STRICT.normalize(frame, 60)
    assert out["ts"].tolist() == [T0, T0 + 60, T0 + 120]
    assert report.flags["ts_cast"] == 1
    assert report.flags["gap"] == 0
    reordered, report2 = STRICT.normalize(frame[list(CANONICAL_COLUMNS[::-1])], 60)
    pd.testing.assert_frame_equal(reordered, out)
    assert report2.flags == report.flags


def test_seconds_threshold_is_the_unit_rule_at_both_ends() -> None:
    # |ts| < 1e11 is seconds, anything larger is milliseconds or finer: one bar on each side.
    last_seconds = 99_999_999_960  # aligned to 60, just under 1e11
    out, report = STRICT.normalize(canonical([last_seconds - 60, last_seconds]), 60)
    assert out["ts"].tolist() == [last_seconds - 60, last_seconds]
    assert report.flags["ts_cast"] == 0
    out, report = STRICT.normalize(canonical([-last_seconds, 0]), 60)
    assert out["ts"].tolist() == [-last_seconds, 0]
    assert report.flags["ts_cast"] == 0
    out, report = STRICT.normalize(canonical([0, 100_000_020_000]), 60)  # 1e11 + 20 s as ms
    assert out["ts"].tolist() == [0, 100_000_020]
    assert report.flags["ts_cast"] == 1


def test_canonical_frame_with_other_index_gets_a_plain_range_index() -> None:
    frame = canonical([T0, T0 + 60])
    for index in (pd.RangeIndex(0, 4, 2), pd.RangeIndex(2, name="row")):
        out, _ = STRICT.normalize(frame.set_axis(index), 60)
        assert_canonical(out)
        assert out.index.name is None
        pd.testing.assert_frame_equal(out, frame)


def test_genuine_canonical_frame_is_not_copied() -> None:
    """The fast path stays: a canonical frame in seconds is returned over the same arrays."""
    frame = canonical([T0 + 60 * k for k in range(1_000)])
    out, report = STRICT.normalize(frame, 60)
    assert report.flags["ts_cast"] == 0
    for name in CANONICAL_COLUMNS:
        assert np.shares_memory(out[name].to_numpy(), frame[name].to_numpy()), name
