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
