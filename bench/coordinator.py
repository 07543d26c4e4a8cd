"""Backfill coordinator on loopback: claims/s, completes/s and claim latency per lease store,
then a contention case.

    python bench/coordinator.py [--keys 8000] [--rounds 5] [--concurrency 16] [--quick]

For each lease store (a SQLite file; a throwaway PostgreSQL, fsync off) the coordinator runs
as deployed: ``qmtl-seamless coordinator serve --dsn … --port 0`` in a subprocess of its own,
with a bearer token, default (text) logging. One :class:`DistributedBackfillCoordinator` (one
aiohttp session) keeps ``--concurrency`` requests in flight: it claims ``--keys`` distinct
keys (1h windows of 1m bars over 100 node ids, so every node keeps growing), then completes
each lease. The work is split into ``--rounds`` rounds that take turns between the stores (a
spell of load on the shared 2-core machine hits both alike); rates are medians over rounds,
latency percentiles are over every request. Targets per store: ≥ 1,000 claims/s and claim
p99 < 20 ms.

Where the time goes, always measured alongside: the HTTP floor (``GET /healthz`` through the
same session and concurrency: aiohttp client + server, no store) and the store alone
(``LeaseStore.apply`` of a claim in this process on a database of its own, one at a time and
``--concurrency`` at once, with as many rows per node as the run ends with).

**Contention.** ``--contenders`` (200) concurrent claims of the same 20 fresh keys, each its
own request on a connector without a connection limit: exactly one claim per key may win
(the rest are 409s); reported with their latency, best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from qmtl.runtime.io.coordinator_client import DistributedBackfillCoordinator
from qmtl.runtime.sdk import lease_rules as rules
from qmtl.runtime.sdk.backfill_coordinator import Lease
from qmtl.services.coordinator import LeaseStore, open_lease_store
from qmtl.testing.servers import PostgresServer

__all__ = ["main"]

TOKEN = "bench-token"
NODES = 100
INTERVAL = 60
WINDOW_S = 3600
START = 1_704_067_200  # 2024-01-01T00:00:00Z
LEASE_MS = 600_000
TARGET_CLAIMS_PER_S = 1000.0
TARGET_P99_MS = 20.0


def lease_key(i: int, *, nodes: int = NODES, tag: str = "C") -> str:
    """The ``i``-th key: node ``{tag}{i % nodes}/USDT``, window ``i // nodes`` (1h of 1m bars)."""
    start = START + (i // nodes) * WINDOW_S
    return f"ohlcv:binance:{tag}{i % nodes:03d}/USDT:1m:{INTERVAL}:{start}:{start + WINDOW_S}::"


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def pump(
    items: Iterable[Any], call: Callable[[Any], Awaitable[Any]], concurrency: int
) -> tuple[float, list[float], list[Any]]:
    """``call`` on every item with ``concurrency`` in flight: (wall s, latencies s, results)."""
    todo = iter(items)
    latencies: list[float] = []
    results: list[Any] = []

    async def worker() -> None:
        for item in todo:
            began = time.perf_counter()
            results.append(await call(item))
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies, results


# -- the coordinator as deployed: a subprocess ----------------------------------------------


class Served:
    """``qmtl-seamless coordinator serve`` on ``dsn`` and a client of it."""

    def __init__(self, name: str, dsn: str, workdir: str, *, profile: bool = False) -> None:
        self.name, self.dsn, self.workdir = name, dsn, workdir
        self.profile = Path(workdir) / f"{name}.prof" if profile else None
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.client: DistributedBackfillCoordinator | None = None
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        cli = [str(Path(sys.executable).with_name("qmtl-seamless"))]
        if self.profile is not None:  # the same CLI under cProfile
            cli = [sys.executable, "-m", "cProfile", "-o", str(self.profile), "-m", "qmtl.cli.main"]
        env = {**os.environ, "QMTL_SEAMLESS_COORDINATOR_TOKEN": TOKEN}
        self.log = Path(self.workdir) / f"{self.name}.stderr"
        stderr = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self.proc = await asyncio.create_subprocess_exec(
            *cli, "coordinator", "serve", "--dsn", self.dsn, "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env, cwd=self.workdir,
        )  # fmt: skip
        os.close(stderr)
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode()
        if not line.startswith("coordinator: "):
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} coordinator did not start: {line!r}\n{tail}")
        self.url = line.split(": ", 1)[1].strip()
        self.client = DistributedBackfillCoordinator(self.url, token=TOKEN, worker_id="bench")
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(2)  # SIGINT: the CLI's Ctrl-C, closes the store
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def cpu_s(self) -> float:
        """The server process's CPU time so far (user + system), from ``/proc``."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def healthz(self, _: object) -> None:
        assert self.http is not None
        async with self.http.get(f"{self.url}/healthz") as resp:
            await resp.read()
            assert resp.status == 200, resp.status

    async def claim(self, key: str) -> Lease:
        assert self.client is not None
        lease = await self.client.claim(key, LEASE_MS)
        assert lease is not None, f"{key} refused"
        return lease

    async def complete(self, lease: Lease) -> None:
        assert self.client is not None
        await self.client.complete(lease)


@dataclass
class Tally:
    health_rate: list[float]
    claim_rate: list[float]
    complete_rate: list[float]
    health_lat: list[float]
    claim_lat: list[float]
    complete_lat: list[float]
    cpu: dict[str, list[float]]  # phase -> [server CPU s, client CPU s, requests]


async def phase(
    s: Served,
    t: Tally,
    name: str,
    concurrency: int,
    items: Sequence[Any],
    call: Callable[[Any], Awaitable[Any]],
) -> tuple[float, list[float], list[Any]]:
    """One timed batch: (requests/s, latencies s, results); adds the CPU spent to ``t``."""
    server_cpu, client_cpu = s.cpu_s(), time.process_time()
    wall, lat, results = await pump(items, call, concurrency)
    spent = (s.cpu_s() - server_cpu, time.process_time() - client_cpu, len(items))
    t.cpu[name] = [a + b for a, b in zip(t.cpu.get(name, [0, 0, 0]), spent, strict=True)]
    return len(items) / wall, lat, results


async def throughput(
    servers: list[Served], keys: int, rounds: int, concurrency: int
) -> dict[str, Tally]:
    per_round = keys // rounds
    tallies = {s.name: Tally([], [], [], [], [], [], {}) for s in servers}
    for s in servers:  # warm-up: connections, the first rows, code paths (other node ids)
        leases = [await s.claim(lease_key(i, tag="W")) for i in range(50)]
        await pump(range(200), s.healthz, concurrency)
        await pump(leases, s.complete, concurrency)
    for r in range(rounds):
        batch = [lease_key(i) for i in range(r * per_round, (r + 1) * per_round)]
        for s in servers:
            t = tallies[s.name]

            rate, lat, _ = await phase(
                s, t, "healthz", concurrency, range(per_round // 2), s.healthz
            )
            t.health_rate.append(rate)
            t.health_lat += lat
            rate, lat, leases = await phase(s, t, "claim", concurrency, batch, s.claim)
            t.claim_rate.append(rate)
            t.claim_lat += lat
            rate, lat, _ = await phase(s, t, "complete", concurrency, leases, s.complete)
            t.complete_rate.append(rate)
            t.complete_lat += lat
    return tallies


async def contention(
    s: Served, contenders: int, distinct: int, rounds: int
) -> tuple[int, int, int, list[float]]:
    """``contenders`` claims at once of ``distinct`` fresh keys: (won, 409s, other, latencies)
    of the round with the lowest p99."""
    best: tuple[int, int, int, list[float]] | None = None
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        for r in range(rounds + 1):  # round 0 opens the connections, untimed
            keys = [lease_key(i % distinct, tag=f"H{r}X") for i in range(contenders)]
            go = asyncio.Event()

            async def one(key: str, go: asyncio.Event) -> tuple[int, float]:
                await go.wait()
                began = time.perf_counter()
                body = {"key": key, "lease_ms": LEASE_MS}
                async with http.post(f"{s.url}/v1/leases/claim", json=body) as resp:
                    await resp.read()
                    return resp.status, time.perf_counter() - began

            tasks = [asyncio.create_task(one(k, go)) for k in keys]
            await asyncio.sleep(0)
            go.set()
            answers = await asyncio.gather(*tasks)
            statuses = [status for status, _ in answers]
            won, lost = statuses.count(200), statuses.count(409)
            assert won == distinct, f"{s.name}: {won} of {distinct} keys granted"
            outcome = (won, lost, len(statuses) - won - lost, [lat for _, lat in answers])
            if r and (best is None or pct(outcome[3], 0.99) < pct(best[3], 0.99)):
                best = outcome
    assert best is not None
    return best


# -- the store alone, in this process --------------------------------------------------------


async def store_alone(store: LeaseStore, n: int, rows_per_node: int, concurrency: int) -> dict:
    """Seconds per ``apply`` of a claim, after ``rows_per_node`` rows on each node."""
    await store.open()
    try:

        async def claim(text: str) -> object:
            key = rules.parse_lease_key(text)
            token = rules.new_token()
            return await store.apply(
                text,
                key.node_id,
                lambda row, now: rules.claim(row, key, now_ms=now, lease_ms=LEASE_MS, token=token),
            )

        await pump((lease_key(i) for i in range(NODES * rows_per_node)), claim, concurrency)
        base = NODES * rows_per_node
        _, serial, _ = await pump((lease_key(base + i) for i in range(n)), claim, 1)
        wall, parallel, _ = await pump(
            (lease_key(base + n + i) for i in range(n)), claim, concurrency
        )
    finally:
        await store.close()
    return {"serial": serial, "parallel_rate": n / wall, "parallel": parallel}


# -- the report -------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:6.2f}"


async def main_async(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="qmtl-bench-coord-")
    pg = await asyncio.to_thread(lambda: PostgresServer().start())
    servers: list[Served] = []
    try:
        dsns = {
            "sqlite": f"sqlite:///{workdir}/leases.db",
            "postgres": await asyncio.to_thread(pg.create_database, "bench_served"),
        }
        for name, dsn in dsns.items():
            s = Served(name, dsn, workdir, profile=args.profile)
            servers.append(s)
            await s.start()
        began = time.perf_counter()
        tallies = await throughput(servers, args.keys, args.rounds, args.concurrency)
        hot = {s.name: await contention(s, args.contenders, 20, args.rounds) for s in servers}
        for s in servers:
            await s.stop()
        served_s = time.perf_counter() - began
        profiles = {s.name: s.profile for s in servers if s.profile is not None}
        if profiles:  # read before the workdir goes
            for name, path in profiles.items():
                out = Path(workdir).parent / f"qmtl-bench-coordinator-{name}.prof"
                shutil.copy(path, out)
                profiles[name] = out

        rows_per_node = args.keys // NODES
        alone = {
            "sqlite": await store_alone(
                open_lease_store(f"sqlite:///{workdir}/alone.db"),
                args.alone, rows_per_node, args.concurrency,
            ),
            "postgres": await store_alone(
                open_lease_store(await asyncio.to_thread(pg.create_database, "bench_alone")),
                args.alone, rows_per_node, args.concurrency,
            ),
        }  # fmt: skip
    finally:
        for s in servers:
            await s.stop()
        await asyncio.to_thread(pg.close)
        shutil.rmtree(workdir, ignore_errors=True)

    c = args.concurrency
    print(
        f"\n{args.keys:,} distinct keys ({NODES} nodes x {args.keys // NODES} windows) in "
        f"{args.rounds} interleaved rounds, {c} in flight over one client session; "
        f"serve run {served_s:.1f} s"
    )
    head = (
        f"{'store':9} {'claims/s':>9} {'completes/s':>11} {'claim p50':>9} {'p99 ms':>7} "
        f"{'complete p50':>12} {'p99 ms':>7} {'healthz/s':>9} {'p50':>6} {'p99 ms':>7}"
    )
    print(head)
    print("-" * len(head))
    verdicts: list[str] = []
    for name, t in tallies.items():
        claims = statistics.median(t.claim_rate)
        p99 = pct(t.claim_lat, 0.99)
        print(
            f"{name:9} {claims:9,.0f} {statistics.median(t.complete_rate):11,.0f} "
            f"{ms(pct(t.claim_lat, 0.5)):>9} {ms(p99):>7} "
            f"{ms(pct(t.complete_lat, 0.5)):>12} {ms(pct(t.complete_lat, 0.99)):>7} "
            f"{statistics.median(t.health_rate):9,.0f} {ms(pct(t.health_lat, 0.5)):>6} "
            f"{ms(pct(t.health_lat, 0.99)):>7}"
        )
        ok_rate = "PASS" if claims >= TARGET_CLAIMS_PER_S else "FAIL"
        ok_p99 = "PASS" if p99 * 1e3 < TARGET_P99_MS else "FAIL"
        verdicts.append(
            f"{name:9} claims/s {claims:6,.0f} (target >= {TARGET_CLAIMS_PER_S:,.0f}): "
            f"{ok_rate}   claim p99 {p99 * 1e3:5.1f} ms (target < {TARGET_P99_MS:.0f}): {ok_p99}"
        )
    print()
    print("\n".join(verdicts))

    print(
        f"\nwhere the time goes: per request, HTTP floor = GET /healthz at the same "
        f"concurrency; store alone = LeaseStore.apply(claim) in-process, "
        f"{rows_per_node} rows/node"
    )
    for name, t in tallies.items():
        a = alone[name]
        claims = statistics.median(t.claim_rate)
        health = statistics.median(t.health_rate)
        print(
            f"{name:9} claim {1e3 / claims:5.2f} ms/claim of server capacity = "
            f"HTTP floor {1e3 / health:5.2f} + rest {1e3 / claims - 1e3 / health:5.2f}; "
            f"store alone: serial p50 {ms(pct(a['serial'], 0.5))} ms "
            f"p99 {ms(pct(a['serial'], 0.99))} ms, "
            f"{c} at once {a['parallel_rate']:,.0f} applies/s "
            f"(p99 {ms(pct(a['parallel'], 0.99))} ms)"
        )

    print("\nCPU per request (ms; server = the coordinator process, client = this process)")
    for name, t in tallies.items():
        print(
            f"{name:9} "
            + "   ".join(
                f"{phase} server {srv / n * 1e3:5.3f} client {cli / n * 1e3:5.3f}"
                for phase, (srv, cli, n) in t.cpu.items()
            )
        )
    for name, path in profiles.items():
        print(f"\nserver profile ({name}, whole run, by own time):")
        stats = pstats.Stats(str(path), stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(18)

    print(f"\ncontention: {args.contenders} concurrent claims of 20 keys (best of {args.rounds})")
    for name, (won, lost, other, lat) in hot.items():
        print(
            f"{name:9} granted {won}, 409 {lost}, other {other}; latency p50 "
            f"{ms(pct(lat, 0.5))} ms, p99 {ms(pct(lat, 0.99))} ms, max {ms(max(lat))} ms"
        )
    flags = " --quick" if args.quick else ""
    print(
        f"\nreproduce: .venv/bin/python bench/coordinator.py{flags} --keys {args.keys} "
        f"--rounds {args.rounds} --concurrency {c}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=8_000, help="distinct keys per store")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--contenders", type=int, default=200)
    parser.add_argument("--alone", type=int, default=2000, help="store-alone applies")
    parser.add_argument(
        "--profile", action="store_true", help="run the servers under cProfile, print the top"
    )
    parser.add_argument("--quick", action="store_true", help="1,800 keys, 3 rounds (~20 s)")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.rounds, args.alone = 1800, 3, 200
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
