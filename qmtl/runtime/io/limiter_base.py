"""What every limiter shares: request slots, penalty lengths and their log/metric, budget
arithmetic over a window. Penalties: a 429 pauses the whole key for
``max(penalty_backoff_ms, Retry-After)``, a 418 (IP ban) for the ban's ``Retry-After`` (2
minutes, Binance's shortest ban, when the exchange sent none; never less than
``penalty_backoff_ms``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator

from qmtl.runtime.sdk.events import RATE_LIMIT_PENALTY, log_event
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = [
    "DEFAULT_BAN_MS",
    "SlottedLimiter",
    "penalty_ms_for",
    "record_penalty",
    "split_cost",
    "window_budget",
]

logger = logging.getLogger(__name__)

#: Pause after a 418 without ``Retry-After`` (Binance bans last 2 minutes to 3 days).
DEFAULT_BAN_MS = 120_000


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
