"""Rate-limiter benchmarks: cluster utilization of one shared budget, and acquire overhead.

    python bench/limiter.py [--seconds 20] [--processes 1,2,4,8] [--iterations 20000]

**Utilization.** For each process count N, N spawned processes (3 fetch loops each) backfill
1m windows from the exchange simulator (in this process) through the Redis limiter, all on
one key: ``tokens_per_interval`` = 50 per ``interval_ms`` = 10 s (5 weight/s), burst 20.
Markets are loaded before the start (past the limiter), then the key is deleted (a full
bucket) and the simulator reset; klines (weight 2) are what is measured. Utilization =
weight the simulator admitted during the ``--seconds`` after the start ÷ what the bucket
allows in that span (burst + rate × span) — the limiter's own budget, because a fixed-minute
exchange window cannot be filled by a 20 s run. The simulator's limit per fixed minute is
set to the most the bucket can spend in any minute (6 × 50 + 20 = 320), so a 429 would mean
the cluster overspent its budget (target: none, utilization ≥ 0.95).

**Overhead.** Mean time of ``async with limiter.acquire(1)`` when tokens are plentiful: the
process-local limiter (target < 20 µs) and the Redis limiter on loopback, one Lua call per
acquire (target p99 < 1 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from prometheus_client import CollectorRegistry

from qmtl.runtime.io.ccxt_rate_limiter import LocalRateLimiter
from qmtl.runtime.io.redis_rate_limiter import RedisRateLimiter
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.services.exchange_sim import Scenario, SimulatorServer, run_simulator
from qmtl.testing.limiter_load import LoadSpec, run_cluster
from qmtl.testing.servers import RedisServer

__all__ = ["bench_overhead", "bench_utilization", "main"]

TOKENS, INTERVAL_MS, BURST = 50, 10_000, 20
EXCHANGE_LIMIT = TOKENS * 60_000 // INTERVAL_MS + BURST


async def bench_utilization(
    sim: SimulatorServer, dsn: str, processes: int, seconds: float
) -> dict[str, Any]:
    scenario = sim.scenario
    config = RateLimiterConfig(
        tokens_per_interval=TOKENS,
        interval_ms=INTERVAL_MS,
        burst_tokens=BURST,
        redis_dsn=dsn,
        expected_workers=processes,
        key_template=f"bench-{processes}:{{exchange}}",
    )
    specs = [
        LoadSpec(
            base_url=sim.base_url,
            rate_limiter=config,
            seconds=seconds,
            worker=i,
            warm_markets=True,
        )
        for i in range(processes)
    ]

    async def fresh_start() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(dsn)
        await client.delete(f"bench-{processes}:binance")
        await client.aclose()
        sim.set_scenario(scenario)  # the weight window, bans and counters start afresh
        sim.request_log.reset()

    t0, reports = await run_cluster(specs, before_start=fresh_start)
    admitted = sum(
        r.weight
        for r in sim.request_log.requests
        if r.status == 200 and t0 * 1000 <= r.at_ms < (t0 + seconds) * 1000
    )
    allowed = BURST + TOKENS / INTERVAL_MS * seconds * 1000
    statuses = sim.request_log.statuses()
    shares = sorted(len(r.issued_at) for r in reports)
    figures = {
        "processes": processes,
        "admitted": admitted,
        "allowed": allowed,
        "utilization": admitted / allowed,
        "429": statuses[429],
        "418": statuses[418],
        "requests_per_process": (shares[0], shares[-1]),
    }
    print(
        f"utilization  N={processes}: {admitted:4d} / {allowed:.0f} weight = "
        f"{figures['utilization']:.3f}  429s={statuses[429]} 418s={statuses[418]}  "
        f"requests per process {shares[0]}..{shares[-1]}"
    )
    return figures


async def bench_overhead(dsn: str, iterations: int) -> dict[str, float]:
    config = RateLimiterConfig(
        tokens_per_interval=10**9, interval_ms=1000, burst_tokens=10**9, redis_dsn=dsn
    )
    local = LocalRateLimiter(config, "bench:local", metrics=SeamlessMetrics(CollectorRegistry()))
    for _ in range(1000):  # warm-up
        async with local.acquire(1):
            pass
    start = time.perf_counter()
    for _ in range(iterations):
        async with local.acquire(1):
            pass
    local_us = (time.perf_counter() - start) / iterations * 1e6

    redis = RedisRateLimiter(config, "bench:redis", metrics=SeamlessMetrics(CollectorRegistry()))
    samples: list[float] = []
    try:
        for i in range(iterations // 4 + 200):
            begin = time.perf_counter()
            async with redis.acquire(1):
                pass
            if i >= 200:  # after warm-up (connection, script load)
                samples.append((time.perf_counter() - begin) * 1e6)
    finally:
        await redis.aclose()
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"acquire overhead  local: mean {local_us:.1f} µs (target < 20 µs)")
    print(
        f"acquire overhead  redis: p50 {p50:.0f} µs, p99 {p99:.0f} µs over {len(samples)} "
        "calls (target p99 < 1000 µs)"
    )
    return {"local_mean_us": local_us, "redis_p50_us": p50, "redis_p99_us": p99}


async def _main(args: argparse.Namespace) -> None:
    server = await asyncio.to_thread(lambda: RedisServer().start())
    try:
        print(
            f"budget: {TOKENS} weight per {INTERVAL_MS} ms + burst {BURST}; simulator limit "
            f"{EXCHANGE_LIMIT} per fixed minute; {args.seconds:.0f} s per run"
        )
        scenario = Scenario.from_dict(
            {"symbols": ["BTC/USDT"], "weight_limit_per_minute": EXCHANGE_LIMIT}
        )
        async with run_simulator(scenario) as sim:
            for n in args.processes:
                await bench_utilization(sim, server.dsn, n, args.seconds)
        await bench_overhead(server.dsn, args.iterations)
    finally:
        await asyncio.to_thread(server.close)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--processes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8]
    )
    parser.add_argument("--iterations", type=int, default=20_000)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
