"""``qmtl-seamless demo --cluster``: a whole cluster on one machine, then torn down.

Starts a throwaway PostgreSQL (the shared hot store and the coordinator's lease store),
Redis (the shared rate-limit budget) and an S3-compatible server (moto, in this process: the
artifact store, bucket ``qmtl-cluster``), the exchange simulator in this process on a real port,
``qmtl-seamless coordinator serve`` and :data:`WORKERS` ``qmtl-seamless worker`` processes
sharing one configuration: 10 symbols × 2 timeframes (1m, 5m) of closed bars over the last
``days`` days. Shows each worker's progress lines prefixed with its name, then the lease
states the coordinator reports, how often each klines window was requested (once each, when
the leases did their job), which worker published each node's artifacts (one per node, under
a publication lease) and how many manifests the bucket holds, and the final coverage as
``qmtl-seamless list`` reports it for the PostgreSQL store. Everything it started is stopped
before it returns. ``ServerUnavailable`` (a server binary or ``moto[server]`` missing) says
what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import aiohttp

from qmtl.cli._common import console, number_table
from qmtl.runtime.sdk.artifact_keys import MANIFEST_PREFIX
from qmtl.runtime.sdk.node_id import format_node_id, parse_node_id
from qmtl.runtime.sdk.timestamps import format_iso
from qmtl.services.exchange_sim import Scenario, run_simulator
from qmtl.testing.cluster import CLI, coordinator_process, start_worker, worker_config
from qmtl.testing.servers import MotoS3Server, PostgresServer, RedisServer

__all__ = ["SYMBOLS", "TIMEFRAMES", "WORKERS", "run_cluster"]

SYMBOLS: Final = (
    "BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT",
    "DOGE/USDT", "BNB/USDT", "LTC/USDT", "DOT/USDT", "AVAX/USDT",
)  # fmt: skip
TIMEFRAMES: Final = ("1m", "5m")
WORKERS: Final = 4
_ALIGN: Final = 300  # the window ends on a bar boundary of every timeframe
BUCKET: Final = "qmtl-cluster"
ARTIFACTS: Final = f"s3://{BUCKET}/artifacts"


def _config(path: Path, sim: str, coordinator: str, redis: str, s3: MotoS3Server) -> Path:
    artifact = {
        "object_store_uri": ARTIFACTS, "s3_endpoint_url": s3.endpoint_url, "publish_optional": True,
    }  # fmt: skip
    return worker_config(
        path, symbols=SYMBOLS, timeframes=TIMEFRAMES, rest=sim, coordinator=coordinator,
        redis=redis,
        seamless={"backfill": {"distributed_lease_ttl_ms": 10_000}, "artifact": artifact},
    )  # fmt: skip


async def _echo(name: str, stream: asyncio.StreamReader, lines: list[str], quiet: bool) -> None:
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        lines.append(text)
        if not quiet:  # progress lines name their worker; anything else gets its name
            shown = text if text.startswith(f"worker {name}: ") else f"[{name}] {text}"
            print(shown, file=sys.stderr, flush=True)


async def _collect(name: str, proc: asyncio.subprocess.Process, quiet: bool) -> dict[str, Any]:
    """One worker's exit code, JSON summary and progress lines (echoed as they come)."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: list[str] = []
    out, _ = await asyncio.gather(proc.stdout.read(), _echo(name, proc.stderr, lines, quiet))
    code = await proc.wait()
    summary = json.loads(out) if code in (0, 1) and out.strip() else None
    return {"worker": name, "exit": code, "summary": summary, "progress_lines": len(lines)}


async def _lease_states(coordinator: str, nodes: list[str]) -> Counter[str]:
    states: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for node in nodes:
            url = f"{coordinator}/v1/leases/inspect"
            params = {"prefix": f"{node}:", "limit": "1000"}
            async with session.get(url, params=params) as response:
                body = await response.json()
            states.update(str(lease["state"]) for lease in body["leases"])
    return states


def _s3_env(s3: MotoS3Server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_REGION": s3.region,
    }


def _bucket_client(s3: MotoS3Server) -> Any:
    boto3 = importlib.import_module("boto3")  # moto's dependency (untyped)
    return boto3.client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region,
        aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
    )  # fmt: skip


def _create_bucket(s3: MotoS3Server) -> None:
    client = _bucket_client(s3)
    try:
        client.create_bucket(Bucket=BUCKET)
    finally:
        client.close()


def _manifests(s3: MotoS3Server) -> int:
    """How many manifests (publications) the bucket holds."""
    client = _bucket_client(s3)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    finally:
        client.close()
    return sum(1 for k in keys if f"/{MANIFEST_PREFIX}/" in k)


async def _cluster(
    days: int, pg: str, redis: str, s3: MotoS3Server, tmp: Path, quiet: bool
) -> dict[str, Any]:
    now = int(time.time())
    end = now - now % _ALIGN
    start = end - days * 86_400
    nodes = [format_node_id("binance", s, tf) for s in SYMBOLS for tf in TIMEFRAMES]
    scenario = Scenario.from_dict({"seed": 7, "latency_ms": 5, "symbols": {s: {} for s in SYMBOLS}})
    async with run_simulator(scenario) as sim:
        async with coordinator_process(pg) as url:
            config = tmp / "cluster.yaml"
            await asyncio.to_thread(_config, config, sim.base_url, url, redis, s3)
            if not quiet:
                print(
                    f"cluster: simulator {sim.base_url}, coordinator {url}, store {pg}, "
                    f"redis {redis}, artifacts {ARTIFACTS} at {s3.endpoint_url}\n"
                    f"{WORKERS} workers x {len(nodes)} nodes, "
                    f"[{format_iso(start)}, {format_iso(end)})",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
            started = time.perf_counter()
            workers = []
            for i in range(WORKERS):
                name = f"worker-{i + 1}"
                proc = await start_worker(
                    config, dsn=pg, start=start, end=end, name=name, poll_s=0.5, env=_s3_env(s3)
                )
                workers.append((name, proc))
            results = await asyncio.gather(*(_collect(n, p, quiet) for n, p in workers))
            seconds = time.perf_counter() - started
            states = await _lease_states(url, nodes)
        windows = Counter((k.symbol, k.interval, k.start_time) for k in sim.request_log.klines)
        statuses = sim.request_log.statuses()
    listing = await asyncio.create_subprocess_exec(
        *CLI, "list", "--dsn", pg, "--json", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    listed, _ = await listing.communicate()
    stored = {(n["node_id"], n["interval"]): n for n in json.loads(listed)["nodes"]}
    coverage = []
    for node in nodes:
        interval = parse_node_id(node).interval
        entry = stored.get((node, interval), {})
        complete = (
            entry.get("missing_bars") == 0
            and entry.get("first_bar") == start
            and entry.get("last_bar") == end - interval
        )
        coverage.append(
            {"node_id": node, "stored_bars": entry.get("stored_bars", 0),
             "expected_bars": (end - start) // interval, "complete": complete}
        )  # fmt: skip
    publishers = {
        n["node_id"]: w["worker"]
        for w in results if w["summary"]
        for n in w["summary"]["nodes"] if n["published"]
    }  # fmt: skip
    return {
        "window": [start, end],
        "seconds": round(seconds, 3),
        "workers": results,
        "leases": dict(states),
        "klines_requests": sum(windows.values()),
        "klines_windows_fetched_twice": sum(1 for n in windows.values() if n > 1),
        "http_429": statuses.get(429, 0),
        "artifacts": {
            "uri": ARTIFACTS,
            "manifests": await asyncio.to_thread(_manifests, s3),
            "published_by": Counter(publishers.values()),
            "nodes_published": len(publishers),
        },
        "nodes": coverage,
    }


async def run_cluster(days: int, *, quiet: bool = False) -> dict[str, Any]:
    """Start the cluster, let the workers fill ``days`` days, report, stop everything."""
    async with contextlib.AsyncExitStack() as started:  # stops exactly what was started
        tmp_dir = await asyncio.to_thread(tempfile.TemporaryDirectory, prefix="qmtl-cluster-")
        started.push_async_callback(asyncio.to_thread, tmp_dir.cleanup)
        tmp = Path(tmp_dir.name)
        pg_server = PostgresServer()
        await asyncio.to_thread(pg_server.start)
        started.push_async_callback(asyncio.to_thread, pg_server.close)
        redis_server = RedisServer()
        await asyncio.to_thread(redis_server.start)
        started.push_async_callback(asyncio.to_thread, redis_server.close)
        s3_server = MotoS3Server()
        await asyncio.to_thread(s3_server.start)
        started.push_async_callback(asyncio.to_thread, s3_server.close)
        await asyncio.to_thread(_create_bucket, s3_server)
        return await _cluster(days, pg_server.dsn, redis_server.dsn, s3_server, tmp, quiet)


def print_cluster(result: dict[str, Any]) -> None:
    """The human report of :func:`run_cluster` (stdout)."""
    console.print(
        f"{len(result['workers'])} workers in {result['seconds']} s: "
        + ", ".join(f"{w['worker']} exit {w['exit']}" for w in result["workers"]),
        soft_wrap=True,
    )
    leases = ", ".join(f"{k} {v}" for k, v in sorted(result["leases"].items())) or "none"
    console.print(f"leases at the coordinator: {leases}")
    console.print(
        f"{result['klines_requests']} klines requests, "
        f"{result['klines_windows_fetched_twice']} windows fetched twice, "
        f"{result['http_429']} answers 429"
    )
    art = result["artifacts"]
    by = ", ".join(f"{w} {n}" for w, n in sorted(art["published_by"].items())) or "nobody"
    console.print(
        f"artifacts: {art['nodes_published']} nodes published to {art['uri']} "
        f"({art['manifests']} manifests; by worker: {by})"
    )
    rows = [
        (n["node_id"], f"{n['stored_bars']:,}", f"{n['expected_bars']:,}",
         "yes" if n["complete"] else "NO")
        for n in result["nodes"]
    ]  # fmt: skip
    console.print(number_table("coverage (list)", "node", ("stored", "expected", "complete"), rows))
