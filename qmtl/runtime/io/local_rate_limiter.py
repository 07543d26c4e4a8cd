"""``LocalRateLimiter``: one key's token bucket held in this process.

Callers *reserve* tokens with the pure arithmetic of :mod:`qmtl.runtime.io.token_bucket` and
sleep until they are due — FIFO, no polling. ``local_semaphore`` caps in-flight requests and
``min_interval_ms`` spaces request starts. Waiters that reserved before a penalty re-queue
after it.

Usage headers: :meth:`LocalRateLimiter.observe_usage` takes the weight the exchange says was
used in its current fixed window (Binance ``X-MBX-USED-WEIGHT-1m``, by everyone on this IP)
and clamps the bucket so that its debt plus what it can still grant before the window ends
stays within ``budget − used`` (``budget`` = ``tokens_per_interval`` per ``interval_ms`` over
the window, plus ``burst_tokens``; this process's share of it for a shared-fallback bucket).
It never adds tokens; see :func:`~qmtl.runtime.io.token_bucket.sync`.
"""

from __future__ import annotations

import asyncio

from qmtl.runtime.io.limiter_base import (
    SlottedLimiter,
    penalty_ms_for,
    record_penalty,
    split_cost,
    window_budget,
)
from qmtl.runtime.io.token_bucket import (
    BucketState,
    penalize,
    reserve,
    sync,
    usage_window_rest_ms,
)
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics
from qmtl.runtime.sdk.rate_limiter import USAGE_WINDOW_MS
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = ["LocalRateLimiter"]


class LocalRateLimiter(SlottedLimiter):
    """A process-local bucket. Use from one event loop (not thread-safe).

    ``share`` (0, 1] scales the budget: the Redis limiter's fallback runs at
    ``1 / expected_workers`` so that the workers together stay within it.
    """

    def __init__(
        self,
        config: RateLimiterConfig,
        key: str,
        *,
        clock: Clock | None = None,
        metrics: SeamlessMetrics | None = None,
        share: float = 1.0,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be within (0, 1], got {share}")
        self.config = config
        self.key = key
        self.clock = clock or SystemClock()
        self.metrics = metrics or default_metrics()
        self.share = share
        self.rate_per_ms = config.tokens_per_interval * share / config.interval_ms
        self.capacity = max(1.0, config.burst_tokens * share)
        self._state: BucketState | None = None
        self._next_start_ms = 0.0
        self._slots = asyncio.Semaphore(config.local_semaphore)

    def _now_ms(self) -> float:
        return self.clock.monotonic() * 1000.0

    @property
    def state(self) -> BucketState | None:
        """The bucket (``None``: full, never used); instants on ``clock.monotonic()`` in ms."""
        return self._state

    async def _queue(self, cost: float) -> None:
        await self.wait_turn(cost)

    async def wait_turn(self, cost: float) -> None:
        """Sleep until ``cost`` tokens are due (no request slot is taken)."""
        while True:
            now = self._now_ms()
            due = now
            for piece in split_cost(float(cost), self.capacity):
                taken = reserve(
                    self._state, now, piece, rate_per_ms=self.rate_per_ms, capacity=self.capacity
                )
                self._state = taken.state
                due = max(due, taken.due_ms)
            due = max(due, self._next_start_ms)
            self._next_start_ms = due + self.config.min_interval_ms
            self._report()
            if due > now:
                await self.clock.sleep((due - now) / 1000.0)
            # A penalty imposed while we slept voids our reservation: queue again behind it.
            if self._state is None or self._state.not_before_ms <= self._now_ms():
                return

    def pause(self, pause_ms: float) -> None:
        """Stop the bucket for ``pause_ms`` from now (no log, no metric: see :meth:`penalize`)."""
        now = self._now_ms()
        self._state = penalize(
            self._state, now, now + pause_ms, rate_per_ms=self.rate_per_ms, capacity=self.capacity
        )
        self._report()

    def pause_left_ms(self) -> float:
        """How long the current penalty still lasts (0 when none)."""
        if self._state is None:
            return 0.0
        return max(0.0, self._state.not_before_ms - self._now_ms())

    def deficit(self) -> float:
        """Tokens missing from a full bucket now (spent and not yet refilled, debt included)."""
        if self._state is None:
            return 0.0
        at = max(self._now_ms(), self._state.updated_ms)
        tokens = self._state.tokens + (at - self._state.updated_ms) * self.rate_per_ms
        return max(0.0, self.capacity - min(self.capacity, tokens))

    async def penalize(self, status: int, retry_after_s: float | None) -> float:
        pause_ms = penalty_ms_for(status, retry_after_s, self.config)
        self.pause(pause_ms)
        record_penalty(self.metrics, self.key, status, retry_after_s, pause_ms)
        return pause_ms

    async def observe_usage(
        self, used_weight: int, *, window_ms: int = USAGE_WINDOW_MS, age_ms: float = 0.0
    ) -> None:
        self.sync_usage(used_weight, window_ms=window_ms, age_ms=age_ms)

    def sync_usage(
        self, used_weight: int, *, window_ms: int = USAGE_WINDOW_MS, age_ms: float = 0.0
    ) -> None:
        """:meth:`observe_usage` without awaiting; the window is placed on ``clock.now()``."""
        rest = usage_window_rest_ms(self.clock.now() * 1000.0, window_ms, age_ms=age_ms)
        if rest is None:
            return
        allowance = self.share * (window_budget(self.config, window_ms) - used_weight)
        self._state = sync(
            self._state,
            self._now_ms(),
            allowance,
            rest,
            rate_per_ms=self.rate_per_ms,
            capacity=self.capacity,
        )
        self._report()

    def _report(self) -> None:
        tokens = self.capacity if self._state is None else self._state.tokens
        self.metrics.rl_tokens_available.labels(key=self.key).set(max(0.0, tokens))

    async def aclose(self) -> None:
        return None
