"""Binance-style request-weight accounting (sans-IO: callers pass the time in).

Decisions, written down:

- **Fixed calendar minutes**, as Binance's ``X-MBX-USED-WEIGHT-1m`` (it drops to 0 at each
  minute boundary): ``used`` counts the weight admitted since ``floor(now / 60) * 60``.
- A request that would take ``used`` above the limit is **rejected with 429** and
  ``Retry-After`` = the configured seconds, else the seconds left in the minute (≥ 1).
  **Rejected requests consume no weight** (so a client that backs off correctly gets its full
  budget back at the boundary, and a ban is caused by ignoring 429s, never by weight alone).
- Each 429 is a *violation*; violations are counted per minute window. When a request
  is refused while ``ban_after_violations`` violations already happened in the window, the
  client is **banned** for ``ban_seconds``: that and every request until the ban ends get 418
  with ``Retry-After`` = whole seconds left. The ban end clears the counters.
- One budget per venue (Binance counts spot and USD-M futures weight apart, per IP; tests
  all come from loopback): spot and futures each get a :class:`WeightLimiter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "ENDPOINT_WEIGHTS",
    "FUTURES_ENDPOINT_WEIGHTS",
    "FUTURES_KLINES_PATH",
    "Admission",
    "WeightLimiter",
    "futures_klines_weight",
    "futures_klines_weight_of",
]

#: Request weight per REST path (Binance spot values); other paths weigh 1.
ENDPOINT_WEIGHTS: dict[str, int] = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
}
#: Binance USD-M futures weights other than klines (whose weight depends on ``limit``).
FUTURES_ENDPOINT_WEIGHTS: dict[str, int] = {
    "/fapi/v1/ping": 1,
    "/fapi/v1/time": 1,
    "/fapi/v1/exchangeInfo": 1,
}
FUTURES_KLINES_PATH = "/fapi/v1/klines"
_FUTURES_DEFAULT_LIMIT = 500
_WINDOW_S = 60


def futures_klines_weight(limit: int) -> int:
    """Binance USD-M klines weight by ``limit``: [1, 100) → 1, [100, 500) → 2,
    [500, 1000] → 5, above → 10 (ccxt's ``byLimit`` tiers say the same)."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def futures_klines_weight_of(limit_text: str | None) -> int:
    """The weight of a ``/fapi/v1/klines`` request sending ``limit=limit_text``. A limit
    that does not parse weighs as the default one (the request is refused after being
    charged, as on Binance)."""
    limit = _FUTURES_DEFAULT_LIMIT
    if limit_text is not None and limit_text.isascii() and limit_text.isdigit():
        limit = int(limit_text[:12])
    return futures_klines_weight(limit)


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict for one request: ``status`` 200 (admitted), 429 or 418.

    ``used_weight`` is the window's weight after this request (what the header echoes);
    ``retry_after_s`` is set on rejections; ``banned_until`` (epoch s) on 418.
    """

    status: int
    used_weight: int
    retry_after_s: int | None = None
    banned_until: float | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200


class WeightLimiter:
    """Per-minute weight budget with 429 → 418 escalation. Not thread-safe (one event loop)."""

    def __init__(
        self,
        *,
        limit_per_minute: int,
        ban_after_violations: int,
        ban_seconds: int,
        retry_after_s: int | None = None,
    ) -> None:
        if limit_per_minute < 1 or ban_after_violations < 0 or ban_seconds < 1:
            raise ValueError("limit_per_minute, ban_seconds must be >= 1; violations >= 0")
        self.limit_per_minute = limit_per_minute
        self.ban_after_violations = ban_after_violations
        self.ban_seconds = ban_seconds
        self.retry_after_s = retry_after_s
        self._window = -1
        self._used = 0
        self._violations = 0
        self._banned_until: float | None = None

    def _roll(self, now: float) -> None:
        window = math.floor(now / _WINDOW_S)
        if window != self._window:
            self._window = window
            self._used = 0
            self._violations = 0

    def used(self, now: float) -> int:
        """Weight used in the minute containing ``now``."""
        self._roll(now)
        return self._used

    def admit(self, weight: int, now: float) -> Admission:
        """Decide on one request of ``weight`` arriving at ``now`` (epoch seconds)."""
        if self._banned_until is not None:
            if now < self._banned_until:
                return self._ban_verdict(now)
            self._banned_until = None
            self._violations = 0
        self._roll(now)
        if self._used + weight <= self.limit_per_minute:
            self._used += weight
            return Admission(200, self._used)
        if self._violations >= self.ban_after_violations:
            self._banned_until = now + self.ban_seconds
            return self._ban_verdict(now)
        self._violations += 1
        if self.retry_after_s is not None:
            retry = self.retry_after_s
        else:
            retry = max(1, math.ceil((self._window + 1) * _WINDOW_S - now))
        return Admission(429, self._used, retry_after_s=retry)

    def _ban_verdict(self, now: float) -> Admission:
        assert self._banned_until is not None
        left = max(1, math.ceil(self._banned_until - now))
        return Admission(418, self.used(now), retry_after_s=left, banned_until=self._banned_until)
