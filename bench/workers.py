"""Backfill with 1, 2, 4 ``qmtl-seamless worker`` processes sharing one exchange budget.

    python bench/workers.py [--workers 1 2 4] [--days 52] [--symbols 4] [--latency-ms 100]
    python bench/workers.py --quick

For each worker count, a fresh setup (as tests/test_worker_cluster.py wires it): the exchange
simulator in this process on a real port (``--latency-ms`` added to every answer, its own
Binance limit of 6000 weight per minute), one coordinator subprocess (SQLite leases), one
PostgreSQL hot store (a new database per run, since several processes write it) and one Redis
holding the shared bucket (``seamless.rate_limit`` with ``redis_dsn``; a new key per run).

The budget — ``--tokens`` weight per ``--interval-ms`` plus ``--burst`` — is far below the
simulator's limit, so the budget is the bottleneck: every worker count should take about the
same wall time, and a cluster should spend the budget fully.

Per run it prints: wall time (workers launched → last one exited), the weight the simulator
admitted (klines, and the rest: market loads), **utilization = weight ÷ (budget rate × wall
time)** (target ≥ 0.95 once workers > 1) and the same over the active span (first to last
request the simulator saw, i.e. without the processes' start-up and exit; ``in``/``out``: launch
→ first request, last request → last exit), 429/418 answers
(must be 0) and klines windows fetched more than once (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from qmtl.services.exchange_sim import Scenario, SimulatorServer, run_simulator
from qmtl.testing.cluster import coordinator_process, start_worker
from qmtl.testing.servers import PostgresServer, RedisServer

DAY = 86_400
START = 1_704_067_200  # 2024-01-01


def _config(
    path: Path, *, sim: str, coordinator: str, redis: str, symbols: list[str], run: str,
    workers: int, args: argparse.Namespace,
) -> Path:  # fmt: skip
    path.write_text(
        "exchanges:\n"
        "  binance:\n"
        f"    symbols: [{', '.join(symbols)}]\n"
        "    timeframes: [1m]\n"
        f"    urls: {{rest: '{sim}'}}\n"
        "seamless:\n"
        f"  rate_limit: {{redis_dsn: '{redis}', tokens_per_interval: {args.tokens}, "
        f"interval_ms: {args.interval_ms}, burst_tokens: {args.burst}, "
        f"expected_workers: {workers}, key_template: 'bench-{run}:{{exchange}}'}}\n"
        f"  backfill: {{window_bars: {args.window_bars}, max_concurrent_requests: 8}}\n"
        "environment:\n"
        f"  coordinator_url: '{coordinator}'\n"
    )
    return path


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
        async with coordinator_process(f"sqlite:///{tmp / 'leases.db'}") as coord:
            config = _config(
                tmp / "worker.yaml", sim=sim.base_url, coordinator=coord, redis=redis_dsn,
                symbols=symbols, run=run, workers=workers, args=args,
            )  # fmt: skip
            sim.set_scenario(sim.scenario)  # weight window, bans and counters afresh
            sim.request_log.reset()
            began, launched_ms = time.perf_counter(), time.time() * 1000
            procs = [
                await start_worker(config, dsn=dsn, start=START, end=end, name=f"w{i}", poll_s=0.2)
                for i in range(workers)
            ]
            results = await asyncio.gather(*(p.communicate() for p in procs))
            wall = time.perf_counter() - began
            exited_ms = time.time() * 1000
    missing = 0
    for proc, (out, err) in zip(procs, results, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"worker exited {proc.returncode}: {err.decode()[-2000:]}")
        missing += sum(int(n["missing"]) for n in json.loads(out)["nodes"])
    log = sim.request_log
    admitted = [r for r in log.requests if r.status == 200]
    klines_weight = sum(r.weight for r in admitted if "klines" in r.path)
    other_weight = sum(r.weight for r in admitted if "klines" not in r.path)
    stamps = [r.at_ms for r in log.requests]
    span = (max(stamps) - min(stamps)) / 1000 if stamps else 0.0
    windows = Counter((k.symbol, k.interval, k.start_time) for k in log.klines if k.status == 200)
    statuses = log.statuses()
    rate = args.tokens / args.interval_ms * 1000  # weight per second
    spent = klines_weight + other_weight
    return {
        "workers": workers,
        "wall_s": wall,
        "span_s": span,
        "lead_in_s": (min(stamps) - launched_ms) / 1000 if stamps else 0.0,
        "lead_out_s": (exited_ms - max(stamps)) / 1000 if stamps else 0.0,
        "klines_requests": sum(windows.values()),
        "klines_weight": klines_weight,
        "other_weight": other_weight,
        "utilization": spent / (rate * wall),
        "utilization_active": spent / (rate * span) if span else 0.0,
        "http_429": statuses[429],
        "http_418": statuses[418],
        "fetched_twice": sum(1 for n in windows.values() if n > 1),
        "missing": missing,
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'workers':>7} {'wall s':>7} {'span s':>7} {'in s':>5} {'out s':>5} "
        f"{'klines req':>10} {'klines wt':>9} "
        f"{'other wt':>8} {'util(wall)':>10} {'util(span)':>10} {'429/418':>7} "
        f"{'twice':>5} {'missing':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['workers']:>7} {r['wall_s']:>7.2f} {r['span_s']:>7.2f} "
            f"{r['lead_in_s']:>5.2f} {r['lead_out_s']:>5.2f} "
            f"{r['klines_requests']:>10} {r['klines_weight']:>9} {r['other_weight']:>8} "
            f"{r['utilization']:>10.3f} {r['utilization_active']:>10.3f} "
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
        f"budget: {args.tokens} weight per {args.interval_ms} ms ({rate:g}/s) + burst "
        f"{args.burst}, one Redis key; simulator limit {args.weight_limit}/min, latency "
        f"{args.latency_ms:g} ms; {args.symbols} symbols x {args.days} days of 1m = {bars:,} "
        f"bars in windows of {args.window_bars}"
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
    print()
    _print_table(rows)
    ok = all(
        r["http_429"] == 0 and r["http_418"] == 0 and r["fetched_twice"] == 0 and not r["missing"]
        for r in rows
    )
    multi = [r for r in rows if r["workers"] > 1]
    util_ok = all(r["utilization"] >= 0.95 for r in multi)
    print(
        f"\nzero 429s, zero windows fetched twice, nothing missing: {'ok' if ok else 'FAILED'}; "
        f"utilization (wall) >= 0.95 with workers > 1: {'ok' if util_ok else 'BELOW TARGET'}"
    )
    print("reproduce: " + " ".join([".venv/bin/python", "bench/workers.py", *sys.argv[1:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--days", type=int, default=52, help="1m days per symbol")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--tokens", type=int, default=40, help="budget weight per interval")
    parser.add_argument("--interval-ms", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=2)
    parser.add_argument("--window-bars", type=int, default=1000)
    parser.add_argument("--weight-limit", type=int, default=6000)
    parser.add_argument("--quick", action="store_true", help="14 days: a run of a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.days = 14
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
