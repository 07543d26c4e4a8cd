"""The Redis limiter on a real redis-server: the Lua script against the pure arithmetic, atomic
takes from many tasks and OS processes, shared penalties, keys and TTLs, usage resync, and
surviving an outage (the server is stopped and restarted mid-test)."""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.ccxt_rate_limiter import DEFAULT_BAN_MS, get_limiter
from qmtl.runtime.io.redis_rate_limiter import RedisRateLimiter
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.testing.limiter_load import reserve_in_process, run_reservers
from qmtl.testing.servers import RedisServer
from tests.bucket_cases import CASES, Case, absolute, run_pure
from tests.polling import wait_until

Make = Callable[..., tuple[RedisRateLimiter, CollectorRegistry]]
UNAVAILABLE = "seamless.rate_limit.redis_unavailable"
RESTORED = "seamless.rate_limit.redis_restored"


def settings(dsn: str, **overrides: Any) -> RateLimiterConfig:
    """10 tokens/s, burst 5 (the shared table's RATE and CAP) unless overridden."""
    values = {"tokens_per_interval": 10, "interval_ms": 1000, "burst_tokens": 5, **overrides}
    return RateLimiterConfig(redis_dsn=dsn, **values)


@pytest.fixture
async def make(redis_dsn: str) -> AsyncIterator[Make]:
    made: list[RedisRateLimiter] = []

    def factory(
        key: str = "ccxt:test", *, reconnect_interval_s: float = 0.2, **overrides: Any
    ) -> tuple[RedisRateLimiter, CollectorRegistry]:
        registry = CollectorRegistry()
        limiter = RedisRateLimiter(
            settings(redis_dsn, **overrides),
            key,
            metrics=SeamlessMetrics(registry),
            reconnect_interval_s=reconnect_interval_s,
        )
        made.append(limiter)
        return limiter, registry

    yield factory
    for limiter in made:
        await limiter.aclose()


@pytest.fixture
async def client(redis_dsn: str) -> AsyncIterator[Any]:
    redis = aioredis.Redis.from_url(redis_dsn)
    yield redis
    await redis.aclose()


async def server_ms(redis: Any) -> float:
    seconds, micros = await redis.time()
    return float(seconds) * 1000 + micros / 1000


def assert_within_budget(
    grants: Sequence[tuple[float, float]], window_ms: float, budget: float
) -> None:
    """Every window of ``window_ms`` starting at a due instant holds at most ``budget``."""
    grants = sorted(grants)
    j, spent = 0, 0.0
    for i, (start, _) in enumerate(grants):
        while j < len(grants) and grants[j][0] < start + window_ms:
            spent += grants[j][1]
            j += 1
        assert spent <= budget + 1e-6, f"{spent} tokens due within {window_ms} ms of {start}"
        spent -= grants[i][1]


# --- the script is the pure arithmetic --------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_lua_agrees_with_the_pure_functions(case: Case, make: Make, client: Any) -> None:
    limiter, _ = make()
    state = absolute(case, await server_ms(client))
    if state is not None:
        await client.hset(
            limiter.key,
            mapping={
                "tokens": repr(state.tokens),
                "updated_ms": repr(state.updated_ms),
                "not_before_ms": repr(state.not_before_ms),
            },
        )
    reply = await limiter.run_script(case.op, *case.args)
    expected = run_pure(state, reply.now_ms, case.op, case.args)
    got = (reply.tokens, reply.updated_ms, reply.not_before_ms, reply.due_ms)
    assert got == pytest.approx(expected, abs=1e-3)
    stored = await client.hgetall(limiter.key)
    if reply.applied:
        assert float(stored[b"tokens"]) == reply.tokens
        assert float(stored[b"updated_ms"]) == reply.updated_ms
        assert float(stored[b"not_before_ms"]) == reply.not_before_ms
    elif state is None:
        assert stored == {}  # reads never create the key
    else:
        assert float(stored[b"tokens"]) == state.tokens  # nor change it


async def test_idle_keys_expire_after_refill_and_pause(make: Make, client: Any) -> None:
    limiter, _ = make()
    await limiter.run_script("reserve", 5)  # empty: 500 ms to refill -> 2 * 500 + 1000
    assert 1900 < await client.pttl(limiter.key) <= 2000
    await limiter.run_script("penalize", 10_000)  # + the pause
    assert 21_000 < await client.pttl(limiter.key) <= 22_000
    fast, _ = make("ccxt:fast", tokens_per_interval=1000, burst_tokens=1)
    await fast.run_script("reserve", 1)  # 1 ms to refill -> ~1 s
    await asyncio.sleep(1.1)
    assert await client.exists(fast.key) == 0


async def test_key_template_with_and_without_account(redis_dsn: str, client: Any) -> None:
    metrics = SeamlessMetrics(CollectorRegistry())
    config = RateLimiterConfig(redis_dsn=redis_dsn)
    custom = RateLimiterConfig(redis_dsn=redis_dsn, key_template="rl:{exchange_id}:{account?}")
    limiters = [
        get_limiter(config, "Binance", "acct-1", metrics=metrics, env={}),
        get_limiter(config, "Binance", metrics=metrics, env={}),
        get_limiter(custom, "Binance", "a", metrics=metrics, env={}),
    ]
    try:
        for limiter in limiters:
            assert isinstance(limiter, RedisRateLimiter)
            async with limiter.acquire(1):
                pass
    finally:
        for limiter in limiters:
            await limiter.aclose()
    keys = sorted(k.decode() for k in await client.keys("*"))
    assert keys == ["ccxt:binance", "ccxt:binance:acct-1", "rl:Binance:a"]


def test_missing_redis_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"pip install 'qmtl-seamless\[redis\]'"):
        RedisRateLimiter(settings("redis://127.0.0.1:1/0"), "k")


# --- atomic check-and-take --------------------------------------------------------------------


async def test_many_tasks_on_several_clients_never_exceed_the_budget(make: Make) -> None:
    limiters = [make(tokens_per_interval=100, burst_tokens=20)[0] for _ in range(3)]
    costs = [1 + (i * 7) % 3 for i in range(12)]
    batches = await asyncio.gather(*(reserve_in_process(limiters[i % 3], costs) for i in range(30)))
    grants = [g for batch in batches for g in batch]
    assert_within_budget(grants, 1000, 100 + 20)
    # and nothing is wasted: the last grant is due when the total has refilled
    span = max(d for d, _ in grants) - min(d for d, _ in grants)
    assert span == pytest.approx((sum(c for _, c in grants) - 20) / 0.1, rel=0.05)


async def test_several_processes_never_exceed_the_budget(redis_dsn: str) -> None:
    config = settings(redis_dsn, tokens_per_interval=100, burst_tokens=20)
    grants = await run_reservers(config, "ccxt:procs", processes=3, count=150)
    assert len(grants) == 450
    assert_within_budget(grants, 1000, 100 + 20)


async def test_slots_and_spacing_stay_per_process(make: Make) -> None:
    limiter, _ = make(tokens_per_interval=1000, burst_tokens=100, min_interval_ms=50)
    other, _ = make(tokens_per_interval=1000, burst_tokens=100)
    starts: list[float] = []

    async def one() -> None:
        async with limiter.acquire(1):
            starts.append(time.monotonic())

    async with other.acquire(1):  # another process on the key is not spaced by ours
        pass
    before = time.monotonic()
    await asyncio.gather(*(one() for _ in range(4)))
    # Lower bounds only: the i-th grant comes at least i spacings after the first, which
    # comes after `before`; a busy machine can record a grant late, never early.
    since = sorted(t - before for t in starts)
    assert all(s >= 0.045 * i for i, s in enumerate(since)), since


# --- penalties --------------------------------------------------------------------------------


async def test_a_429_pauses_every_instance_and_requeues_sleepers(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    a, registry = make(penalty_backoff_ms=600)
    b, _ = make(penalty_backoff_ms=600)
    c, _ = make(penalty_backoff_ms=600)
    async with b.acquire(5):  # empty the shared bucket
        pass
    issued: dict[str, float] = {}

    async def take(name: str, limiter: RedisRateLimiter) -> None:
        async with limiter.acquire(1):
            issued[name] = time.monotonic()

    sleeper = asyncio.create_task(take("sleeper", b))  # reserved: due in ~100 ms
    await asyncio.sleep(0.03)
    with caplog.at_level(logging.WARNING, logger="qmtl"):
        penalized_at = time.monotonic()
        assert await a.penalize(429, 0.2) == 600  # penalty_backoff_ms beats Retry-After
    await asyncio.gather(sleeper, take("newcomer", c))
    assert min(issued.values()) - penalized_at >= 0.6
    (record,) = [r for r in caplog.records if r.getMessage() == "seamless.rate_limit.penalty"]
    assert (record.status, record.penalty_ms, record.levelno) == (429, 600, logging.WARNING)  # type: ignore[attr-defined]
    labels = {"key": "ccxt:test", "status": "429"}
    assert registry.get_sample_value("seamless_rl_penalty_total", labels) == 1


async def test_418_without_retry_after_bans_the_key_everywhere(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = make()
    b, b_registry = make()
    with caplog.at_level(logging.ERROR, logger="qmtl"):
        assert await a.penalize(418, None) == DEFAULT_BAN_MS
    (record,) = [r for r in caplog.records if r.getMessage() == "seamless.rate_limit.penalty"]
    assert (record.levelno, record.status) == (logging.ERROR, 418)  # type: ignore[attr-defined]
    check = await b.run_script("check")
    assert check.paused
    assert check.not_before_ms - check.now_ms == pytest.approx(DEFAULT_BAN_MS, abs=100)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3), b.acquire(1):
            pytest.fail("nothing may be issued during a ban")
    assert b_registry.get_sample_value("seamless_rl_dropped_total", {"key": b.key}) == 1


# --- usage header resync ----------------------------------------------------------------------


async def test_usage_report_clamps_the_shared_bucket(make: Make) -> None:
    """Others spent 150 of the 160 a 10 s window allows (rate 0.01/ms, burst 60): whatever
    the bucket can still grant before the window ends stays within the 10 left."""
    a, _ = make(tokens_per_interval=600, interval_ms=60_000, burst_tokens=60)
    b, _ = make(tokens_per_interval=600, interval_ms=60_000, burst_tokens=60)
    now = (await a.run_script("check")).now_ms
    phase = now % 10_000
    if not 1200 < phase < 9000:  # keep out of the grace second and of the window's end
        await asyncio.sleep(((1200 - phase) % 10_000) / 1000)
    await a.observe_usage(150, window_ms=10_000)
    check = await b.run_script("check")
    rest = (math.floor(check.now_ms / 10_000) + 1) * 10_000 - check.now_ms
    assert check.tokens + 0.01 * rest == pytest.approx(10, abs=0.5)  # grants before the end
    unchanged = await a.run_script("sync", 1000, 10_000, 0, 0)  # plenty left: never adds
    assert not unchanged.applied


# --- outage -----------------------------------------------------------------------------------


async def test_outage_falls_back_at_the_process_share_and_recovers(
    make: Make, redis_server: RedisServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    limiter, registry = make(tokens_per_interval=40, burst_tokens=8, expected_workers=4)

    def gauge() -> float | None:
        return registry.get_sample_value("seamless_rl_redis_available", {"key": limiter.key})

    async with limiter.acquire(1):
        pass
    assert limiter.available and gauge() == 1
    caplog.set_level(logging.INFO, logger="qmtl")
    await asyncio.to_thread(redis_server.stop)
    started = time.monotonic()
    for _ in range(6):
        async with limiter.acquire(1):
            pass
    # the fallback starts empty and refills at 40 / 4 = 10 tokens/s (full rate: 0.15 s)
    assert time.monotonic() - started == pytest.approx(0.6, abs=0.15)
    assert not limiter.available and gauge() == 0
    await asyncio.to_thread(redis_server.start)
    await wait_until(lambda: limiter.available, timeout_s=5)
    assert gauge() == 1
    async with limiter.acquire(1):
        pass
    events = [r.getMessage() for r in caplog.records if "redis_" in r.getMessage()]
    assert events == [UNAVAILABLE, RESTORED]
    # The restarted (empty) server holds the key again: the fallback's unrefilled spend was
    # charged to it and this request taken from it.
    assert float(await client.hget(limiter.key, "tokens")) <= 8 - 1


async def test_penalty_during_an_outage_is_pushed_to_redis_on_restore(
    make: Make, redis_server: RedisServer
) -> None:
    limiter, _ = make(penalty_backoff_ms=5000)
    other, _ = make()
    await asyncio.to_thread(redis_server.stop)
    await limiter.penalize(429, None)  # Redis down: the fallback holds the pause
    assert not limiter.available
    await asyncio.to_thread(redis_server.start)
    await wait_until(lambda: limiter.available, timeout_s=5)
    check = await other.run_script("check")
    assert check.paused and check.not_before_ms - check.now_ms > 3000
