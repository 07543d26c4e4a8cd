"""Rate limiters for exchange access: one budget per key, in the exchange's weight units.

:class:`LocalRateLimiter` holds the bucket in this process; the Redis limiter (cluster-wide)
shares the same :class:`RateLimiter` protocol. Both use the pure arithmetic of
:mod:`qmtl.runtime.io.token_bucket`: callers *reserve* tokens and sleep until they are due —
FIFO, no polling. ``local_semaphore`` caps in-flight requests per process and
``min_interval_ms`` spaces request starts within a process.

Penalties: a 429 pauses the whole key for ``max(penalty_backoff_ms, Retry-After)``, a 418
(IP ban) for the ban's ``Retry-After`` (2 minutes, Binance's shortest ban, when the exchange
sent none, never less than ``penalty_backoff_ms``). Waiters that reserved before a penalty
re-queue after it.

Usage headers: :meth:`RateLimiter.observe_usage` takes the weight the exchange says was used
in its current fixed window (Binance ``X-MBX-USED-WEIGHT-1m``, by everyone on this IP) and
clamps the bucket so that its debt plus what it can still grant before the window ends stays
within ``budget − used`` (``budget`` = ``tokens_per_interval`` per ``interval_ms`` over the
window, plus ``burst_tokens``; this process's share of it for a shared-fallback bucket). It
never adds tokens; see :func:`~qmtl.runtime.io.token_bucket.sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Protocol, runtime_checkable

from qmtl.runtime.io.token_bucket import (
    BucketState,
    penalize,
    reserve,
    sync,
    usage_window_rest_ms,
)
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.events import RATE_LIMIT_PENALTY, log_event
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig, render_key

__all__ = [
    "DEFAULT_BAN_MS",
    "ENV_REDIS_DSN",
    "USAGE_WINDOW_MS",
    "LocalRateLimiter",
    "RateLimiter",
    "RateLimiterConfig",
    "SlottedLimiter",
    "get_limiter",
    "penalty_ms_for",
    "record_penalty",
    "split_cost",
    "window_budget",
]

logger = logging.getLogger(__name__)

#: Pause after a 418 without ``Retry-After`` (Binance bans last 2 minutes to 3 days).
DEFAULT_BAN_MS = 120_000
#: Environment variable that selects the Redis limiter (a ``redis://`` DSN).
ENV_REDIS_DSN = "QMTL_CCXT_RATE_LIMITER_REDIS"
#: Window of Binance's ``X-MBX-USED-WEIGHT-1m`` header: one fixed minute.
USAGE_WINDOW_MS = 60_000


@runtime_checkable
class RateLimiter(Protocol):
    """What the fetcher needs from a limiter."""

    key: str

    def acquire(self, cost: float = 1) -> AbstractAsyncContextManager[None]:
        """Wait until ``cost`` tokens are due and a request slot is free; hold the slot for
        the duration of the ``async with`` block (the HTTP request)."""
        ...

    async def penalize(self, status: int, retry_after_s: float | None) -> float:
        """Pause the key after a 429/418; returns the pause in ms."""
        ...

    async def observe_usage(
        self, used_weight: int, *, window_ms: int = USAGE_WINDOW_MS, age_ms: float = 0.0
    ) -> None:
        """The exchange reports ``used_weight`` spent in its current fixed window of
        ``window_ms`` (observed ``age_ms`` ago): clamp the bucket to what is left."""
        ...

    async def aclose(self) -> None: ...


def window_budget(config: RateLimiterConfig, window_ms: float) -> float:
    """What the bucket may spend in any window of ``window_ms``: refill plus burst
    (``tokens_per_interval + burst_tokens`` when the window is ``interval_ms``)."""
    return config.tokens_per_interval * window_ms / config.interval_ms + config.burst_tokens


def split_cost(cost: float, capacity: float) -> list[float]:
    """``cost`` in pieces no larger than ``capacity``: a request weighing more than the
    bucket holds is charged in full, piece by piece, instead of being undercharged."""
    if cost <= capacity:
        return [cost]
    pieces = math.ceil(cost / capacity)
    return [min(capacity, cost / pieces)] * pieces


def penalty_ms_for(status: int, retry_after_s: float | None, config: RateLimiterConfig) -> float:
    """The pause demanded by an HTTP ``status`` (429 or 418) and its ``Retry-After``."""
    retry_ms = max(0.0, retry_after_s or 0.0) * 1000.0
    if status == 418:
        return max(retry_ms or DEFAULT_BAN_MS, float(config.penalty_backoff_ms))
    return max(float(config.penalty_backoff_ms), retry_ms)


class SlottedLimiter:
    """The part every limiter shares: at most ``local_semaphore`` requests of this process
    in flight, and a waiter cancelled before its turn counted as dropped. Subclasses say how
    a caller waits for its tokens (:meth:`_queue`)."""

    key: str
    metrics: SeamlessMetrics
    _slots: asyncio.Semaphore

    @contextlib.asynccontextmanager
    async def acquire(self, cost: float = 1) -> AsyncIterator[None]:
        async with self._slots:
            try:
                await self._queue(float(cost))
            except asyncio.CancelledError:
                self.metrics.rl_dropped.labels(key=self.key).inc()
                raise
            yield

    async def _queue(self, cost: float) -> None:
        raise NotImplementedError


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


def record_penalty(
    metrics: SeamlessMetrics,
    key: str,
    status: int,
    retry_after_s: float | None,
    pause_ms: float,
) -> None:
    """Count and log one penalty: warning for a 429, error for a 418 (an IP ban)."""
    metrics.rl_penalty.labels(key=key, status=str(status)).inc()
    log_event(
        logger,
        RATE_LIMIT_PENALTY,
        level=logging.ERROR if status == 418 else logging.WARNING,
        key=key,
        status=status,
        retry_after_ms=None if retry_after_s is None else retry_after_s * 1000.0,
        penalty_ms=pause_ms,
    )


def get_limiter(
    config: RateLimiterConfig,
    exchange_id: str,
    account: str | None = None,
    *,
    clock: Clock | None = None,
    metrics: SeamlessMetrics | None = None,
    env: Mapping[str, str] | None = None,
) -> RateLimiter:
    """The limiter for ``exchange_id`` (and ``account``), keyed by ``config.key_template``:
    the Redis limiter when ``config.redis_dsn`` or ``QMTL_CCXT_RATE_LIMITER_REDIS`` (read
    from ``env``, default ``os.environ``) names a server, else a process-local one."""
    key = render_key(config.key_template, exchange_id, account)
    dsn = config.redis_dsn or (os.environ if env is None else env).get(ENV_REDIS_DSN) or None
    if dsn is None:
        return LocalRateLimiter(config, key, clock=clock, metrics=metrics)
    from qmtl.runtime.io.redis_rate_limiter import RedisRateLimiter

    # replace() re-validates: a DSN from the environment gets the same scheme check
    return RedisRateLimiter(replace(config, redis_dsn=dsn), key, clock=clock, metrics=metrics)
