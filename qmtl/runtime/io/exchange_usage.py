"""Exchange usage headers → the limiter's resync (the usage clamp of the rate limiter).

Binance reports, on every response, the weight used in its current fixed window by everyone
on this IP (``X-MBX-USED-WEIGHT-1m``). :class:`UsageRelay` is what the fetcher installs as the
exchange's ``qmtl_on_response(status, headers)`` hook: the hook is synchronous (called inside
ccxt), so it schedules ``limiter.observe_usage`` as a task and keeps a reference;
:meth:`UsageRelay.drain` awaits the pending ones, so the fetcher's next request sees the clamp.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping

from qmtl.runtime.sdk.clock import Clock
from qmtl.runtime.sdk.rate_limiter import RateLimiter

__all__ = ["UsageRelay", "used_weight_of"]

#: ``X-MBX-USED-WEIGHT-<n><unit>``: weight used in the exchange's current fixed window.
_USED_WEIGHT = re.compile(r"x-mbx-used-weight-(\d+)([smhd])", re.IGNORECASE)
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def used_weight_of(headers: Mapping[str, str] | None) -> tuple[int, int] | None:
    """``(used weight, window ms)`` from a usage header (``X-MBX-USED-WEIGHT-1m``, any
    case), or ``None`` when absent or not a non-negative integer."""
    for name, value in (headers or {}).items():
        match = _USED_WEIGHT.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            continue
        text = str(value).strip()
        if not text.isascii() or not text.isdigit():
            return None
        window_ms = int(match.group(1)) * _UNIT_MS[match.group(2).lower()]
        return (int(text), window_ms) if window_ms > 0 else None
    return None


class UsageRelay:
    """The ``qmtl_on_response`` hook of one exchange instance. One event loop. ``limiter`` is
    asked for the limiter at each report (the fetcher takes its shared limiter lazily)."""

    def __init__(self, limiter: Callable[[], RateLimiter], clock: Clock) -> None:
        self.limiter = limiter
        self.clock = clock
        self._pending: set[asyncio.Task[None]] = set()

    def __call__(self, status: int, headers: Mapping[str, str]) -> None:
        usage = used_weight_of(headers)
        if usage is None:
            return
        used, window_ms = usage
        seen = self.clock.monotonic()

        async def observe() -> None:
            age_ms = (self.clock.monotonic() - seen) * 1000.0
            await self.limiter().observe_usage(used, window_ms=window_ms, age_ms=age_ms)

        task = asyncio.get_running_loop().create_task(observe())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for every scheduled resync (their errors propagate: limiters handle their
        own Redis failures, so an error here is a bug)."""
        if self._pending:
            await asyncio.gather(*self._pending)
