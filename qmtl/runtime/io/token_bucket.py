"""Token-bucket arithmetic as pure functions (no I/O, no clock of its own).

The bucket refills continuously at ``rate_per_ms`` and holds at most ``capacity`` tokens
(``burst_tokens``). :func:`reserve` is *reservation* based: a caller takes its cost at once
and is told when its request is due; when the bucket is short it goes negative and later
callers queue behind (FIFO by construction, no polling). A request is issued only when its
tokens are due, so over any window of ``W`` ms the spend never exceeds
``max(capacity, c) + rate_per_ms * W`` for requests of cost at most ``c`` —
``burst_tokens + tokens_per_interval`` per ``interval_ms`` when no request costs more than the
burst (a dearer one, such as a 20-weight market load with a burst of 2, waits for its tokens
first and spends them at once).

A penalty (429/418) is :func:`penalize`: the bucket is drained to ``min(tokens, 0)`` and its
clock moved to the end of the pause, so nothing new is due before it and refill resumes only
after it. Reservations handed out before the penalty must be re-taken by their waiters
(``not_before_ms`` tells them), which forfeits their tokens: conservative, never over budget.

A resync from the exchange's usage header is :func:`sync`: the exchange says how much weight
everyone on this IP used in its current fixed window; the bucket's debt (granted, not yet
issued) plus what it can still grant before the window ends is cut down to what the window has
left (:func:`usage_window_rest_ms` says how long that is, or that the report is too close to a
window boundary to trust). It only ever lowers the bucket.

The Redis limiter runs the same arithmetic in ``token_bucket.lua``; both are tested on one
table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "USAGE_GRACE_MS",
    "BucketState",
    "Reservation",
    "penalize",
    "reserve",
    "sync",
    "usage_window_rest_ms",
]

#: Usage reports observed this close (ms) after a window boundary are ignored: clock skew
#: between us and the exchange could make the old window's count look like the new one's.
USAGE_GRACE_MS = 1000.0


@dataclass(frozen=True, slots=True)
class BucketState:
    """``tokens`` as of ``updated_ms`` (may be negative: outstanding reservations;
    ``updated_ms`` may lie in the future during a penalty). ``not_before_ms`` is the end of
    the latest penalty. All instants in the same millisecond clock."""

    tokens: float
    updated_ms: float
    not_before_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Reservation:
    """The new state, and ``due_ms``: the instant the caller may issue its request."""

    state: BucketState
    due_ms: float


def _check(rate_per_ms: float, capacity: float) -> None:
    if rate_per_ms <= 0 or capacity <= 0:
        raise ValueError("rate_per_ms and capacity must be > 0")


def _tokens_at(state: BucketState, at_ms: float, rate_per_ms: float, capacity: float) -> float:
    """Tokens at ``at_ms >= state.updated_ms`` (refill capped at capacity)."""
    return min(capacity, state.tokens + (at_ms - state.updated_ms) * rate_per_ms)


def reserve(
    state: BucketState | None,
    now_ms: float,
    cost: float,
    *,
    rate_per_ms: float,
    capacity: float,
) -> Reservation:
    """Take ``cost`` tokens at ``now_ms``; ``state=None`` is a full bucket.

    Time never runs backwards for the bucket: a ``now_ms`` older than ``updated_ms`` (skew
    between callers, or a penalty) is computed as of ``updated_ms``.
    """
    _check(rate_per_ms, capacity)
    if not 0 <= cost <= capacity:
        raise ValueError(f"cost {cost} must be within [0, capacity={capacity}]")
    if state is None:
        state = BucketState(tokens=capacity, updated_ms=now_ms)
    at = max(now_ms, state.updated_ms)
    tokens = _tokens_at(state, at, rate_per_ms, capacity) - cost
    due = at + max(0.0, -tokens / rate_per_ms)
    return Reservation(BucketState(tokens, at, state.not_before_ms), due)


def penalize(
    state: BucketState | None,
    now_ms: float,
    until_ms: float,
    *,
    rate_per_ms: float,
    capacity: float,
) -> BucketState:
    """Stop the bucket until ``until_ms``: drain it to ``min(tokens, 0)`` and restart its
    refill at the end of the pause (a later penalty never shortens an earlier one)."""
    _check(rate_per_ms, capacity)
    if state is None:
        state = BucketState(tokens=capacity, updated_ms=now_ms)
    at = max(now_ms, state.updated_ms)
    tokens = min(_tokens_at(state, at, rate_per_ms, capacity), 0.0)
    return BucketState(tokens, max(at, until_ms), max(state.not_before_ms, until_ms))


def sync(
    state: BucketState | None,
    now_ms: float,
    allowance: float,
    rest_ms: float,
    *,
    rate_per_ms: float,
    capacity: float,
) -> BucketState:
    """Clamp the bucket to an exchange usage report.

    ``allowance`` is what the exchange window still allows this bucket (budget − used) and
    ``rest_ms`` how long that window lasts after ``now_ms``. What the bucket may still cause
    in the window is its debt (``-tokens`` when negative: reservations granted, not yet
    issued) plus what it can grant before the window ends (``max(tokens, 0)`` + refill);
    any excess over ``allowance`` is taken off ``tokens`` (never adds tokens). Refill is
    counted without the capacity cap, which only overstates it: conservative.
    """
    _check(rate_per_ms, capacity)
    if state is None:
        state = BucketState(tokens=capacity, updated_ms=now_ms)
    at = max(now_ms, state.updated_ms)
    rest = max(0.0, rest_ms - (at - now_ms))
    tokens = _tokens_at(state, at, rate_per_ms, capacity)
    excess = max(tokens, 0.0) + rest * rate_per_ms - allowance
    return BucketState(tokens - max(0.0, excess), at, state.not_before_ms)


def usage_window_rest_ms(
    now_ms: float, window_ms: float, *, age_ms: float = 0.0, grace_ms: float = USAGE_GRACE_MS
) -> float | None:
    """Milliseconds left in the exchange's fixed window (aligned to the epoch, as Binance's
    ``X-MBX-USED-WEIGHT-1m``) containing ``now_ms``, or ``None`` when a report observed
    ``age_ms`` ago belongs to an earlier window or arrived within ``grace_ms`` of its start."""
    if window_ms <= 0:
        raise ValueError("window_ms must be > 0")
    observed = now_ms - max(0.0, age_ms)
    window = math.floor(now_ms / window_ms)
    if math.floor(observed / window_ms) != window or observed - window * window_ms < grace_ms:
        return None
    return (window + 1) * window_ms - now_ms
