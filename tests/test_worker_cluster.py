"""``qmtl-seamless worker`` processes against real servers: one simulator (in this process, on
a real port, so its request log is readable), one coordinator (a subprocess), one PostgreSQL
hot store and one Redis budget. Many workers fetch every window exactly once; a worker killed
mid-lease loses its window to another worker once the lease expires."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.artifact_keys import manifest_prefix
from qmtl.runtime.sdk.history_coverage import compute_missing_ranges
from qmtl.runtime.sdk.lease_rules import parse_lease_key
from qmtl.runtime.sdk.node_id import format_node_id, parse_node_id
from qmtl.services.exchange_sim import Scenario, run_simulator
from qmtl.testing.cluster import CLI, coordinator_process, start_worker, worker_config
from tests.cli_rig import one_error_line
from tests.conftest import S3Bucket

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
TIMEFRAMES = ("1m", "5m")
START, END = 1_706_745_600, 1_706_745_600 + 2 * 86_400  # 2024-02-01 .. 2024-02-03


def _scenario(latency_ms: float) -> Scenario:
    return Scenario.from_dict(
        {"seed": 7, "latency_ms": latency_ms, "symbols": {s: {} for s in SYMBOLS}}
    )


def _config(
    tmp: Path,
    *,
    sim: str,
    coordinator: str,
    redis: str,
    ttl_ms: int = 120_000,
    artifact: dict[str, object] | None = None,
) -> Path:
    seamless: dict[str, object] = {"backfill": {"distributed_lease_ttl_ms": ttl_ms}}
    if artifact is not None:
        seamless["artifact"] = artifact
    return worker_config(
        tmp / f"worker-{ttl_ms}.yaml",
        symbols=SYMBOLS,
        timeframes=TIMEFRAMES,
        rest=sim,
        coordinator=coordinator,
        redis=redis,
        seamless=seamless,
    )


def _s3_keys(bucket: S3Bucket, prefix: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=bucket.endpoint_url, region_name=bucket.region,
        aws_access_key_id=bucket.access_key, aws_secret_access_key=bucket.secret_key,
    )  # fmt: skip
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket.bucket, Prefix=prefix
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
    finally:
        client.close()


async def _inspect(coordinator: str) -> list[dict[str, object]]:
    async with aiohttp.ClientSession() as session:
        url = f"{coordinator}/v1/leases/inspect?prefix=ohlcv&limit=1000"
        async with session.get(url) as response:
            body = await response.json()
    leases: list[dict[str, object]] = body["leases"]
    return leases


async def _assert_complete(dsn: str) -> None:
    store = open_storage(dsn)
    try:
        listed = {(n.node_id, n.interval) for n in await store.list_nodes()}
        for symbol in SYMBOLS:
            for tf in TIMEFRAMES:
                node = format_node_id("binance", symbol, tf)
                interval = parse_node_id(node).interval
                assert (node, interval) in listed
                ledger = await store.read_ledger(node, interval)
                assert compute_missing_ranges(ledger, START, END, interval) == [], node
    finally:
        await store.close()


def _klines_windows(sim_log: object) -> Counter[tuple[str | None, str | None, int | None]]:
    return Counter((k.symbol, k.interval, k.start_time) for k in sim_log.klines)  # type: ignore[attr-defined]


def test_worker_without_a_coordinator_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("exchanges:\n  binance: {symbols: [BTC/USDT], timeframes: [1m]}\n")
    env = {k: v for k, v in os.environ.items() if k != "QMTL_SEAMLESS_COORDINATOR_URL"}
    done = subprocess.run(
        [*CLI, "worker", "--config", str(config), "--days", "1"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    line = one_error_line(done.stderr, "worker")
    assert "worker needs a coordinator: set environment.coordinator_url or " in line


@pytest.mark.slow
async def test_four_workers_fetch_every_window_exactly_once_and_publish_each_node_once(
    tmp_path: Path, postgres_dsn: str, redis_dsn: str, s3_bucket: S3Bucket
) -> None:
    """Besides every window fetched once: with publication on (an S3 artifact store), each
    node's range is published by exactly one worker — one manifest per node in the bucket."""
    artifact: dict[str, object] = {
        "object_store_uri": f"{s3_bucket.uri}/cluster",
        "s3_endpoint_url": s3_bucket.endpoint_url,
        "publish_optional": True,
    }
    credentials = {
        "AWS_ACCESS_KEY_ID": s3_bucket.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_bucket.secret_key,
        "AWS_REGION": s3_bucket.region,
    }
    nodes = [format_node_id("binance", s, tf) for s in SYMBOLS for tf in TIMEFRAMES]
    async with (
        run_simulator(_scenario(latency_ms=20)) as sim,
        coordinator_process(f"sqlite:///{tmp_path / 'leases.db'}") as coord,
    ):
        config = _config(
            tmp_path, sim=sim.base_url, coordinator=coord, redis=redis_dsn, artifact=artifact
        )
        procs = [
            await start_worker(
                config,
                dsn=postgres_dsn,
                start=START,
                end=END,
                name=f"w{i}",
                poll_s=0.2,
                env=credentials,
            )
            for i in range(4)
        ]
        results = [await asyncio.wait_for(p.communicate(), 90) for p in procs]
        publishers: Counter[str] = Counter()
        for proc, (out, err) in zip(procs, results, strict=True):
            assert proc.returncode == 0, err.decode()
            summary = json.loads(out)
            assert len(summary["nodes"]) == len(nodes)
            assert all(n["missing"] == 0 for n in summary["nodes"]), summary
            assert f"worker {summary['worker']}: " in err.decode()
            publishers.update(n["node_id"] for n in summary["nodes"] if n["published"])
        assert publishers == Counter(nodes), publishers  # each node by exactly one worker
        manifests = _s3_keys(s3_bucket, "cluster/")
        for node in nodes:
            mine = [k for k in manifests if k.startswith(f"cluster/{manifest_prefix(node)}")]
            assert len(mine) == 1, (node, mine)
        windows = _klines_windows(sim.request_log)
        assert windows, "nothing was fetched"
        twice = {w: n for w, n in windows.items() if n != 1}
        assert not twice, f"windows fetched more than once: {twice}"
        assert sim.request_log.count(status=429) == 0
        assert sim.request_log.count(status=418) == 0
        states = Counter(str(lease["state"]) for lease in await _inspect(coord))
        assert set(states) == {"completed"}, states
    await _assert_complete(postgres_dsn)


@pytest.mark.slow
async def test_a_killed_workers_window_is_fetched_again_after_its_lease_expires(
    tmp_path: Path, postgres_dsn: str, redis_dsn: str
) -> None:
    async with (
        run_simulator(_scenario(latency_ms=4000)) as sim,
        coordinator_process(f"sqlite:///{tmp_path / 'leases.db'}") as coord,
    ):
        config = _config(tmp_path, sim=sim.base_url, coordinator=coord, redis=redis_dsn,
                         ttl_ms=2000)  # fmt: skip
        first = await start_worker(
            config, dsn=postgres_dsn, start=START, end=END, name="doomed", poll_s=0.2
        )
        held: list[dict[str, object]] = []
        for _ in range(200):
            held = [x for x in await _inspect(coord) if x["state"] == "held"]
            if held:
                break
            await asyncio.sleep(0.05)
        assert held, "the first worker never held a lease"
        first.send_signal(signal.SIGKILL)
        await first.communicate()
        key = parse_lease_key(str(held[0]["key"]))
        window = ("".join(parse_node_id(key.node_id).symbol.split("/")),
                  parse_node_id(key.node_id).timeframe, key.start * 1000)  # fmt: skip
        before = _klines_windows(sim.request_log)[window]
        sim.set_scenario(_scenario(latency_ms=0))
        second = await start_worker(
            config, dsn=postgres_dsn, start=START, end=END, name="rescuer", poll_s=0.2
        )
        out, err = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 0, err.decode()
        assert all(n["missing"] == 0 for n in json.loads(out)["nodes"])
        assert _klines_windows(sim.request_log)[window] == before + 1
        after = {str(x["key"]): x for x in await _inspect(coord)}
        assert after[str(held[0]["key"])]["state"] == "completed"
        assert after[str(held[0]["key"])]["held_by"] != held[0]["held_by"]
    await _assert_complete(postgres_dsn)


@pytest.mark.slow
def test_demo_cluster_fills_every_node_with_four_workers() -> None:
    done = subprocess.run(
        [*CLI, "demo", "--cluster", "--days", "1", "--json"],
        capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [w["exit"] for w in result["workers"]] == [0, 0, 0, 0]
    assert len(result["nodes"]) == 20
    assert all(n["complete"] for n in result["nodes"]), result["nodes"]
    assert result["klines_windows_fetched_twice"] == 0
    assert result["http_429"] == 0
    assert set(result["leases"]) == {"completed"}
    artifacts = result["artifacts"]  # each node published once, to the S3-compatible server
    assert artifacts["uri"].startswith("s3://")
    assert artifacts["nodes_published"] == 20 == artifacts["manifests"], artifacts
    assert sum(artifacts["published_by"].values()) == 20


def test_demo_cluster_without_a_server_binary_says_what_to_install() -> None:
    """A machine without ``redis-server`` gets one line naming what is missing and exit 3;
    the PostgreSQL it had already started is stopped again (no traceback, nothing left)."""
    done = subprocess.run(
        [*CLI, "demo", "--cluster"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "REDIS_SERVER_BIN": "/nonexistent/redis-server"},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr, "demo")
    assert "/nonexistent/redis-server" in line and "qmtl-seamless[cluster]" in line
