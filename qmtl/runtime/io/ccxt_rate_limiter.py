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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from qmtl.runtime.io.token_bucket import BucketState, penalize, reserve
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.events import RATE_LIMIT_PENALTY, log_event
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig, render_key

__all__ = [
    "DEFAULT_BAN_MS",
    "LocalRateLimiter",
    "RateLimiter",
    "RateLimiterConfig",
    "get_limiter",
    "penalty_ms_for",
]

logger = logging.getLogger(__name__)

#: Pause after a 418 without ``Retry-After`` (Binance bans last 2 minutes to 3 days).
DEFAULT_BAN_MS = 120_000


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

    async def aclose(self) -> None: ...


def penalty_ms_for(status: int, retry_after_s: float | None, config: RateLimiterConfig) -> float:
    """The pause demanded by an HTTP ``status`` (429 or 418) and its ``Retry-After``."""
    retry_ms = max(0.0, retry_after_s or 0.0) * 1000.0
    if status == 418:
        return max(retry_ms or DEFAULT_BAN_MS, float(config.penalty_backoff_ms))
    return max(float(config.penalty_backoff_ms), retry_ms)


class LocalRateLimiter:
    """A process-local bucket. Use from one event loop (not thread-safe)."""

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
        self.rate_per_ms = config.tokens_per_interval * share / config.interval_ms
        self.capacity = max(1.0, config.burst_tokens * share)
        self._state: BucketState | None = None
        self._next_start_ms = 0.0
        self._slots = asyncio.Semaphore(config.local_semaphore)

    def _now_ms(self) -> float:
        return self.clock.monotonic() * 1000.0

    @contextlib.asynccontextmanager
    async def acquire(self, cost: float = 1) -> AsyncIterator[None]:
        cost = min(float(cost), self.capacity)
        async with self._slots:
            try:
                await self._wait_turn(cost)
            except asyncio.CancelledError:
                self.metrics.rl_dropped.labels(key=self.key).inc()
                raise
            yield

    async def _wait_turn(self, cost: float) -> None:
        while True:
            now = self._now_ms()
            taken = reserve(
                self._state, now, cost, rate_per_ms=self.rate_per_ms, capacity=self.capacity
            )
            self._state = taken.state
            due = max(taken.due_ms, self._next_start_ms)
            self._next_start_ms = due + self.config.min_interval_ms
            self.metrics.rl_tokens_available.labels(key=self.key).set(max(0.0, taken.state.tokens))
            if due > now:
                await self.clock.sleep((due - now) / 1000.0)
            # A penalty imposed while we slept voids our reservation: queue again behind it.
            if self._state.not_before_ms <= self._now_ms():
                return

    async def penalize(self, status: int, retry_after_s: float | None) -> float:
        pause_ms = penalty_ms_for(status, retry_after_s, self.config)
        now = self._now_ms()
        self._state = penalize(
            self._state, now, now + pause_ms, rate_per_ms=self.rate_per_ms, capacity=self.capacity
        )
        self.metrics.rl_penalty.labels(key=self.key, status=str(status)).inc()
        log_event(
            logger,
            RATE_LIMIT_PENALTY,
            level=logging.ERROR if status == 418 else logging.WARNING,
            key=self.key,
            status=status,
            retry_after_ms=None if retry_after_s is None else retry_after_s * 1000.0,
            penalty_ms=pause_ms,
        )
        return pause_ms

    async def aclose(self) -> None:
        return None


def get_limiter(
    config: RateLimiterConfig,
    exchange_id: str,
    account: str | None = None,
    *,
    clock: Clock | None = None,
    metrics: SeamlessMetrics | None = None,
) -> RateLimiter:
    """The limiter for ``exchange_id`` (and ``account``), keyed by ``config.key_template``."""
    key = render_key(config.key_template, exchange_id, account)
    return LocalRateLimiter(config, key, clock=clock, metrics=metrics)
