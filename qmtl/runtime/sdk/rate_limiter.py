"""The limiter port: what the fetcher needs from a rate limiter (local or cluster-wide).

Budgets are in the exchange's weight units; one limiter instance holds one key's budget. The
implementations (process-local, Redis) live in :mod:`qmtl.runtime.io`.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

__all__ = ["USAGE_WINDOW_MS", "RateLimiter"]

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
