"""Token-bucket arithmetic: tables of cases, the window-spend invariant against a reference
model, and the usage-header clamp."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmtl.runtime.io.token_bucket import (
    BucketState,
    penalize,
    reserve,
    sync,
    usage_window_rest_ms,
)
from tests.bucket_cases import CASES as SHARED_CASES
from tests.bucket_cases import NOW, Case, absolute, run_pure

RATE = 0.01  # tokens per ms = 10 tokens/s = 600/min
CAP = 5.0

# (state, now_ms, cost) -> (tokens, updated_ms, due_ms)
CASES = [
    (None, 1000.0, 1.0, (4.0, 1000.0, 1000.0)),
    (BucketState(0.0, 1000.0), 1000.0, 1.0, (-1.0, 1000.0, 1100.0)),
    (BucketState(-1.0, 1000.0), 1000.0, 2.0, (-3.0, 1000.0, 1300.0)),
    (BucketState(0.0, 1000.0), 2000.0, 1.0, (4.0, 2000.0, 2000.0)),  # refill capped at CAP
    (BucketState(1.0, 2000.0), 1500.0, 1.0, (0.0, 2000.0, 2000.0)),  # skew: time never back
    (BucketState(-2.0, 5000.0, 5000.0), 1000.0, 1.0, (-3.0, 5000.0, 5300.0)),  # penalty
    (BucketState(3.0, 0.0), 100.0, 0.0, (4.0, 100.0, 100.0)),
]


@pytest.mark.parametrize(("state", "now", "cost", "expected"), CASES)
def test_reserve_table(
    state: BucketState | None, now: float, cost: float, expected: tuple[float, float, float]
) -> None:
    got = reserve(state, now, cost, rate_per_ms=RATE, capacity=CAP)
    assert (got.state.tokens, got.state.updated_ms, got.due_ms) == pytest.approx(expected)


def test_penalize_drains_and_defers_refill() -> None:
    state = penalize(BucketState(3.0, 0.0), 100.0, 5100.0, rate_per_ms=RATE, capacity=CAP)
    assert state == BucketState(0.0, 5100.0, 5100.0)
    # Nothing new is due before the pause ends, and the bucket is empty then.
    r = reserve(state, 200.0, 1.0, rate_per_ms=RATE, capacity=CAP)
    assert r.due_ms == pytest.approx(5200.0)
    # A shorter later penalty does not shorten the first one; debt survives.
    again = penalize(r.state, 300.0, 1000.0, rate_per_ms=RATE, capacity=CAP)
    assert again.updated_ms == 5100.0 and again.not_before_ms == 5100.0 and again.tokens == -1.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="cost 6"):
        reserve(None, 0, 6, rate_per_ms=RATE, capacity=CAP)
    with pytest.raises(ValueError, match="must be > 0"):
        reserve(None, 0, 1, rate_per_ms=0, capacity=CAP)


@pytest.mark.parametrize("case", SHARED_CASES, ids=lambda c: c.name)
def test_shared_table(case: Case) -> None:
    """The table the Lua script is also checked on (tests/bucket_cases.py)."""
    got = run_pure(absolute(case, NOW), NOW, case.op, case.args)
    expected = (case.expected[0], *(0.0 if x is None else NOW + x for x in case.expected[1:]))
    assert got == pytest.approx(expected, abs=1e-6)


def test_usage_window_rest() -> None:
    assert usage_window_rest_ms(60_000 * 5 + 20_000, 60_000) == 40_000
    assert usage_window_rest_ms(60_000 * 5 + 500, 60_000) is None  # within the grace
    assert usage_window_rest_ms(60_000 * 5 + 500, 60_000, grace_ms=0) == 59_500
    stale = usage_window_rest_ms(60_000 * 5 + 3000, 60_000, age_ms=5000)
    assert stale is None  # observed in the previous window
    with pytest.raises(ValueError, match="window_ms"):
        usage_window_rest_ms(0, 0)


trace = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2000, allow_nan=False),  # time advance, ms
        st.integers(min_value=0, max_value=5),  # cost
        st.sampled_from(["take", "take", "take", "penalty", "sync"]),
        st.floats(min_value=-10, max_value=50, allow_nan=False),  # usage report: allowance
    ),
    max_size=80,
)


@given(trace, st.floats(min_value=100, max_value=3000))
def test_spend_in_any_window_never_exceeds_rate_times_window_plus_burst(
    events: list[tuple[float, int, str, float]], window_ms: float
) -> None:
    """Reference model: record (issue time, cost) and check every window starting at an
    issue instant (the worst case for a sliding window). Usage resyncs only ever lower the
    bucket, so they cannot break it either. With ``RATE * interval_ms`` = tokens_per_interval
    and ``CAP`` = burst_tokens, the bound is ``tokens_per_interval + burst_tokens``."""
    state: BucketState | None = None
    now = 0.0
    issued: list[tuple[float, int]] = []
    pauses: list[tuple[float, float]] = []
    for advance, cost, kind, allowance in events:
        now += advance
        if kind == "penalty":
            state = penalize(state, now, now + 1000, rate_per_ms=RATE, capacity=CAP)
            pauses.append((now, now + 1000))
            continue
        if kind == "sync":
            state = sync(state, now, allowance, 700.0, rate_per_ms=RATE, capacity=CAP)
            continue
        r = reserve(state, now, cost, rate_per_ms=RATE, capacity=CAP)
        state = r.state
        issued.append((r.due_ms, cost))
        # A reservation taken after a penalty began is never due before that penalty ends.
        assert all(r.due_ms >= end for start, end in pauses if start <= now)
    issued.sort()
    for i, (t0, _) in enumerate(issued):
        spent = sum(c for t, c in issued[i:] if t < t0 + window_ms)
        assert spent <= CAP + RATE * window_ms + 1e-6


@given(
    st.floats(min_value=-20, max_value=CAP, allow_nan=False),  # tokens
    st.floats(min_value=-500, max_value=3000, allow_nan=False),  # updated_ms - now
    st.floats(min_value=-5, max_value=40, allow_nan=False),  # allowance
    st.floats(min_value=0, max_value=5000, allow_nan=False),  # rest of the window, ms
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=300), st.integers(min_value=1, max_value=5)),
        max_size=60,
    ),
)
def test_after_a_usage_sync_new_grants_in_the_window_stay_within_the_allowance(
    tokens: float,
    updated: float,
    allowance: float,
    rest: float,
    takes: list[tuple[float, int]],
) -> None:
    """Whatever is reserved after the clamp, at whatever pace, the reservations due before
    the window ends, plus the debt granted before it, total at most ``max(allowance, debt)``."""
    now = 10_000.0
    level = min(CAP, tokens + max(0.0, -updated) * RATE)  # as of max(now, updated)
    state = sync(
        BucketState(tokens, now + updated), now, allowance, rest, rate_per_ms=RATE, capacity=CAP
    )
    assert state.tokens <= level + 1e-9  # never adds tokens
    debt = max(0.0, -level)
    end = now + rest
    t, granted = now, 0.0
    for advance, cost in takes:
        t += advance
        if t >= end:
            break
        r = reserve(state, t, cost, rate_per_ms=RATE, capacity=CAP)
        state = r.state
        if r.due_ms < end:
            granted += cost
    assert granted + debt <= max(allowance, debt) + 1e-6
