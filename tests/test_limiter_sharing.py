"""One limiter per key per process, and penalties decided by the HTTP status.

Regressions: two fetchers of one exchange in one process each built a full bucket (together
twice the budget); a 429 that ccxt raised as ``RateLimitExceeded`` or (OKX)
``ExchangeNotAvailable`` was not treated as a rate limit unless it was a ``DDoSProtection``.
"""

from __future__ import annotations

import asyncio

import ccxt
import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher, translate_ccxt_error
from qmtl.runtime.io.ccxt_rate_limiter import SharedLimiter, shared_limiter
from qmtl.runtime.io.local_rate_limiter import LocalRateLimiter
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.errors import ExchangeRateLimitError, ExchangeUnavailableError
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.services.exchange_sim import Scenario, run_simulator

BUDGET = RateLimiterConfig(tokens_per_interval=10, interval_ms=1000, burst_tokens=5)


async def test_fetchers_of_one_exchange_share_one_bucket() -> None:
    clock = FakeClock(start=0.0)
    metrics = SeamlessMetrics(CollectorRegistry())
    config = CcxtBackfillConfig(exchange_id="binance", rate_limiter=BUDGET)
    first = CcxtOHLCVFetcher(config, clock=clock, metrics=metrics)
    second = CcxtOHLCVFetcher(config, clock=clock, metrics=metrics)
    assert isinstance(first.limiter, SharedLimiter) and isinstance(second.limiter, SharedLimiter)
    assert first.limiter.limiter is second.limiter.limiter
    issued: list[float] = []

    async def spend(fetcher: CcxtOHLCVFetcher) -> None:
        for _ in range(10):
            async with fetcher.limiter.acquire(1):
                issued.append(clock.now())

    tasks = [asyncio.create_task(spend(f)) for f in (first, second)]
    await clock.run_until(lambda: all(t.done() for t in tasks))
    # 20 requests on one budget: 5 at once (the burst), then 10 a second -> the last at 1.5 s.
    # Two private buckets would have finished at 0.5 s.
    assert sorted(issued)[:5] == [0.0] * 5
    assert max(issued) == pytest.approx(1.5)
    shared = first.limiter.limiter
    await first.aclose()
    assert second.limiter.limiter is shared  # still held by the second fetcher
    await second.aclose()


async def test_a_released_key_starts_afresh_and_other_settings_are_refused() -> None:
    clock = FakeClock(start=0.0)
    one = shared_limiter(BUDGET, "binance", clock=clock, env={})
    two = shared_limiter(BUDGET, "binance", clock=clock, env={})
    assert one.limiter is two.limiter and isinstance(one.limiter, LocalRateLimiter)
    other_account = shared_limiter(BUDGET, "binance", "acct-2", clock=clock, env={})
    assert other_account.limiter is not one.limiter  # another key, another budget
    with pytest.raises(ValueError, match="already in use in this process with other settings"):
        shared_limiter(RateLimiterConfig(), "binance", clock=clock, env={})
    for handle in (one, two, other_account):
        await handle.aclose()
    again = shared_limiter(RateLimiterConfig(), "binance", clock=clock, env={})
    assert again.limiter is not one.limiter
    await again.aclose()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ccxt.RateLimitExceeded("binance 429"), 429),
        (ccxt.ExchangeNotAvailable("okx 429 Too Many Requests"), 429),  # OKX's choice
        (ccxt.ExchangeNotAvailable("binance 418 I'm a teapot"), 418),
    ],
)
def test_penalty_follows_the_http_status_whatever_the_class(
    error: ccxt.BaseError, status: int
) -> None:
    error.http_status = status  # type: ignore[attr-defined]  # what create_exchange attaches
    error.retry_after_s = 3.0  # type: ignore[attr-defined]
    translated = translate_ccxt_error(error, node_id=None, window=None)
    assert isinstance(translated, ExchangeRateLimitError)
    assert (translated.http_status, translated.retry_after_s) == (status, 3.0)
    plain = ccxt.ExchangeNotAvailable("okx 503")
    plain.http_status = 503  # type: ignore[attr-defined]
    assert type(translate_ccxt_error(plain, node_id=None, window=None)) is ExchangeUnavailableError


async def test_two_fetchers_against_the_simulator_stay_within_one_budget() -> None:
    """End to end on the real clock: two fetchers of one process spend one budget of 40
    weight a second (burst 2). 20 klines (weight 2) and two market loads (weight 20) are 80
    weight. The first grant (a market load) is due after (20 - 2) / 40 s; the other 60 weight
    follow over 1.5 s on one bucket, 0.5 s on two private ones."""
    budget = RateLimiterConfig(tokens_per_interval=40, interval_ms=1000, burst_tokens=2)
    async with run_simulator(Scenario.from_dict({"symbols": ["BTC/USDT"]})) as sim:
        config = CcxtBackfillConfig(
            exchange_id="binance", urls={"rest": sim.base_url}, rate_limiter=budget
        )
        fetchers = [CcxtOHLCVFetcher(config) for _ in range(2)]
        node, start = "ohlcv:binance:BTC/USDT:1m", 1_699_000_020
        await asyncio.gather(
            *(
                f.fetch_window(start + k * 6000, start + (k + 1) * 6000, node_id=node, interval=60)
                for k in range(10)
                for f in fetchers
            )
        )
        for f in fetchers:
            await f.aclose()
        charged = [(r.at_ms, r.weight) for r in sim.request_log.requests if r.weight]
    assert sum(w for _, w in charged) == 80 and len(charged) == 22
    elapsed_s = (max(t for t, _ in charged) - min(t for t, _ in charged)) / 1000
    assert elapsed_s >= 1.2
