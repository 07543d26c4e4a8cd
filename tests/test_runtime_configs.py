"""BackfillConfig and RateLimiterConfig: spec defaults and field-named errors."""

from __future__ import annotations

import pytest

from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig, render_key


def test_backfill_defaults_match_spec() -> None:
    c = BackfillConfig()
    assert (c.mode, c.window_bars, c.max_concurrent_requests) == ("background", 900, 8)
    assert (c.single_flight_ttl_ms, c.distributed_lease_ttl_ms) == (60_000, 120_000)
    assert (c.max_attempts, c.retry_backoff_ms, c.jitter_ratio) == (5, 500, 0.25)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "eager"}, "mode: must be 'background' or 'sync'"),
        ({"window_bars": 0}, "window_bars: must be > 0"),
        ({"window_bars": 10**7}, "window_bars: must be <= 100000"),
        ({"max_concurrent_requests": True}, "max_concurrent_requests: must be an integer"),
        ({"max_attempts": 0}, "max_attempts: must be > 0"),
        ({"retry_backoff_ms": -1}, "retry_backoff_ms: must be >= 0"),
        ({"jitter_ratio": 2}, r"jitter_ratio: must be within \[0, 1\]"),
        ({"jitter_ratio": "x"}, "jitter_ratio: must be a number"),
    ],
)
def test_backfill_out_of_range_values_are_not_clamped(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        BackfillConfig(**kwargs)  # type: ignore[arg-type]


def test_backfill_old_key_names_are_unknown() -> None:
    with pytest.raises(TypeError, match="retry_max"):
        BackfillConfig(retry_max=3)  # type: ignore[call-arg]


def test_rate_limiter_defaults_match_spec() -> None:
    c = RateLimiterConfig()
    assert (c.tokens_per_interval, c.interval_ms, c.burst_tokens) == (1200, 60_000, 200)
    assert (c.local_semaphore, c.penalty_backoff_ms, c.min_interval_ms) == (10, 5000, 0)
    assert c.key_template == "ccxt:{exchange}:{account?}" and c.redis_dsn is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tokens_per_interval": 0}, "tokens_per_interval: must be an integer > 0"),
        ({"burst_tokens": -1}, "burst_tokens: must be an integer > 0"),
        ({"penalty_backoff_ms": -1}, "penalty_backoff_ms: must be an integer >= 0"),
        ({"key_template": "ccxt:{host}"}, r"unknown placeholder\(s\) \['host'\]"),
        ({"redis_dsn": "http://x"}, "redis_dsn: unsupported scheme"),
    ],
)
def test_rate_limiter_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimiterConfig(**kwargs)  # type: ignore[arg-type]


def test_key_template_rendering() -> None:
    assert render_key("ccxt:{exchange}:{account?}", "Binance") == "ccxt:binance"
    assert render_key("ccxt:{exchange}:{account?}", "Binance", "a1") == "ccxt:binance:a1"
    assert render_key("rl/{exchange_id}", "BinanceUS") == "rl/BinanceUS"
