"""OKX-style request-count limits per endpoint (sans-IO: callers pass the time in).

OKX publishes its public limits as requests per 2 seconds per endpoint and per IP (candles
40, history-candles 20, instruments 20, time 10), without a usage header or ``Retry-After``.
The simulator counts them in fixed windows aligned to the clock (``floor(now / 2)``), so a
test with a fake clock knows exactly which request is refused. A refused request does not
count (as for Binance weights: backing off restores the full budget at the next window), and
there is no escalation to a ban. One instance per scenario, one event loop (not thread-safe).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["RequestRateLimiter"]


class RequestRateLimiter:
    """At most ``limits[endpoint]`` admitted requests per endpoint per ``window_s`` window."""

    def __init__(self, limits: Mapping[str, int], window_s: float = 2.0) -> None:
        if window_s <= 0 or any(v < 1 for v in limits.values()):
            raise ValueError("window_s must be > 0 and every limit >= 1")
        self.limits = dict(limits)
        self.window_s = window_s
        self._window: dict[str, int] = {}
        self._used: dict[str, int] = {}

    def used(self, endpoint: str, now: float) -> int:
        """Requests admitted to ``endpoint`` in the window containing ``now``."""
        window = math.floor(now / self.window_s)
        if self._window.get(endpoint) != window:
            self._window[endpoint] = window
            self._used[endpoint] = 0
        return self._used[endpoint]

    def admit(self, endpoint: str, now: float) -> bool:
        """Count one request to ``endpoint`` at ``now`` (epoch s) unless over its limit."""
        used = self.used(endpoint, now)
        if used >= self.limits[endpoint]:
            return False
        self._used[endpoint] = used + 1
        return True
