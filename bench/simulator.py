"""Exchange simulator throughput: concurrent ``/api/v3/klines?limit=1000`` requests.

    python bench/simulator.py [--seconds 5] [--concurrency 32] [--distinct] [--in-process]
                              [--aiohttp-client]

By default the server runs in its own process (uvloop if installed) so the client does not
steal its core; ``--in-process`` shares one event loop. ``--distinct`` gives every request a
new window (no page-cache hits: generation + encoding every time; the server renders the
misses that are queued at the same moment in one batch, so ``--concurrency`` matters). The
weight limit is raised so nothing is throttled.

The client shares the machine with the server, so it is kept cheap: one minimal HTTP/1.1
keep-alive protocol per connection that counts body bytes against ``Content-Length`` and never
copies or parses them (``--aiohttp-client`` uses aiohttp's client instead, which costs about
twice as much CPU per response). The first page is checked with ``json`` to hold 1000 bars.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from qmtl.services.exchange_sim import Scenario, SimulatorServer

SCENARIO = Scenario(weight_limit_per_minute=10**12, now_ms=1_700_000_040_000)
START_MS = 1_600_000_020_000  # a minute boundary, well before "now"
WINDOWS = 1500  # distinct windows: far more than the page cache holds, all before "now"


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


class _Counting(asyncio.Protocol):
    """One keep-alive connection: send a GET, count the answer's bytes, repeat."""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports do not subclass asyncio's
        self._head = b""
        self._left = -1  # body bytes still due; -1 while reading the head
        self._status = 0
        self._done: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc or ConnectionError("connection closed"))

    async def get(self, request: bytes) -> int:
        """Send one request; the HTTP status once its whole body has arrived."""
        assert self.transport is not None
        self._done = asyncio.get_running_loop().create_future()
        self._head, self._left = b"", -1
        self.transport.write(request)
        return await self._done

    def data_received(self, data: bytes) -> None:
        if self._left < 0:
            buffer = self._head + data if self._head else data
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._head = buffer
                return
            head, body_start = buffer[:end], len(buffer) - end - 4
            self._status = int(head[9:12])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")[1:]
                if line.lower().startswith(b"content-length:")
            )
            self._left = length - body_start
        else:
            self._left -= len(data)
        if self._left <= 0 and self._done is not None and not self._done.done():
            self._done.set_result(self._status)


def _targets(args: argparse.Namespace) -> Callable[[], str]:
    counter = itertools.count()

    def path_and_query() -> str:
        step = next(counter) % WINDOWS if args.distinct else 0
        start = START_MS + step * 60_000_000
        return f"/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1000&startTime={start}"

    return path_and_query


async def _check_first_page(base_url: str, target: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(base_url + target) as resp:
        assert len(json.loads(await resp.read())) == 1000


async def _load_raw(host: str, port: int, args: argparse.Namespace) -> tuple[int, int, float]:
    next_target = _targets(args)
    loop = asyncio.get_running_loop()
    done = errors = 0
    deadline = time.perf_counter() + args.seconds

    async def worker() -> None:
        nonlocal done, errors
        transport, proto = await loop.create_connection(_Counting, host, port)
        try:
            while time.perf_counter() < deadline:
                request = f"GET {next_target()} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                status = await proto.get(request)
                done, errors = (done + 1, errors) if status == 200 else (done, errors + 1)
        finally:
            transport.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return done, errors, time.perf_counter() - began


async def _load_aiohttp(base_url: str, args: argparse.Namespace) -> tuple[int, int, float]:
    next_target = _targets(args)
    done = errors = 0
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        deadline = time.perf_counter() + args.seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                async with http.get(base_url + next_target()) as resp:
                    await resp.read()
                    done, errors = (done + 1, errors) if resp.status == 200 else (done, errors + 1)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return done, errors, time.perf_counter() - began


async def _load(host: str, port: int, args: argparse.Namespace) -> None:
    base_url = f"http://{host}:{port}"
    await _check_first_page(base_url, _targets(args)())
    cpu = time.process_time()
    if args.aiohttp_client:
        done, errors, elapsed = await _load_aiohttp(base_url, args)
    else:
        done, errors, elapsed = await _load_raw(host, port, args)
    client_cpu = time.process_time() - cpu
    print(
        f"{done / elapsed:,.0f} requests/s, {done * 1000 / elapsed:,.0f} bars/s ({done} requests"
        f" in {elapsed:.2f} s, {errors} errors, concurrency {args.concurrency}, client CPU"
        f" {client_cpu / max(done, 1) * 1e6:.0f} us/request)"
    )


async def _in_process(args: argparse.Namespace) -> None:
    server = SimulatorServer(SCENARIO)
    await server.start()
    try:
        await _load(server.host, server.port, args)
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="exchange simulator throughput")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--distinct", action="store_true", help="a new window per request")
    parser.add_argument("--in-process", action="store_true", help="server in this process")
    parser.add_argument("--aiohttp-client", action="store_true", help="aiohttp as the client")
    args = parser.parse_args()
    mode = "in-process" if args.in_process else "server in a separate process"
    print(f"simulator bench: {mode}, {'distinct windows' if args.distinct else 'one window'}")
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.in_process:
        asyncio.run(_in_process(args))
        return
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    proc = ctx.Process(target=_server_process, args=(ports,), daemon=True)
    proc.start()
    try:
        asyncio.run(_load("127.0.0.1", ports.get(timeout=30), args))
    finally:
        proc.terminate()
        proc.join(5)


if __name__ == "__main__":
    main()
