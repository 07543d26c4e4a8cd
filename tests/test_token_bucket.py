"""Token-bucket arithmetic: a table of cases and the window-spend invariant."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmtl.runtime.io.token_bucket import BucketState, penalize, reserve

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


trace = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2000, allow_nan=False),  # time advance, ms
        st.integers(min_value=0, max_value=5),  # cost
        st.booleans(),  # penalty here?
    ),
    max_size=80,
)


@given(trace, st.floats(min_value=100, max_value=3000))
def test_spend_in_any_window_never_exceeds_rate_times_window_plus_burst(
    events: list[tuple[float, int, bool]], window_ms: float
) -> None:
    """Reference model: record (issue time, cost) and check every window starting at an
    issue instant (the worst case for a sliding window)."""
    state: BucketState | None = None
    now = 0.0
    issued: list[tuple[float, int]] = []
    pauses: list[tuple[float, float]] = []
    for advance, cost, penalty in events:
        now += advance
        if penalty:
            state = penalize(state, now, now + 1000, rate_per_ms=RATE, capacity=CAP)
            pauses.append((now, now + 1000))
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
