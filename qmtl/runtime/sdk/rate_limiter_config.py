"""``RateLimiterConfig``: one exchange budget, in the exchange's weight units.

Re-exported by :mod:`qmtl.runtime.io.ccxt_fetcher`, next to the fetcher that uses it; it lives
in the sdk because it is pure configuration (the config model builds it). Rule of thumb
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
    """Tokens (the exchange's request-weight units) refilled, continuously, over each
    ``interval_ms``; > 0."""
    interval_ms: int = 60_000
    """Refill period (ms); > 0."""
    burst_tokens: int = 200
    """Most tokens the bucket holds; > 0. Keep ``tokens_per_interval + burst_tokens`` at or
    below the exchange's own limit per interval and no process can cause a 429."""
    local_semaphore: int = 10
    """Most requests in flight at once, per process and key; > 0."""
    penalty_backoff_ms: int = 5000
    """Shortest pause (ms) of the whole key after the exchange answers 429 (too many
    requests) or 418 (banned); a longer ``Retry-After`` wins; >= 0."""
    key_template: str = "ccxt:{exchange}:{account?}"
    """Bucket key: processes using the same key share one budget. Placeholders:
    ``{exchange}`` (lower-case id), ``{exchange_id}`` (as written), ``{account}``; a
    ``:{account?}`` part disappears when there is no account."""
    redis_dsn: str | None = None
    """Redis server holding the shared bucket (``redis://``, ``rediss://`` or
    ``unix://``); null: ``environment.rate_limiter_redis``, else a process-local bucket."""
    min_interval_ms: int = 0
    """Least time (ms) between the starts of two requests of one process; below
    ``interval_ms``; 0: no spacing."""
    expected_workers: int = 1
    """Processes sharing the key; while Redis is unreachable each falls back to a local
    bucket with 1/``expected_workers`` of the budget; > 0."""

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
