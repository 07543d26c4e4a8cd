"""Exchange simulator throughput: concurrent ``/api/v3/klines?limit=1000`` requests.

    python bench/simulator.py [--seconds 5] [--concurrency 32] [--distinct] [--in-process]

By default the server runs in its own process (uvloop if installed) so the client does not
steal its core; ``--in-process`` shares one event loop. ``--distinct`` gives every request a
new window (no page-cache hits: generation + encoding every time). The weight limit is raised
so nothing is throttled; bodies are read, not parsed (the first is checked to hold 1000 bars).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import time
from typing import Any

import aiohttp

from qmtl.services.exchange_sim import Scenario, SimulatorServer

SCENARIO = Scenario(weight_limit_per_minute=10**12, now_ms=1_700_000_040_000)
START_MS = 1_600_000_020_000  # a minute boundary, well before "now"


async def _serve(ports: Any) -> None:
    server = SimulatorServer(SCENARIO)
    await server.start()
    ports.put(server.port)
    await asyncio.Event().wait()


def _server_process(ports: Any) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_serve(ports))


async def _load(base_url: str, args: argparse.Namespace) -> None:
    counter = itertools.count()
    done = errors = 0
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        def url() -> str:  # 1500 windows: more than the page cache holds, all before "now"
            start = START_MS + (next(counter) % 1500 if args.distinct else 0) * 60_000_000
            query = f"symbol=BTCUSDT&interval=1m&limit=1000&startTime={start}"
            return f"{base_url}/api/v3/klines?{query}"

        async with http.get(url()) as resp:
            assert len(json.loads(await resp.read())) == 1000
        deadline = time.perf_counter() + args.seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                async with http.get(url()) as resp:
                    await resp.read()
                    done, errors = (done + 1, errors) if resp.status == 200 else (done, errors + 1)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - began
    print(
        f"{done / elapsed:,.0f} requests/s, {done * 1000 / elapsed:,.0f} bars/s ({done} requests"
        f" in {elapsed:.2f} s, {errors} errors, concurrency {args.concurrency})"
    )


async def _in_process(args: argparse.Namespace) -> None:
    server = SimulatorServer(SCENARIO)
    await server.start()
    try:
        await _load(server.base_url, args)
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="exchange simulator throughput")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--distinct", action="store_true", help="a new window per request")
    parser.add_argument("--in-process", action="store_true", help="server in this process")
    args = parser.parse_args()
    mode = "in-process" if args.in_process else "server in a separate process"
    print(f"simulator bench: {mode}, {'distinct windows' if args.distinct else 'one window'}")
    if args.in_process:
        asyncio.run(_in_process(args))
        return
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    proc = ctx.Process(target=_server_process, args=(ports,), daemon=True)
    proc.start()
    try:
        asyncio.run(_load(f"http://127.0.0.1:{ports.get(timeout=30)}", args))
    finally:
        proc.terminate()
        proc.join(5)


if __name__ == "__main__":
    main()
