"""The whole catalog, as an operator sees it: every SPEC metric (with its labels) scraped from
``/metrics`` over HTTP, and every SPEC log event captured, after the system has run what it
runs — the demo, the coordinator with a worker, and the drills an operator's alerts are for.

One fresh registry serves this process's components (the demo's provider, a governed
provider with a websocket live feed, the Redis limiter through an outage, the artifact
registrar, a provider whose coordinator is down); the coordinator and the worker are
subprocesses, scraped on their own ``--metrics-port`` and read from their JSON logs
(``QMTL_LOG_FORMAT=json``). Removing any metric or event from the code fails this test: the
names below are the contract's, not derived from the code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from qmtl.cli.demo_cmd import run_demo
from qmtl.runtime.io.artifact import ArtifactCollisionError, ArtifactRegistrar
from qmtl.runtime.io.artifact_stores import LocalArtifactStore
from qmtl.runtime.io.composition import build_provider, config_for_nodes
from qmtl.runtime.io.metrics_endpoint import serve_metrics
from qmtl.runtime.io.redis_rate_limiter import RedisRateLimiter
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.artifact_keys import data_key
from qmtl.runtime.sdk.backfill_types import FetchWindowResult
from qmtl.runtime.sdk.config import DEFAULT_PARTITION_TEMPLATE, QMTLConfig, load_config
from qmtl.runtime.sdk.conformance import ConformancePipeline
from qmtl.runtime.sdk.errors import SeamlessDomainPolicyError
from qmtl.runtime.sdk.fingerprint import FingerprintMetadata, compute_fingerprint
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.services.exchange_sim import Scenario, generate_bars, run_simulator
from qmtl.testing.cluster import CLI, start_worker, worker_config
from qmtl.testing.servers import RedisServer
from tests.polling import wait_until
from tests.test_events_and_metrics import SPEC_EVENTS  # SPEC §12: every event name
from tests.test_events_and_metrics import SPEC_METRICS as SPEC_METRIC_NAMES

_NW = frozenset({"node_id", "interval", "world_id"})
_N = frozenset({"node_id", "interval"})

#: SPEC §11: every metric (exposition family name) and the labels each of its series carries.
SPEC_METRICS: dict[str, frozenset[str]] = {
    "seamless_storage_wait_ms": _NW,
    "seamless_backfill_wait_ms": _NW,
    "seamless_live_wait_ms": _NW,
    "seamless_total_ms": _NW,
    "seamless_sla_deadline_seconds": _NW | {"phase"},
    "seamless_conformance_flag": _NW | {"flag_type"},
    "seamless_conformance_warning": _NW,
    "seamless_backfill_rows": _N,
    "backfill_completion_ratio": _N,
    "coverage_ratio": _NW,
    "gap_repair_latency_ms": _N,
    "seamless_rl_tokens_available": frozenset({"key"}),
    "seamless_rl_dropped": frozenset({"key"}),
    "seamless_rl_penalty": frozenset({"key", "status"}),
    "seamless_rl_redis_available": frozenset({"key"}),
    "artifact_publish_latency_ms": frozenset({"node_id"}),
    "artifact_bytes_written": frozenset({"node_id"}),
    "fingerprint_collisions": frozenset({"node_id"}),
    "as_of_advancement_events": frozenset({"node_id", "world_id"}),
    "domain_gate_holds": frozenset({"node_id", "world_id", "reason"}),
    "partial_fill_returns": frozenset({"node_id", "world_id", "reason"}),
    "live_staleness_seconds": frozenset({"node_id", "world_id"}),
    "seamless_coordinator_leases": frozenset({"event"}),
}

LEASE_EVENTS = {"claim", "complete", "fail", "expire"}
NODE = "ohlcv:binance:BTC/USDT:1m"
MINUTE = 60


# -- scraping and capturing ---------------------------------------------------------------------


Series = dict[str, list[dict[str, str]]]


async def exposition(url: str) -> str:
    """The text a ``/metrics`` URL serves."""
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, url
        return await resp.text()


async def scrape(url: str) -> Series:
    """``family -> [labels of each sample]`` from a ``/metrics`` URL (``le`` dropped)."""
    return series_of(await exposition(url))


def series_of(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            series.setdefault(family.name, []).append(labels)
    return series


def merge(*scrapes: Series) -> Series:
    merged: Series = {}
    for one in scrapes:
        for name, samples in one.items():
            merged.setdefault(name, []).extend(samples)
    return merged


class Captured(logging.Handler):
    """Every ``qmtl`` record's event name (the message)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.events.add(record.getMessage())


def json_events(lines: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("event"), str):
            found.add(record["event"])
    return found


# -- the drills -----------------------------------------------------------------------------------


def governed_config(tmp: Path, sim: Any, **seamless: Any) -> QMTLConfig:
    """One Binance node at the simulator (REST and websocket), a DuckDB store and an
    artifact directory of its own, publishing every fetch, early fingerprints on."""
    base = config_for_nodes([NODE], exchange_url=sim.base_url, ws_url=sim.ws_url)
    document = {
        "exchanges": {"binance": {"symbols": ["BTC/USDT"], "timeframes": ["1m"]}},
        "seamless": {
            "storage": {"dsn": f"duckdb:///{tmp / 'store.duckdb'}"},
            "artifact": {
                "object_store_uri": f"file://{tmp / 'artifacts'}",
                "publish_optional": True,
                "early_fingerprint": True,
            },
            **seamless,
        },
    }
    loaded = load_config(document, env={})
    return replace(loaded, exchanges=base.exchanges, seamless=replace(
        loaded.seamless, live=base.seamless.live))  # fmt: skip


async def governance_sla_and_live(tmp: Path, metrics: SeamlessMetrics) -> None:
    """A live world served through the websocket feed (live wait, staleness, as_of marks,
    a HOLD for staleness), a backtest refused twice, an SLA the backfill cannot meet."""
    now = int(time.time())
    end = now - now % MINUTE
    async with run_simulator(Scenario.from_dict({"seed": 3})) as sim:
        config = governed_config(tmp / "governed", sim)
        async with build_provider(config, strategy="AUTO_BACKFILL", metrics=metrics) as provider:
            await provider.fetch(end - 3 * 3600, end, node_id=NODE, execution_domain="live",
                                 world_id="w1")  # fmt: skip
            stale = await provider.fetch(
                end - 6 * 3600, end - 5 * 3600, node_id=NODE, execution_domain="live",
                world_id="w1", max_lag_seconds=60,
            )  # fmt: skip
            assert stale.metadata.downgrade_mode == "HOLD"
            with pytest.raises(SeamlessDomainPolicyError):  # a backtest names its as_of
                await provider.fetch(end - 3600, end, node_id=NODE, execution_domain="backtest")
            with pytest.raises(SeamlessDomainPolicyError):  # nothing published that early
                await provider.fetch(end - 3600, end, node_id=NODE, execution_domain="backtest",
                                     as_of="2001-01-01")  # fmt: skip
        sla = {"sla": {"max_wait_backfill_ms": 1, "on_violation": "PARTIAL_FILL",
                       "total_deadline_ms": None}}  # fmt: skip
        slow = governed_config(tmp / "sla", sim, **sla)
        async with build_provider(slow, strategy="SEAMLESS", metrics=metrics) as provider:
            served = await provider.fetch(end - 30 * 3600, end - 20 * 3600, node_id=NODE)
            assert served.metadata.sla_violation == "backfill_wait"
            await provider.wait_background()


async def redis_outage_penalty_and_drop(metrics: SeamlessMetrics) -> None:
    """A Redis limiter (its own server) taking a 429 penalty, a waiter given up on, the
    server stopped and started again."""
    server = await asyncio.to_thread(RedisServer().start)
    try:
        config = RateLimiterConfig(redis_dsn=server.dsn, tokens_per_interval=10,
                                   interval_ms=1000, burst_tokens=2)  # fmt: skip
        limiter = RedisRateLimiter(config, "ccxt:catalog", metrics=metrics,
                                   reconnect_interval_s=0.1)  # fmt: skip
        try:
            async with limiter.acquire(1):
                pass
            await limiter.penalize(429, 0.05)
            waiting = asyncio.create_task(_hold(limiter, cost=2))
            await asyncio.sleep(0.02)
            waiting.cancel()  # gave up while queued: a drop
            await asyncio.gather(waiting, return_exceptions=True)
            await asyncio.to_thread(server.stop)
            async with limiter.acquire(1):
                pass
            await asyncio.to_thread(server.start)
            await wait_until(lambda: limiter.available, timeout_s=10)
        finally:
            await limiter.aclose()
    finally:
        await asyncio.to_thread(server.close)


async def _hold(limiter: RedisRateLimiter, *, cost: float) -> None:
    async with limiter.acquire(cost):
        pass


async def artifact_collision(tmp: Path, metrics: SeamlessMetrics) -> None:
    """The bytes at a fingerprint's key are not the bars': the publication is refused."""
    start, end = 1_704_067_200, 1_704_067_200 + 3600
    bars = generate_bars(1, "BTC/USDT", 60, (start + 60 * np.arange(60, dtype=np.int64)) * 1000)
    frame, report = ConformancePipeline().normalize(bars.frame(), 60)
    meta = FingerprintMetadata(node_id=NODE, interval=60, range=(start, end),
                               conformance_version=report.version)  # fmt: skip
    key = data_key(DEFAULT_PARTITION_TEMPLATE, NODE, start, end, compute_fingerprint(frame, meta))
    async with LocalArtifactStore(tmp / "collision") as store:
        assert await store.put_new(key, b"not the bars")
        registrar = ArtifactRegistrar(store, metrics=metrics)
        with pytest.raises(ArtifactCollisionError):
            await registrar.publish(
                frame, node_id=NODE, interval=60, requested_range=Range(start, end),
                conformance_report=report,
            )  # fmt: skip


class VendorFetcher:
    """A user's own fetcher (the ``DataFetcher`` protocol): its frames carry a vendor column
    conformance drops, with a warning."""

    async def fetch_window(
        self, start: int, end: int, *, node_id: str, interval: int
    ) -> FetchWindowResult:
        ts = np.arange(start, end, interval, dtype=np.int64)
        price = 100.0 + np.arange(len(ts), dtype=np.float64)
        frame = pd.DataFrame({"ts": ts, "open": price, "high": price + 1, "low": price - 1,
                              "close": price, "volume": 1.0, "vendor_trades": 7})  # fmt: skip
        return FetchWindowResult(frame, covered_until=end)


async def own_fetcher(tmp: Path, metrics: SeamlessMetrics) -> None:
    dsn = f"duckdb:///{tmp / 'own.duckdb'}"
    async with EnhancedQuestDBProvider(
        dsn=dsn, fetcher=VendorFetcher(), strategy="AUTO_BACKFILL", metrics=metrics
    ) as provider:
        await provider.fetch(1_704_067_200, 1_704_067_200 + 3600, node_id=NODE)


async def coordinator_down(tmp: Path, metrics: SeamlessMetrics) -> None:
    """A provider whose coordinator does not answer: claims fail, the batch still runs."""
    now = int(time.time())
    end = now - now % 3600 - 86_400
    async with run_simulator(Scenario.from_dict({})) as sim:
        config = governed_config(tmp / "nocoord", sim)
        environment = replace(config.environment, coordinator_url="http://127.0.0.1:9")
        config = replace(config, environment=environment)
        async with build_provider(config, strategy="AUTO_BACKFILL", metrics=metrics) as provider:
            await provider.fetch(end - 600, end, node_id=NODE)


# -- the coordinator and a worker (subprocesses) ----------------------------------------------


@asynccontextmanager
async def coordinator(tmp: Path, env: dict[str, str]) -> AsyncIterator[tuple[str, str, list[str]]]:
    """``coordinator serve --metrics-port 0``: (its URL, its metrics URL, its stderr lines)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "coordinator", "serve", "--dsn", f"sqlite:///{tmp / 'leases.db'}", "--port", "0",
        "--metrics-port", "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert banner.startswith("coordinator: "), banner
        metrics_url = await _metrics_line(proc.stderr, lines)
        reader = asyncio.create_task(_collect(proc.stderr, lines))
        yield banner.removeprefix("coordinator: "), metrics_url, lines
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        reader.cancel()


async def _metrics_line(stream: asyncio.StreamReader, lines: list[str]) -> str:
    while True:
        line = (await asyncio.wait_for(stream.readline(), 60)).decode()
        assert line, f"exited before serving metrics: {lines}"
        if line.startswith("metrics: "):
            return line.removeprefix("metrics: ").strip()
        lines.append(line)


async def _collect(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode())


async def coordinator_and_worker(tmp: Path) -> tuple[Series, set[str]]:
    """A worker fills two symbols through the coordinator — one the exchange does not list
    (its leases fail), one whose first window another worker claimed and abandoned (its
    lease expires) — scraped on both processes' metrics ports."""
    env = {"QMTL_LOG_FORMAT": "json"}
    grid = 900 * MINUTE  # the backfill's batch grid (window_bars)
    now = int(time.time())
    start = (now - 2 * 86_400) // grid * grid
    end = start + grid
    async with (
        run_simulator(Scenario.from_dict({})) as sim,
        coordinator(tmp, env) as (url, coordinator_metrics, coordinator_lines),
    ):
        key = f"{NODE}:60:{start}:{end}::"
        async with aiohttp.ClientSession() as http:
            claim = {"key": key, "lease_ms": 1}
            async with http.post(f"{url}/v1/leases/claim", json=claim) as resp:
                assert resp.status == 200  # abandoned: it expires 1 ms later
        config = worker_config(
            tmp / "worker.yaml", symbols=["BTC/USDT", "NOPE/USDT"], timeframes=["1m"],
            rest=sim.base_url, coordinator=url, redis="",
        )  # fmt: skip
        text = config.read_text().replace("redis_dsn: ''", "redis_dsn: null")
        config.write_text(text)
        worker = await start_worker(
            config, dsn=f"duckdb:///{tmp / 'worker.duckdb'}", start=start, end=end, name="w1",
            poll_s=0.2, extra_args=["--metrics-port", "0", "--follow"], env=env,
        )  # fmt: skip
        worker_lines: list[str] = []
        try:
            assert worker.stderr is not None
            worker_metrics = await _metrics_line(worker.stderr, worker_lines)
            reader = asyncio.create_task(_collect(worker.stderr, worker_lines))
            seen: Series = {}

            async def leases_counted() -> bool:
                """Every lease transition happened at least once (their series exist at 0
                from the coordinator's start)."""
                nonlocal seen
                text = await exposition(coordinator_metrics)
                seen = series_of(text)
                counted = {
                    sample.labels["event"]
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                    if sample.name == "seamless_coordinator_leases_total" and sample.value > 0
                }
                return counted >= LEASE_EVENTS

            deadline = time.monotonic() + 90
            while not await leases_counted():
                assert time.monotonic() < deadline, (seen, worker_lines[-5:])
                await asyncio.sleep(0.3)
            scraped = merge(seen, await scrape(worker_metrics))
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
            await worker.wait()
        await asyncio.sleep(0.2)
        reader.cancel()
        events = json_events(coordinator_lines) | json_events(worker_lines)
    return scraped, events


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_every_contract_metric_and_event_is_emitted_and_scraped(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = SeamlessMetrics(registry)
    captured = Captured()
    qmtl_logger = logging.getLogger("qmtl")
    qmtl_logger.addHandler(captured)
    previous = qmtl_logger.level
    qmtl_logger.setLevel(logging.INFO)
    try:
        await run_demo(1, tmp_path / "demo", quiet=True, metrics=metrics)
        await governance_sla_and_live(tmp_path, metrics)
        await redis_outage_penalty_and_drop(metrics)
        await artifact_collision(tmp_path, metrics)
        await coordinator_down(tmp_path, metrics)
        await own_fetcher(tmp_path, metrics)
        async with serve_metrics(0, registry) as url:
            assert url is not None
            here = await scrape(url)
    finally:
        qmtl_logger.removeHandler(captured)
        qmtl_logger.setLevel(previous)
    there, logged = await coordinator_and_worker(tmp_path)
    scraped = merge(here, there)

    assert set(SPEC_METRICS) == {name.removesuffix("_total") for name in SPEC_METRIC_NAMES}
    absent = sorted(set(SPEC_METRICS) - set(scraped))
    assert not absent, f"SPEC metrics never emitted: {absent}"
    unlabelled = {
        name: sorted(labels - set(sample))
        for name, labels in SPEC_METRICS.items()
        for sample in scraped[name]
        if not labels <= set(sample)
    }
    assert not unlabelled, f"series without their SPEC labels: {unlabelled}"
    assert {s["event"] for s in scraped["seamless_coordinator_leases"]} >= LEASE_EVENTS
    worlds = {s["world_id"] for s in scraped["coverage_ratio"]}
    assert {"", "w1"} <= worlds  # a context's fetches carry its world

    missing_events = sorted(SPEC_EVENTS - (captured.events | logged))
    assert not missing_events, f"SPEC events never logged: {missing_events}"
