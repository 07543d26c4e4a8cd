"""Deterministic bars and their vectorised JSON encoding (pure; no server)."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS
from qmtl.runtime.sdk.node_id import TIMEFRAMES, alignment_origin
from qmtl.services.exchange_sim.bars import E8, Bars, format_e8, forming_bar, generate_bars
from qmtl.services.exchange_sim.klines_json import encode_klines, encode_pages

SYMBOLS = ["BTC/USDT", "ETH/USDT", "DOGE/USDT", "XRP/BTC", "A/B"]
T0_MS = 1_700_000_040_000  # a minute boundary


def _minutes(start_ms: int, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 60_000 + start_ms


def _assert_valid(bars: Bars) -> None:
    assert np.all(bars.high >= np.maximum(bars.open, bars.close))
    assert np.all(bars.low <= np.minimum(bars.open, bars.close))
    assert np.all(bars.low > 0)
    assert np.all(bars.volume >= 0)
    assert np.all(bars.taker_base <= bars.volume)
    assert np.all(bars.quote_volume >= 0)
    assert np.all(bars.trades >= 0)
    origin_ms = alignment_origin(bars.interval_ms // 1000) * 1000
    assert np.all((bars.open_time - origin_ms) % bars.interval_ms == 0)


def test_same_inputs_same_bars_and_other_inputs_differ() -> None:
    times = _minutes(T0_MS, 500)
    a = generate_bars(7, "BTC/USDT", 60, times)
    b = generate_bars(7, "BTC/USDT", 60, times.copy())
    assert a.wire_rows() == b.wire_rows()
    assert generate_bars(8, "BTC/USDT", 60, times).wire_rows() != a.wire_rows()
    assert generate_bars(7, "ETH/USDT", 60, times).wire_rows() != a.wire_rows()


def test_random_access_equals_slices_of_a_long_window() -> None:
    long = generate_bars(3, "ETH/USDT", 60, _minutes(T0_MS, 5000))
    window = generate_bars(3, "ETH/USDT", 60, _minutes(T0_MS + 1234 * 60_000, 1000))
    assert window.wire_rows() == long.take(np.arange(1234, 2234)).wire_rows()
    rng = np.random.default_rng(0)
    picks = rng.choice(5000, size=300, replace=False)
    scattered = generate_bars(3, "ETH/USDT", 60, long.open_time[picks])
    assert scattered.wire_rows() == long.take(picks).wire_rows()


def test_bars_chain_open_equals_previous_close() -> None:
    bars = generate_bars(1, "BTC/USDT", 60, _minutes(T0_MS, 2000))
    assert np.array_equal(bars.open[1:], bars.close[:-1])


def test_far_past_and_far_future_windows_are_cheap_and_valid() -> None:
    for start in (0, 60_000 * 10**9):  # the epoch, and year ~3870
        bars = generate_bars(1, "BTC/USDT", 60, _minutes(start, 1000))
        _assert_valid(bars)


def test_unaligned_or_negative_open_times_are_refused() -> None:
    with pytest.raises(ValueError, match="multiples"):
        generate_bars(1, "BTC/USDT", 60, np.array([T0_MS + 1], np.int64))
    with pytest.raises(ValueError, match="multiples"):
        generate_bars(1, "BTC/USDT", 60, np.array([-60_000], np.int64))
    with pytest.raises(ValueError, match="interval"):
        generate_bars(1, "BTC/USDT", 0, np.array([0], np.int64))
    week_ms = 604_800_000
    for times in (
        np.array([0], np.int64),  # a multiple of a week from the epoch: a Thursday
        np.arange(3, dtype=np.int64) * week_ms + 1_700_006_400_000,  # contiguous, Wednesdays
        np.array([345_600_000, 345_600_000 + 3 * week_ms + 1000], np.int64),  # one off by 1 s
    ):
        with pytest.raises(ValueError, match="multiples"):
            generate_bars(1, "BTC/USDT", 604_800, times)
    with pytest.raises(ValueError, match="multiples"):
        generate_bars(1, "BTC/USDT", 1, np.array([T0_MS, T0_MS + 1500], np.int64))  # 1s bars
    assert len(generate_bars(1, "BTC/USDT", 604_800, np.array([345_600_000], np.int64))) == 1


def test_frame_is_canonical_and_equals_what_a_client_parses() -> None:
    times = np.array([T0_MS, T0_MS + 120_000, T0_MS + 60_000], np.int64)
    bars = generate_bars(4, "ETH/USDT", 60, times)
    frame = bars.frame()
    assert list(frame.columns) == list(CANONICAL_COLUMNS)
    assert frame["ts"].dtype == np.int64 and frame["close"].dtype == np.float64
    assert frame["ts"].tolist() == [t // 1000 for t in times.tolist()]  # order kept
    parsed = [[float(v) for v in row[1:6]] for row in json.loads(encode_klines(bars))]
    assert frame[list(CANONICAL_COLUMNS[1:])].to_numpy().tolist() == parsed


def test_generating_1000_bars_is_well_under_a_millisecond() -> None:
    times = _minutes(T0_MS, 1000)
    best = min(_timed(lambda: generate_bars(1, "BTC/USDT", 60, times)) for _ in range(30))
    assert best < 1e-3, f"best of 30: {best * 1e6:.0f} us"


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**63),
    symbol=st.sampled_from(SYMBOLS),
    timeframe=st.sampled_from(sorted(TIMEFRAMES)),
    start_index=st.integers(0, 10**7),
    n=st.integers(1, 300),
)
def test_ohlc_is_valid_for_any_window(
    seed: int, symbol: str, timeframe: str, start_index: int, n: int
) -> None:
    interval = TIMEFRAMES[timeframe]
    origin = alignment_origin(interval)
    times = ((np.arange(n, dtype=np.int64) + start_index) * interval + origin) * 1000
    bars = generate_bars(seed, symbol, interval, times)
    _assert_valid(bars)
    assert np.array_equal(bars.close_time, times + interval * 1000 - 1)
    ohlcv = bars.ohlcv()
    assert ohlcv.shape == (n, 6)
    assert np.array_equal(ohlcv[:, 0], times.astype(np.float64))


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 1000),
    timeframe=st.sampled_from(["1s", "1m", "1h", "1d"]),
    fraction=st.floats(0.0, 0.999999),
)
def test_forming_bar_is_valid_and_converges_to_the_final_bar(
    seed: int, timeframe: str, fraction: float
) -> None:
    interval = TIMEFRAMES[timeframe]
    open_ms = (T0_MS // (interval * 1000)) * interval * 1000
    now_ms = open_ms + int(fraction * interval * 1000)
    live = forming_bar(seed, "BTC/USDT", interval, open_ms, now_ms)
    final = generate_bars(seed, "BTC/USDT", interval, np.array([open_ms], np.int64))
    _assert_valid(live)
    assert live.open[0] == final.open[0]
    assert live.volume[0] <= final.volume[0]
    closed = forming_bar(seed, "BTC/USDT", interval, open_ms, open_ms + interval * 1000)
    assert closed.wire_rows() == final.wire_rows()


def test_forming_bar_moves_with_time_and_refuses_the_future() -> None:
    open_ms = T0_MS
    closes = {
        int(forming_bar(1, "BTC/USDT", 60, open_ms, open_ms + s * 1000).close[0])
        for s in range(0, 60, 5)
    }
    assert len(closes) > 3
    volumes = [
        int(forming_bar(1, "BTC/USDT", 60, open_ms, open_ms + s * 1000).volume[0])
        for s in range(1, 60, 5)
    ]
    assert volumes == sorted(volumes)
    with pytest.raises(ValueError, match="not opened"):
        forming_bar(1, "BTC/USDT", 60, open_ms, open_ms - 1)


def test_format_e8() -> None:
    assert format_e8(0) == "0.00000000"
    assert format_e8(1) == "0.00000001"
    assert format_e8(123 * E8 + 45_000_000) == "123.45000000"


def test_encoded_page_is_binance_rows() -> None:
    bars = generate_bars(1, "BTC/USDT", 60, _minutes(T0_MS, 3))
    rows = json.loads(encode_klines(bars))
    assert len(rows) == 3
    first = rows[0]
    assert len(first) == 12
    assert first[0] == T0_MS and first[6] == T0_MS + 59_999
    assert all(isinstance(first[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10, 11))
    assert isinstance(first[8], int) and first[11] == "0"
    assert all(len(first[i].split(".")[1]) == 8 for i in (1, 2, 3, 4, 5))
    assert encode_klines(bars.take(np.arange(0))) == b"[]"


_values = st.integers(0, 2**62)


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(st.tuples(*([_values] * 10)), min_size=1, max_size=40),
    interval_ms=st.sampled_from([1000, 60_000, 86_400_000]),
)
def test_vectorised_encoder_matches_the_reference_for_any_values(
    data: list[tuple[int, ...]], interval_ms: int
) -> None:
    cols = np.array(data, dtype=np.int64).T
    open_time = cols[0] // interval_ms * interval_ms % (2**62 - interval_ms)
    bars = Bars(interval_ms, open_time, *cols[1:])
    assert json.loads(encode_klines(bars)) == bars.wire_rows()


@pytest.mark.parametrize(
    "value", [0, 1, 9_999, 10_000, 99_999_999, E8, 999 * E8, 1000 * E8, 9999 * E8, 10**18]
)
def test_encoder_padding_edges(value: int) -> None:
    column = np.array([value, 1, value], np.int64)
    bars = Bars(60_000, np.array([0, 60_000, 120_000], np.int64), *([column] * 9))
    assert json.loads(encode_klines(bars)) == bars.wire_rows()


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(st.tuples(*([_values] * 10)), min_size=0, max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=5),
)
def test_pages_encoded_together_equal_pages_encoded_alone(
    data: list[tuple[int, ...]], cuts: list[int]
) -> None:
    cols = np.array(data, dtype=np.int64).reshape(-1, 10).T
    open_time = cols[0] // 60_000 * 60_000 % (2**62 - 60_000)
    bars = Bars(60_000, open_time, *cols[1:])
    bounds = sorted({0, len(bars), *(c for c in cuts if c <= len(bars))})
    sizes = [b - a for a, b in itertools.pairwise(bounds)] or [0]
    if cuts and cuts[0] == 0:
        sizes = [0, *sizes, 0]  # empty pages anywhere
    bodies = encode_pages(bars, sizes)
    first = 0
    for size, body in zip(sizes, bodies, strict=True):
        page = bars.take(np.arange(first, first + size))
        assert body == encode_klines(page)  # byte for byte: widths are per page
        assert json.loads(body) == page.wire_rows()
        first += size
    with pytest.raises(ValueError, match="do not split"):
        encode_pages(bars, [len(bars) + 1])


def test_generated_pages_in_one_pass_equal_pages_generated_alone() -> None:
    starts = [T0_MS, T0_MS + 1000 * 60_000, T0_MS - 5000 * 60_000, T0_MS + 7 * 60_000]
    pages = [_minutes(s, n) for s, n in zip(starts, [1000, 500, 3, 40], strict=True)]
    together = generate_bars(2, "ETH/USDT", 60, np.concatenate(pages))
    bodies = encode_pages(together, [len(p) for p in pages])
    for times, body in zip(pages, bodies, strict=True):
        assert body == encode_klines(generate_bars(2, "ETH/USDT", 60, times))


def test_a_huge_page_is_encoded_like_smaller_ones() -> None:
    bars = generate_bars(4, "BTC/USDT", 60, _minutes(T0_MS, 20_000))  # past the kept scratch
    whole = json.loads(encode_klines(bars))
    parts = [json.loads(body) for body in encode_pages(bars, [5_000] * 4)]
    assert whole == [row for part in parts for row in part]
    assert whole[-1] == bars.take(np.array([19_999])).wire_rows()[0]
