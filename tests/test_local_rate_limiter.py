"""The process-local limiter on a fake clock: burst, refill, slots, spacing, penalties."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.ccxt_rate_limiter import LocalRateLimiter, get_limiter, penalty_ms_for
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig


def make(clock: FakeClock, **overrides: int) -> tuple[LocalRateLimiter, CollectorRegistry]:
    settings = {"tokens_per_interval": 10, "interval_ms": 1000, "burst_tokens": 5, **overrides}
    registry = CollectorRegistry()
    limiter = LocalRateLimiter(
        RateLimiterConfig(**settings), "ccxt:test", clock=clock, metrics=SeamlessMetrics(registry)
    )
    return limiter, registry


async def issue_all(
    limiter: LocalRateLimiter, clock: FakeClock, costs: list[int], hold_s: float = 0.0
) -> list[float]:
    """Run one task per cost; return the (fake) instants their requests were issued."""
    issued: list[float] = []

    async def one(cost: int) -> None:
        async with limiter.acquire(cost):
            issued.append(clock.now())
            if hold_s:
                await clock.sleep(hold_s)

    tasks = [asyncio.create_task(one(c)) for c in costs]
    await clock.run_until(lambda: all(t.done() for t in tasks))
    await asyncio.gather(*tasks)
    return issued


async def test_burst_then_steady_rate() -> None:
    clock = FakeClock(start=0.0)
    limiter, registry = make(clock)
    issued = await issue_all(limiter, clock, [1] * 15)
    assert issued[:5] == [0.0] * 5  # the full bucket is the burst
    assert issued[5:] == pytest.approx([0.1 * i for i in range(1, 11)])  # then 10/s
    assert registry.get_sample_value("seamless_rl_tokens_available", {"key": "ccxt:test"}) == 0


async def test_weighted_costs() -> None:
    clock = FakeClock(start=0.0)
    limiter, _ = make(clock)
    issued = await issue_all(limiter, clock, [5, 5, 2])
    assert issued == pytest.approx([0.0, 0.5, 0.7])


async def test_local_semaphore_caps_in_flight() -> None:
    clock = FakeClock(start=0.0)
    limiter, _ = make(clock, local_semaphore=2, burst_tokens=100, tokens_per_interval=1000)
    issued = await issue_all(limiter, clock, [1] * 6, hold_s=1.0)
    assert issued == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


async def test_min_interval_spaces_request_starts() -> None:
    clock = FakeClock(start=0.0)
    limiter, _ = make(clock, min_interval_ms=250, burst_tokens=100, tokens_per_interval=1000)
    issued = await issue_all(limiter, clock, [1] * 4)
    assert issued == pytest.approx([0.0, 0.25, 0.5, 0.75])


async def test_429_pauses_the_key_and_requeues_waiters(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=0.0)
    limiter, registry = make(clock, penalty_backoff_ms=5000)
    async with limiter.acquire(5):  # empty the bucket
        pass
    waiters = [asyncio.create_task(issue_all(limiter, clock, [1]))]  # due at 0.1 s
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="qmtl"):
        pause = await limiter.penalize(429, 7.0)
    assert pause == 7000.0  # Retry-After beats the shorter penalty_backoff_ms
    (issued,) = await asyncio.gather(*waiters)
    assert issued[0] >= 7.0
    (record,) = [r for r in caplog.records if r.getMessage() == "seamless.rate_limit.penalty"]
    assert (record.key, record.status, record.penalty_ms) == ("ccxt:test", 429, 7000.0)  # type: ignore[attr-defined]
    assert record.levelno == logging.WARNING
    labels = {"key": "ccxt:test", "status": "429"}
    assert registry.get_sample_value("seamless_rl_penalty_total", labels) == 1.0


async def test_418_without_retry_after_bans_two_minutes(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=0.0)
    limiter, _ = make(clock)
    with caplog.at_level(logging.ERROR, logger="qmtl"):
        assert await limiter.penalize(418, None) == 120_000
    assert caplog.records[-1].levelno == logging.ERROR
    issued = await issue_all(limiter, clock, [1])
    assert issued == [pytest.approx(120.0 + 0.1)]


def test_penalty_rules() -> None:
    cfg = RateLimiterConfig(penalty_backoff_ms=5000)
    assert penalty_ms_for(429, None, cfg) == 5000
    assert penalty_ms_for(429, 2, cfg) == 5000
    assert penalty_ms_for(418, 300, cfg) == 300_000


async def test_cancelled_waiter_counts_as_dropped() -> None:
    clock = FakeClock(start=0.0)
    limiter, registry = make(clock, burst_tokens=1)
    async with limiter.acquire(1):
        pass

    async def waiter() -> None:
        async with limiter.acquire(1):
            pytest.fail("a cancelled waiter must never issue its request")

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    assert clock.next_wakeup() == pytest.approx(0.1)  # it sleeps until its token is due
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert registry.get_sample_value("seamless_rl_dropped_total", {"key": "ccxt:test"}) == 1.0


def test_get_limiter_keys_by_template() -> None:
    registry = SeamlessMetrics(CollectorRegistry())
    assert get_limiter(RateLimiterConfig(), "Binance", metrics=registry).key == "ccxt:binance"
    limiter = get_limiter(RateLimiterConfig(), "binance", "acct", metrics=registry)
    assert limiter.key == "ccxt:binance:acct"


async def test_a_request_heavier_than_the_burst_is_charged_in_full() -> None:
    clock = FakeClock(start=0.0)
    limiter, _ = make(clock)  # 10 tokens/s, burst 5
    issued = await issue_all(limiter, clock, [12, 1])
    # 12 tokens from a bucket of 5: due when the 7 missing have refilled, then 1 more.
    assert issued == pytest.approx([0.7, 0.8])


async def test_usage_header_clamps_a_fresh_bucket_to_what_the_window_has_left() -> None:
    """Others already spent 600 of a 660 budget in this minute: a fresh bucket (burst 60)
    must not spend more than the 60 left before the minute ends."""
    clock = FakeClock(start=60.0 * 28_333_333 + 20.0)  # 20 s into a minute
    window_end = clock.now() + 40.0
    limiter, registry = make(clock, tokens_per_interval=600, interval_ms=60_000, burst_tokens=60)
    await limiter.observe_usage(600)
    assert registry.get_sample_value("seamless_rl_tokens_available", {"key": "ccxt:test"}) == 0
    issued = await issue_all(limiter, clock, [1] * 100)
    assert sum(1 for t in issued if t < window_end) <= 60
    assert max(issued) > window_end  # and it carries on in the next minute


async def test_usage_header_below_the_bucket_changes_nothing() -> None:
    clock = FakeClock(start=60.0 * 28_333_333 + 20.0)
    limiter, _ = make(clock, tokens_per_interval=600, interval_ms=60_000, burst_tokens=60)
    await limiter.observe_usage(10)
    assert limiter.state is not None and limiter.state.tokens == 60  # never adds, never takes
    clock_in_grace = FakeClock(start=60.0 * 28_333_333 + 0.5)
    early, _ = make(clock_in_grace, tokens_per_interval=600, interval_ms=60_000)
    await early.observe_usage(10_000)  # within a second of the boundary: not trusted
    assert early.state is None


async def test_local_fallback_share_scales_rate_and_burst() -> None:
    clock = FakeClock(start=0.0)
    config = RateLimiterConfig(tokens_per_interval=40, interval_ms=1000, burst_tokens=8)
    limiter = LocalRateLimiter(
        config, "k", clock=clock, metrics=SeamlessMetrics(CollectorRegistry()), share=0.25
    )
    issued = await issue_all(limiter, clock, [1] * 5)
    assert issued == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])  # burst 2, then 10/s


def test_get_limiter_picks_redis_from_config_or_environment() -> None:
    from qmtl.runtime.io.redis_rate_limiter import RedisRateLimiter

    metrics = SeamlessMetrics(CollectorRegistry())
    assert isinstance(get_limiter(RateLimiterConfig(), "binance", env={}), LocalRateLimiter)
    env = {"QMTL_CCXT_RATE_LIMITER_REDIS": "redis://127.0.0.1:1/0"}
    from_env = get_limiter(RateLimiterConfig(), "binance", metrics=metrics, env=env)
    assert isinstance(from_env, RedisRateLimiter)
    assert from_env.config.redis_dsn == "redis://127.0.0.1:1/0"
    from_config = get_limiter(
        RateLimiterConfig(redis_dsn="redis://h:6379/0"), "binance", metrics=metrics, env={}
    )
    assert isinstance(from_config, RedisRateLimiter)
    with pytest.raises(ValueError, match="redis_dsn: unsupported scheme"):
        get_limiter(RateLimiterConfig(), "binance", env={"QMTL_CCXT_RATE_LIMITER_REDIS": "h:1"})


def test_a_new_limiters_counters_start_at_zero() -> None:
    """Alerts take ``increase()`` of the penalty and drop counters: a series that first
    appears at 1 hides the first 429/418 from them, so a key's series exist at 0 at once."""
    registry = CollectorRegistry()
    get_limiter(RateLimiterConfig(), "binance", metrics=SeamlessMetrics(registry))
    for status in ("429", "418"):
        labels = {"key": "ccxt:binance", "status": status}
        assert registry.get_sample_value("seamless_rl_penalty_total", labels) == 0.0
    assert registry.get_sample_value("seamless_rl_dropped_total", {"key": "ccxt:binance"}) == 0.0
