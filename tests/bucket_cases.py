"""One table of token-bucket cases, run by the pure functions (tests/test_token_bucket.py,
against expected values) and by the Lua script on a real Redis (tests/test_redis_rate_limiter.py,
against the pure functions at the instant the script reports).

Instants in a case are relative to "now" so the Lua run can anchor them on Redis ``TIME``.
"""

from __future__ import annotations

from dataclasses import dataclass

from qmtl.runtime.io.token_bucket import (
    BucketState,
    penalize,
    reserve,
    sync,
    usage_window_rest_ms,
)

RATE = 0.01  # tokens per ms = 10 tokens/s
CAP = 5.0
#: The instant the expected values are computed at: 400 ms into a 1 s window, 20.4 s into a
#: minute (sync cases depend on the phase; the Lua run compares with the pure result instead).
NOW = 1_700_000_000_400.0


@dataclass(frozen=True)
class Case:
    """``state`` = (tokens, updated_ms - now, not_before_ms - now), ``None`` = missing key.
    ``args``: reserve (cost,), penalize (pause_ms,), sync (allowance, window_ms, age_ms,
    grace_ms), check (). ``expected`` = (tokens, updated, not_before, due), relative to NOW
    (``None``: the instant 0, a missing key's ``not_before``)."""

    name: str
    state: tuple[float, float, float] | None
    op: str
    args: tuple[float, ...]
    expected: tuple[float, float, float | None, float]


CASES = [
    Case("full bucket", None, "reserve", (1,), (4, 0, None, 0)),
    Case("empty: due after refill", (0, 0, 0), "reserve", (1,), (-1, 0, 0, 100)),
    Case("queue behind debt", (-1, 0, 0), "reserve", (2,), (-3, 0, 0, 300)),
    Case("refill capped", (0, -1000, 0), "reserve", (1,), (4, 0, 0, 0)),
    Case("time never runs back", (1, 500, 0), "reserve", (1,), (0, 500, 0, 500)),
    Case("reserve during a pause", (-2, 4000, 4000), "reserve", (1,), (-3, 4000, 4000, 4300)),
    Case("zero cost", (3, -100, 0), "reserve", (0,), (4, 0, 0, 0)),
    Case("penalize missing key", None, "penalize", (5000,), (0, 5000, 5000, 5000)),
    Case("penalize drains", (3, -100, 0), "penalize", (5000,), (0, 5000, 5000, 5000)),
    Case("penalize keeps debt", (-2, 0, 0), "penalize", (1000,), (-2, 1000, 1000, 1000)),
    Case("shorter pause", (-1, 5000, 5000), "penalize", (1000,), (-1, 5000, 5000, 5000)),
    Case("sync clamps", (5, 0, 0), "sync", (2, 1000, 0, 0), (-4, 0, 0, 0)),
    Case("sync within allowance", (0, 0, 0), "sync", (100, 1000, 0, 0), (0, 0, 0, 0)),
    Case("sync with debt", (-3, 0, 0), "sync", (1, 1000, 0, 0), (-8, 0, 0, 0)),
    Case("sync stale report", (5, 0, 0), "sync", (0, 1000, 2000, 0), (5, 0, 0, 0)),
    Case("sync in grace", (5, 0, 0), "sync", (0, 1000, 0, 1000), (5, 0, 0, 0)),
    Case("sync missing key", None, "sync", (0, 60_000, 0, 0), (-396, 0, None, 0)),
    Case("sync during pause", (0, 2000, 2000), "sync", (3, 60_000, 0, 0), (-373, 2000, 2000, 2000)),
    Case("check", (2, -100, 500), "check", (), (3, 0, 500, 0)),
]


def absolute(case: Case, anchor_ms: float) -> BucketState | None:
    if case.state is None:
        return None
    tokens, updated, not_before = case.state
    return BucketState(tokens, anchor_ms + updated, anchor_ms + not_before)


def run_pure(
    state: BucketState | None, now_ms: float, op: str, args: tuple[float, ...]
) -> tuple[float, float, float, float]:
    """(tokens, updated_ms, not_before_ms, due_ms) as the script reports them."""
    if op == "reserve":
        taken = reserve(state, now_ms, args[0], rate_per_ms=RATE, capacity=CAP)
        return (*_fields(taken.state), taken.due_ms)
    if op == "penalize":
        after = penalize(state, now_ms, now_ms + args[0], rate_per_ms=RATE, capacity=CAP)
        return (*_fields(after), after.updated_ms)
    if op == "sync":
        allowance, window_ms, age_ms, grace_ms = args
        rest = usage_window_rest_ms(now_ms, window_ms, age_ms=age_ms, grace_ms=grace_ms)
        # Without a usable report the state is only brought up to date (an allowance nobody
        # can exceed leaves it unchanged), which is what the script reports.
        after = sync(
            state,
            now_ms,
            float("inf") if rest is None else allowance,
            rest or 0.0,
            rate_per_ms=RATE,
            capacity=CAP,
        )
        return (*_fields(after), after.updated_ms)
    if op == "check":
        after = sync(state, now_ms, float("inf"), 0.0, rate_per_ms=RATE, capacity=CAP)
        return (*_fields(after), after.updated_ms)
    raise ValueError(op)


def _fields(state: BucketState) -> tuple[float, float, float]:
    return state.tokens, state.updated_ms, state.not_before_ms
