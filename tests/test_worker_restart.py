"""``qmtl-seamless worker`` processes while their coordinator restarts, against real servers:
the simulator (in this process, on a real port, so its request log is readable), the
coordinator (a subprocess on a fixed port, so a new one comes back on the workers' URL), one
PostgreSQL for the hot store *and* the lease store, one Redis budget.

A worker never fetches a window without its lease: while the coordinator is away its windows
wait like held ones, so a restart mid-run loses no lease (PostgreSQL keeps them) and fetches
no window twice; a coordinator that never answers makes the worker give up (exit 3) after
one lease TTL, having fetched nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.history_coverage import compute_missing_ranges
from qmtl.runtime.sdk.node_id import format_node_id, parse_node_id
from qmtl.services.exchange_sim import Scenario, run_simulator
from qmtl.testing.cluster import coordinator_process, start_worker, worker_config
from qmtl.testing.servers import free_port

SYMBOLS = (
    "BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT",
    "DOGE/USDT", "BNB/USDT", "LTC/USDT", "DOT/USDT", "AVAX/USDT",
)  # fmt: skip
TIMEFRAMES = ("1m", "5m")
NODES = tuple(format_node_id("binance", s, tf) for s in SYMBOLS for tf in TIMEFRAMES)
START = 1_706_745_600  # 2024-02-01
END = START + 4 * 86_400
WORKERS = 4
LATENCY_MS = 500


def _scenario(latency_ms: float) -> Scenario:
    return Scenario.from_dict(
        {"seed": 11, "latency_ms": latency_ms, "symbols": {s: {} for s in SYMBOLS}}
    )


def _config(tmp: Path, *, sim: str, coordinator: str, redis: str, ttl_ms: int) -> Path:
    return worker_config(
        tmp / f"worker-{ttl_ms}.yaml",
        symbols=SYMBOLS,
        timeframes=TIMEFRAMES,
        rest=sim,
        coordinator=coordinator,
        redis=redis,
        seamless={"backfill": {"distributed_lease_ttl_ms": ttl_ms}},
    )


async def _leases(coordinator: str) -> dict[str, dict[str, object]]:
    """Every lease of every node, by key (one ``inspect`` per node, never truncated)."""
    found: dict[str, dict[str, object]] = {}
    async with aiohttp.ClientSession() as session:
        for node in NODES:
            params = {"prefix": f"{node}:", "limit": "1000"}
            async with session.get(f"{coordinator}/v1/leases/inspect", params=params) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            assert body["truncated"] is False
            found.update({str(lease["key"]): lease for lease in body["leases"]})
    return found


async def _assert_complete(dsn: str) -> None:
    store = open_storage(dsn)
    try:
        for node in NODES:
            interval = parse_node_id(node).interval
            ledger = await store.read_ledger(node, interval)
            assert compute_missing_ranges(ledger, START, END, interval) == [], node
    finally:
        await store.close()


def _klines_windows(sim_log: object) -> Counter[tuple[str | None, str | None, int | None]]:
    return Counter((k.symbol, k.interval, k.start_time) for k in sim_log.klines)  # type: ignore[attr-defined]


def _events(err: bytes) -> list[dict[str, object]]:
    """The worker's JSON log records (``QMTL_LOG_FORMAT=json``; progress lines skipped)."""
    lines = err.decode().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.slow
async def test_a_coordinator_restarted_mid_run_loses_no_lease_and_no_window_is_fetched_twice(
    tmp_path: Path, postgres_dsn: str, redis_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QMTL_LOG_FORMAT", "json")  # the workers log every lease transition
    port = free_port()
    async with run_simulator(_scenario(LATENCY_MS)) as sim:
        async with coordinator_process(postgres_dsn, port=port) as url:
            config = _config(tmp_path, sim=sim.base_url, coordinator=url, redis=redis_dsn,
                             ttl_ms=30_000)  # fmt: skip
            procs = [
                await start_worker(
                    config, dsn=postgres_dsn, start=START, end=END, name=f"w{i}", poll_s=0.2
                )
                for i in range(WORKERS)
            ]
            runs = [asyncio.ensure_future(p.communicate()) for p in procs]
            for _ in range(1200):  # until the simulator has served a few windows
                if len(sim.request_log.klines) >= 12 or any(r.done() for r in runs):
                    break
                await asyncio.sleep(0.05)
            before = await _leases(url)
            served = len(sim.request_log.klines)
        # SIGTERM: the coordinator has exited; its leases live in PostgreSQL only
        await asyncio.sleep(1.0)
        async with coordinator_process(postgres_dsn, port=port) as again:
            assert again == url
            after_restart = await _leases(again)
            results = await asyncio.wait_for(asyncio.gather(*runs), 90)
            final = await _leases(again)
        windows = _klines_windows(sim.request_log)
        assert sim.request_log.count(status=429) == 0
        assert sim.request_log.count(status=418) == 0
    events = []
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()[-4000:]
        summary = json.loads(out)
        assert len(summary["nodes"]) == len(NODES)
        assert all(n["missing"] == 0 for n in summary["nodes"]), summary
        mine = _events(err)
        # once per outage, not once per claim (hundreds were refused): a stopping coordinator
        # may still answer a claim or two, and an answer ends an outage as the worker sees it
        claim_failed = [e for e in mine if e.get("event") == "seamless.coordinator.claim_failed"]
        assert len(claim_failed) <= 5, claim_failed
        events += mine
    await _assert_complete(postgres_dsn)
    noticed = [
        e for e in events
        if e.get("event") == "seamless.coordinator.claim_failed"
        or str(e.get("event")).startswith("coordinator unreachable: retrying to")
    ]  # fmt: skip
    assert noticed, "no worker noticed the coordinator was gone"
    assert before, "no lease was granted before the restart"
    assert served < len(windows) // 2, f"the restart came late: {served}/{len(windows)} served"
    twice = {w: n for w, n in windows.items() if n != 1}
    assert not twice, f"windows fetched more than once: {twice}"
    assert len(windows) == len(final)  # one lease key per window fetched

    def tokens(event: str) -> set[str]:
        return {str(e["lease_token"]) for e in events if e.get("event") == event}

    claimed = tokens("seamless.backfill.coordinator_claimed")
    completed = tokens("seamless.backfill.coordinator_completed")
    # No lease lost: every lease of the old coordinator is known to the new one, held by the
    # same token (a window its holder completed may have been granted again since: a
    # completed window is, and the store then answers that it is filled).
    assert set(before) <= set(after_restart), sorted(set(before) - set(after_restart))
    for key, lease in before.items():
        kept = after_restart[key]
        assert kept["held_by"] == lease["held_by"] or lease["held_by"] in completed, (lease, kept)
    # ... and each one, like every lease granted, was completed by its holder's token: the
    # restarted coordinator accepted it (it refuses a token it does not know with 404/409).
    # A completion attempted while the coordinator was down must be tried again, or the
    # window's lease stays held until it expires although its bars are stored.
    lost = {t: k for k, v in before.items() if (t := str(v["held_by"])) not in completed}
    assert not lost, f"leases held across the restart, never completed by their holder: {lost}"
    assert claimed == completed, f"granted, never completed: {sorted(claimed - completed)}"
    states = Counter(str(lease["state"]) for lease in final.values())
    assert set(states) == {"completed"}, states


async def test_a_worker_without_a_reachable_coordinator_gives_up_after_one_lease_ttl(
    tmp_path: Path, postgres_dsn: str, redis_dsn: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with run_simulator(_scenario(0)) as sim:
        config = _config(tmp_path, sim=sim.base_url, coordinator=dead, redis=redis_dsn,
                         ttl_ms=3000)  # fmt: skip
        started = time.monotonic()
        proc = await start_worker(
            config, dsn=postgres_dsn, start=START, end=END, name="alone", poll_s=0.2
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        elapsed = time.monotonic() - started
        text = err.decode()
        assert proc.returncode == 3, text
        assert 3.0 <= elapsed < 20, elapsed  # gives up after one lease TTL, not before
        assert "Traceback" not in text
        assert text.count("coordinator claim of ") == 1, text  # logged once per outage
        errors = [ln for ln in text.splitlines() if ln.startswith("qmtl-seamless worker: error: ")]
        assert len(errors) == 1, text
        assert "coordinator" in errors[0]
        assert dead in errors[0]
        assert len(sim.request_log.klines) == 0
