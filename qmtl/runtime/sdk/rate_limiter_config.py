"""``RateLimiterConfig``: one exchange budget, in the exchange's weight units.

Re-exported by :mod:`qmtl.runtime.io.ccxt_fetcher`, where SPEC §7.1 names it; it lives in the
sdk because it is pure configuration (the config model builds it). Rule of thumb
for users: keep ``tokens_per_interval + burst_tokens`` at or below the exchange's own limit
per ``interval_ms`` and no process sharing the key can trigger a 429.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RateLimiterConfig", "render_key"]

_OPTIONAL_SECTION = re.compile(r":\{(\w+)\?\}")
_PLACEHOLDER = re.compile(r"\{(\w+)\??\}")
_KNOWN_PLACEHOLDERS = frozenset({"exchange", "exchange_id", "account"})


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimiterConfig:
    """Token bucket settings: refills ``tokens_per_interval`` per ``interval_ms``
    continuously, holds at most ``burst_tokens``. ``redis_dsn=None`` means process-local
    unless ``QMTL_CCXT_RATE_LIMITER_REDIS`` is set. ``expected_workers``: how many processes
    share the key; while Redis is unreachable each falls back to a local bucket at
    ``1 / expected_workers`` of the budget."""

    tokens_per_interval: int = 1200
    interval_ms: int = 60_000
    burst_tokens: int = 200
    local_semaphore: int = 10
    penalty_backoff_ms: int = 5000
    key_template: str = "ccxt:{exchange}:{account?}"
    redis_dsn: str | None = None
    min_interval_ms: int = 0
    expected_workers: int = 1

    def __post_init__(self) -> None:
        positive = ("tokens_per_interval", "interval_ms", "burst_tokens", "local_semaphore")
        for name in (*positive, "expected_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: must be an integer > 0, got {value!r}")
        for name in ("penalty_backoff_ms", "min_interval_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        if not isinstance(self.key_template, str) or not self.key_template:
            raise ValueError("key_template: must be a non-empty string")
        unknown = {m.group(1) for m in _PLACEHOLDER.finditer(self.key_template)}
        unknown -= _KNOWN_PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"key_template: unknown placeholder(s) {sorted(unknown)}; "
                f"use {sorted(_KNOWN_PLACEHOLDERS)}"
            )
        if self.redis_dsn is not None and not self.redis_dsn.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError(
                f"redis_dsn: unsupported scheme in {self.redis_dsn!r}; "
                "use redis://, rediss:// or unix://"
            )


def render_key(template: str, exchange_id: str, account: str | None = None) -> str:
    """The bucket key: ``{exchange}`` lower-case id, ``{exchange_id}`` as given, ``{account}``;
    a ``:{account?}`` section disappears when there is no account."""

    def optional(match: re.Match[str]) -> str:
        return f":{{{match.group(1)}}}" if account else ""

    text = _OPTIONAL_SECTION.sub(optional, template)
    return text.format(exchange=exchange_id.lower(), exchange_id=exchange_id, account=account or "")
