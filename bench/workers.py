"""Backfill with 1, 2, 4 ``qmtl-seamless worker`` processes sharing one exchange budget.

    python bench/workers.py [--workers 1 2 4] [--days 240] [--symbols 4] [--latency-ms 100]
    python bench/workers.py --quick      # 14 days: a smoke run, too short to judge

For each worker count, a fresh setup (as tests/test_worker_cluster.py wires it): the exchange
simulator in this process on a real port (``--latency-ms`` added to every answer, its own
Binance limit of 6000 weight per minute), one coordinator subprocess (SQLite leases), one
PostgreSQL hot store (a new database per run, since several processes write it) and one Redis
holding the shared bucket (``seamless.rate_limit`` with ``redis_dsn``; a new key per run).
The budget — ``--tokens`` weight per ``--interval-ms`` (rate r), bucket capacity ``--burst``
(B) — is far below the simulator's limit, so the budget is the bottleneck.

What is measured per run:

- *admitted* weight: what the simulator answered 200 (klines; ``other``: the ``exchangeInfo``
  market loads, weight 20, one per worker that fetched anything — ``loads``).
- *charged* weight: what the limiter took from the shared bucket, i.e. the costs of the run
  key's ``reserve`` calls, read from Redis with MONITOR (the bench loads the bucket script
  first, so no call is a NOSCRIPT retry). Admitted weight not charged would bypass the budget.
- ``T0``: the first ``reserve`` (Redis clock): the bucket, full at B, starts being drawn. The
  first *request* comes later: a market load of weight 20 with B = 2 is charged in pieces and
  waits (20 − 2) / r = 0.45 s (r = 40/s) for its tokens before it is sent. Every worker that
  fetches loads markets once: spent budget, counted as such (``klines wt`` is the useful part).
- ``t_last``: when the last admitted request was sent (the simulator's stamp, taken after the
  simulated latency, minus ``--latency-ms``: never earlier than the real send).

A token bucket never grants more than B + r·(t − T0) from T0 to t (its level never exceeds B,
and a grant is due only once covered), so

    util(active) = admitted weight / (B + r·(t_last − T0))

is at most 1 for a limiter that keeps its budget (above 1: weight leaked past it) and is 1 only
if the bucket never sat full, i.e. no budget went unused. **The ≥ 0.95 target is judged on
util(active), for every worker count**: a deployed worker is long-lived and pays its start-up
once, and the budget is what the workers share, so the question is whether, once they ask, they
spend all of it. (The old figure divided by r·(last − first request); the market load's tokens,
earned before the first request, fell outside that span and a perfect limiter scored 1.10.)

    util(wall) = admitted weight / (B + r·wall)

with ``wall`` = workers launched → last one exited, printed but not judged: it includes process
start-up (``in``: launch → T0; about 2–2.5 s of imports — pandas, ccxt, aiohttp — on an idle
core, several times that with 4 workers on 2 cores) and exit (``out``: t_last → last exit).
The default ``--days`` makes the active span over a minute (start-up and exit are then 5–15 %
of wall, the most with 4 workers); ``--quick`` is a smoke run: its active span is ~5 s, shorter
than the start-up of 4 workers, so late workers find nothing left to fetch.

The steady state (the same ratio over the active span less its first and last 10 s) was
measured at 0.9995–1.0007 against util(active) 0.998–1.000 for 1, 2 and 4 workers: start and end
of the active span lose no budget worth reporting, so it is not printed.

Also per run: 429/418 answers (must be 0), klines windows fetched more than once (must be 0) and
bars the workers report missing (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from qmtl.runtime.io.redis_rate_limiter import TOKEN_BUCKET_LUA
from qmtl.services.exchange_sim import Scenario, SimulatorServer, run_simulator
from qmtl.testing.cluster import coordinator_process, start_worker, worker_config
from qmtl.testing.servers import PostgresServer, RedisServer

DAY = 86_400
START = 1_704_067_200  # 2024-01-01


def _config(
    path: Path, *, sim: str, coordinator: str, redis: str, symbols: list[str], run: str,
    workers: int, args: argparse.Namespace,
) -> Path:  # fmt: skip
    rate_limit = {
        "tokens_per_interval": args.tokens, "interval_ms": args.interval_ms,
        "burst_tokens": args.burst, "expected_workers": workers,
        "key_template": f"bench-{run}:{{exchange}}",
    }  # fmt: skip
    backfill = {"window_bars": args.window_bars, "max_concurrent_requests": 8}
    return worker_config(
        path, symbols=symbols, timeframes=["1m"], rest=sim, coordinator=coordinator, redis=redis,
        seamless={"rate_limit": rate_limit, "backfill": backfill},
    )  # fmt: skip


class BudgetMonitor:
    """The shared bucket's charges, read with Redis MONITOR: every ``reserve`` of one key, with
    its Redis time and cost. ``async with``; :meth:`stop` drains the stream up to a marker."""

    def __init__(self, dsn: str, key: str) -> None:
        self.key = key
        # No read timeout (redis-py's default is 5 s): the stream is silent while workers start.
        self.client = aioredis.Redis.from_url(dsn, socket_timeout=None)
        self.reserves: list[tuple[float, float]] = []  # (Redis time s, cost)
        self._marker = f"bench-end-{key}"
        self._task: asyncio.Task[None] | None = None
        self._monitor: Any = None

    async def __aenter__(self) -> BudgetMonitor:
        # Loaded now, the workers' first EVALSHA never fails with NOSCRIPT (no double count).
        await self.client.script_load(TOKEN_BUCKET_LUA)
        self._monitor = self.client.monitor()
        await self._monitor.__aenter__()
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for info in self._monitor.listen():
            parts = info["command"].split(" ")
            if parts[:2] == ["ECHO", self._marker]:
                return
            # EVALSHA sha numkeys key op rate capacity [cost ...] (not the script's own calls)
            if info["client_type"] == "lua" or len(parts) < 5 or parts[0].upper() != "EVALSHA":
                continue
            if parts[3] == self.key and parts[4] == "reserve":
                self.reserves.append((info["time"], float(parts[7])))

    async def stop(self) -> None:
        assert self._task is not None
        await self.client.echo(self._marker)
        await asyncio.wait_for(self._task, 30)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._monitor.__aexit__(*exc)
        await self.client.aclose()


async def run_once(
    sim: SimulatorServer, pg: PostgresServer, redis_dsn: str, workers: int,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    symbols = [f"S{i:03d}/USDT" for i in range(args.symbols)]
    end = START + args.days * DAY
    run = f"w{workers}_{int(time.time() * 1000)}"
    dsn = await asyncio.to_thread(pg.create_database, run)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with (
            coordinator_process(f"sqlite:///{tmp / 'leases.db'}") as coord,
            BudgetMonitor(redis_dsn, f"bench-{run}:binance") as budget,
        ):
            config = _config(
                tmp / "worker.yaml", sim=sim.base_url, coordinator=coord, redis=redis_dsn,
                symbols=symbols, run=run, workers=workers, args=args,
            )  # fmt: skip
            sim.set_scenario(sim.scenario)  # weight window, bans and counters afresh
            sim.request_log.reset()
            began, launched = time.perf_counter(), time.time()
            procs = [
                await start_worker(config, dsn=dsn, start=START, end=end, name=f"w{i}", poll_s=0.2)
                for i in range(workers)
            ]
            results = await asyncio.gather(*(p.communicate() for p in procs))
            wall = time.perf_counter() - began
            exited = time.time()
            await budget.stop()
    missing = 0
    for proc, (out, err) in zip(procs, results, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"worker exited {proc.returncode}: {err.decode()[-2000:]}")
        missing += sum(int(n["missing"]) for n in json.loads(out)["nodes"])
    log = sim.request_log
    admitted = [r for r in log.requests if r.status == 200]
    if not admitted or not budget.reserves:
        raise RuntimeError("no request admitted or no reserve seen: nothing to measure")
    klines_weight = sum(r.weight for r in admitted if "klines" in r.path)
    other_weight = sum(r.weight for r in admitted if "klines" not in r.path)
    spent = klines_weight + other_weight
    t0 = budget.reserves[0][0]
    sent = sorted(r.at_ms / 1000 - args.latency_ms / 1000 for r in admitted)
    active = sent[-1] - t0
    windows = Counter((k.symbol, k.interval, k.start_time) for k in log.klines if k.status == 200)
    statuses = log.statuses()
    rate = args.tokens / args.interval_ms * 1000  # weight per second
    return {
        "workers": workers,
        "loads": sum(1 for r in admitted if "exchangeInfo" in r.path),
        "wall_s": wall,
        "active_s": active,
        "lead_in_s": t0 - launched,
        "lead_out_s": exited - sent[-1],
        "klines_requests": sum(windows.values()),
        "klines_weight": klines_weight,
        "other_weight": other_weight,
        "charged_weight": sum(cost for _, cost in budget.reserves),
        "utilization": spent / (args.burst + rate * wall),
        "utilization_active": spent / (args.burst + rate * active),
        "http_429": statuses[429],
        "http_418": statuses[418],
        "fetched_twice": sum(1 for n in windows.values() if n > 1),
        "missing": missing,
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'workers':>7} {'loads':>5} {'wall s':>7} {'in s':>5} {'active s':>8} {'out s':>5} "
        f"{'klines req':>10} {'klines wt':>9} {'other wt':>8} {'charged wt':>10} "
        f"{'util(wall)':>10} {'util(active)':>12} {'429/418':>7} {'twice':>5} {'missing':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['workers']:>7} {r['loads']:>5} {r['wall_s']:>7.2f} {r['lead_in_s']:>5.2f} "
            f"{r['active_s']:>8.2f} {r['lead_out_s']:>5.2f} {r['klines_requests']:>10} "
            f"{r['klines_weight']:>9} {r['other_weight']:>8} {r['charged_weight']:>10g} "
            f"{r['utilization']:>10.3f} {r['utilization_active']:>12.3f} "
            f"{r['http_429']:>3}/{r['http_418']:<3} {r['fetched_twice']:>5} {r['missing']:>7}"
        )


async def _main(args: argparse.Namespace) -> None:
    symbols = [f"S{i:03d}/USDT" for i in range(args.symbols)]
    scenario = Scenario.from_dict(
        {"seed": 1, "symbols": symbols, "latency_ms": args.latency_ms,
         "weight_limit_per_minute": args.weight_limit}
    )  # fmt: skip
    rate = args.tokens / args.interval_ms * 1000
    bars = args.symbols * args.days * 1440
    print(
        f"budget: {args.tokens} weight per {args.interval_ms} ms ({rate:g}/s), bucket capacity "
        f"{args.burst}, one Redis key; simulator limit {args.weight_limit}/min, latency "
        f"{args.latency_ms:g} ms; {args.symbols} symbols x {args.days} days of 1m = {bars:,} "
        f"bars in windows of {args.window_bars}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at start"
    )
    redis = await asyncio.to_thread(lambda: RedisServer().start())
    pg = await asyncio.to_thread(lambda: PostgresServer().start())
    rows = []
    try:
        async with run_simulator(scenario) as sim:
            for n in args.workers:
                rows.append(await run_once(sim, pg, redis.dsn, n, args))
                print(f"  ran {n} worker(s): {rows[-1]['wall_s']:.2f} s", flush=True)
    finally:
        await asyncio.to_thread(pg.close)
        await asyncio.to_thread(redis.close)
    print(f"load average at end: {os.getloadavg()[0]:.2f}\n")
    _print_table(rows)
    clean = all(
        r["http_429"] == 0 and r["http_418"] == 0 and r["fetched_twice"] == 0 and not r["missing"]
        for r in rows
    )
    kept = all(r["klines_weight"] + r["other_weight"] <= r["charged_weight"] for r in rows)
    utils = [r["utilization_active"] for r in rows]
    target = "OVER BUDGET" if max(utils) > 1 else "BELOW TARGET" if min(utils) < 0.95 else "ok"
    print(
        f"\nzero 429/418, zero windows fetched twice, nothing missing: "
        f"{'ok' if clean else 'FAILED'}\n"
        f"every admitted weight charged to the shared budget: {'ok' if kept else 'LEAK'}\n"
        f"util(active) in [0.95, 1] for every worker count (the target; util(wall) is printed "
        f"for reference: it counts start-up and exit, paid once by a long-lived worker): "
        f"{target}"
    )
    if min(r["active_s"] for r in rows) < 60:
        print(
            "note: active span under 60 s — start-up is not amortized and late workers may "
            "find nothing left to fetch (see loads); run without --quick to judge"
        )
    print("reproduce: " + " ".join([".venv/bin/python", "bench/workers.py", *sys.argv[1:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument(
        "--days", type=int, default=240, help="1m days per symbol (240: ~70 s of budget)"
    )
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--tokens", type=int, default=40, help="budget weight per interval")
    parser.add_argument("--interval-ms", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=2, help="bucket capacity")
    parser.add_argument("--window-bars", type=int, default=1000)
    parser.add_argument("--weight-limit", type=int, default=6000)
    parser.add_argument(
        "--quick", action="store_true", help="14 days: a smoke run, too short to judge"
    )
    args = parser.parse_args()
    if args.quick:
        args.days = 14
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
