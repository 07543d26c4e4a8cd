"""Live data: latency from a bar's close to ``fetch`` returning it — websocket vs polling vs
no feed at all.

    python bench/live.py [--bars 30] [--timeframe 1s] [--push-ms 200] [--quick]

The exchange simulator runs in this process on a real port (its bars run on the wall clock);
for each mode a provider is built as a user's would be (``build_provider`` from a
configuration; SEAMLESS strategy, DuckDB store in a temporary directory) and a strategy loop
asks, right at each bar's close ``t`` (wall clock), ``fetch(t - 10 bars, t)`` — the window
ending with the bar that just closed — and records how long after ``t`` the call returned
*with that bar in it* (a result without it counts as a miss). The first close after the
warm-up fetch is not measured: a websocket feed subscribes on that fetch and is still
connecting (ccxt.pro connect + SUBSCRIBE, ~0.5 s) — start-up, not the steady state a live
strategy runs in.

Modes:
- ``websocket``: ``seamless.live.ws.enabled`` — ccxt.pro ``watch_ohlcv`` on the simulator's
  kline stream (pushes every ``--push-ms``; a closed bar goes out at the first push after its
  close, as Binance sends the final kline);
- ``polling``: :class:`~qmtl.runtime.sdk.live_polling.PollingLiveFeed` over the REST fetcher
  (through the rate limiter);
- ``no feed``: the baseline — the newest bar is backfilled from REST by the SLA path.

Target (issue): websocket p99 < 250 ms on loopback. Prints p50 / p99 / max, misses and the
REST klines requests the measured closes cost per mode (what a feed saves the rate budget),
and the command that reproduces the run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _stats import pct

from qmtl.runtime.io.composition import build_provider
from qmtl.runtime.sdk.config import load_config
from qmtl.runtime.sdk.live_polling import PollingLiveFeed
from qmtl.runtime.sdk.node_id import format_node_id, parse_node_id
from qmtl.services.exchange_sim import Scenario, run_simulator

SYMBOL = "BTC/USDT"
TARGET_P99_MS = 250.0


def _config(tmp: Path, rest: str, ws: str, *, websocket: bool, timeframe: str) -> Any:
    return load_config(
        {
            "seamless": {
                "storage": {"dsn": f"duckdb:///{tmp / 'live.duckdb'}"},
                "live": {"ws": {"enabled": websocket}},
            },
            "exchanges": {
                "binance": {
                    "symbols": [SYMBOL],
                    "timeframes": [timeframe],
                    "urls": {"rest": rest, "ws": ws},
                },
            },
        },
        env={},
    )


async def run_mode(mode: str, sim: Any, args: argparse.Namespace) -> dict[str, Any]:
    rest, ws = sim.base_url, sim.ws_url
    node = format_node_id("binance", SYMBOL, args.timeframe)
    interval = parse_node_id(node).interval
    with tempfile.TemporaryDirectory() as tmp_name:
        config = _config(
            Path(tmp_name), rest, ws, websocket=mode == "websocket", timeframe=args.timeframe
        )
        provider = build_provider(config, strategy="SEAMLESS")
        if mode == "polling":
            provider.live_feed = PollingLiveFeed(provider.fetcher, clock=provider.clock)
        latencies: list[float] = []  # in order of the closes
        misses = 0
        async with provider:
            now = time.time()
            t = int(now) - int(now) % interval
            await provider.fetch(t - 10 * interval, t, node_id=node)  # warm: store, markets, socket
            t += interval  # one close unmeasured: a websocket is still connecting at the first
            await asyncio.sleep(max(0.0, t - time.time()))
            await provider.fetch(t - 10 * interval, t, node_id=node)
            asked = len(sim.request_log.klines)
            for _ in range(args.bars):
                t += interval
                await asyncio.sleep(max(0.0, t - time.time()))
                result = await provider.fetch(t - 10 * interval, t, node_id=node)
                elapsed_ms = (time.time() - t) * 1000.0
                newest = int(result.frame["ts"].max()) if len(result.frame) else None
                if newest == t - interval:
                    latencies.append(elapsed_ms)
                    if args.verbose:
                        print(
                            f"    {mode}: bar {t - interval} after {elapsed_ms:.1f} ms", flush=True
                        )
                else:
                    misses += 1
            requests = len(sim.request_log.klines) - asked
            if mode == "polling" and provider.live_feed is not None:
                await provider.live_feed.aclose()
                provider.live_feed = None
    return {
        "mode": mode,
        "n": len(latencies),
        "misses": misses,
        "klines_requests": requests,
        "p50": pct(latencies, 0.50) if latencies else float("nan"),
        "p99": pct(latencies, 0.99) if latencies else float("nan"),
        "max": max(latencies) if latencies else float("nan"),
        "mean": statistics.fmean(latencies) if latencies else float("nan"),
    }


async def _main(args: argparse.Namespace) -> None:
    scenario = Scenario.from_dict(
        {"seed": 5, "symbols": [SYMBOL], "ws_push_interval_ms": args.push_ms}
    )
    rows = []
    async with run_simulator(scenario) as sim:
        print(
            f"simulator {sim.base_url} (ws {sim.ws_url}, push every {args.push_ms} ms); "
            f"{args.bars} closes of {args.timeframe} bars per mode",
            flush=True,
        )
        for mode in ("websocket", "polling", "no feed"):
            rows.append(await run_mode(mode, sim, args))
            print(f"  ran {mode}", flush=True)
    print()
    head = (
        f"{'mode':>10} {'n':>4} {'misses':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'REST klines requests':>20}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['mode']:>10} {r['n']:>4} {r['misses']:>6} {r['p50']:>8.1f} {r['p99']:>8.1f} "
            f"{r['max']:>8.1f} {r['klines_requests']:>20}"
        )
    ws = rows[0]
    ok = ws["misses"] == 0 and ws["p99"] < TARGET_P99_MS
    print(
        f"\nwebsocket p99 {ws['p99']:.1f} ms (target < {TARGET_P99_MS:.0f}), misses "
        f"{ws['misses']}: {'PASS' if ok else 'FAIL'}"
    )
    print("reproduce: " + " ".join([".venv/bin/python", "bench/live.py", *sys.argv[1:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bars", type=int, default=30, help="closes measured per mode")
    parser.add_argument("--timeframe", default="1s", help="bar timeframe (default 1s)")
    parser.add_argument("--push-ms", type=int, default=200, help="simulator ws push interval")
    parser.add_argument("--quick", action="store_true", help="8 closes per mode")
    parser.add_argument("--verbose", action="store_true", help="print every latency")
    args = parser.parse_args()
    if args.quick:
        args.bars = 8
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
