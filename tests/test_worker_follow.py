"""``qmtl-seamless worker --follow`` against the simulator, on the wall clock: the simulator
(in this process, on a real port; its bars run up to the real "now"), a coordinator
subprocess, a PostgreSQL hot store and a Redis budget; the worker is a subprocess stopped as
a user stops it (SIGTERM from a service manager, SIGINT for Ctrl-C).

After covering its range the worker keeps going: every ``--poll-s`` the range's end moves to
now and the bars that closed since are filled, until it is stopped (exit 0, the summary
printed)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.history_coverage import compute_missing_ranges
from qmtl.runtime.sdk.node_id import format_node_id, parse_node_id
from qmtl.services.exchange_sim import Scenario, run_simulator
from qmtl.testing.cluster import coordinator_process, start_worker, worker_config

SYMBOLS = ("BTC/USDT", "ETH/USDT")
POLL_S = 0.2


def _config(tmp: Path, *, sim: str, coordinator: str, redis: str, timeframe: str) -> Path:
    return worker_config(
        tmp / f"follow-{timeframe}.yaml",
        symbols=SYMBOLS,
        timeframes=[timeframe],
        rest=sim,
        coordinator=coordinator,
        redis=redis,
    )


def _scenario() -> Scenario:
    return Scenario.from_dict({"seed": 5, "symbols": {s: {} for s in SYMBOLS}})


def _closed_until(interval: int) -> int:
    """The end of the last closed bar, now."""
    now = int(time.time())
    return now - now % interval


async def _covered(dsn: str, nodes: list[str], start: int, end: int) -> bool:
    store = open_storage(dsn)
    try:
        return await _covers(store, nodes, start, end)
    finally:
        await store.close()


async def _covers(store: Any, nodes: list[str], start: int, end: int) -> bool:
    for node in nodes:
        interval = parse_node_id(node).interval
        ledger = await store.read_ledger(node, interval)
        if compute_missing_ranges(ledger, start, end, interval):
            return False
    return True


async def _wait_covered(
    dsn: str, nodes: list[str], start: int, end: int, proc: asyncio.subprocess.Process, *,
    timeout_s: float,
) -> None:  # fmt: skip
    """Until the store covers ``[start, end)`` for every node (the worker still running)."""
    deadline = time.monotonic() + timeout_s
    store = open_storage(dsn)
    try:
        while not await _covers(store, nodes, start, end):
            assert proc.returncode is None, "the worker stopped on its own"
            assert time.monotonic() < deadline, f"[{start}, {end}) not covered in {timeout_s} s"
            await asyncio.sleep(0.1)
    finally:
        await store.close()


async def _stop(
    proc: asyncio.subprocess.Process, sig: signal.Signals
) -> tuple[dict[str, Any], str]:
    """Send ``sig``; the worker must exit 0 with its JSON summary on stdout."""
    assert proc.returncode is None, "the worker stopped on its own"
    proc.send_signal(sig)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, (proc.returncode, err.decode()[-3000:])
    assert "Traceback" not in err.decode()
    return json.loads(out), err.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_follow_keeps_filling_past_its_end_until_stopped(
    tmp_path: Path, postgres_dsn: str, redis_dsn: str, sig: signal.Signals
) -> None:
    nodes = [format_node_id("binance", s, "1m") for s in SYMBOLS]
    minute = _closed_until(60)
    start, end = minute - 600, minute - 180  # --end three closed bars before now
    async with (
        run_simulator(_scenario()) as sim,
        coordinator_process(f"sqlite:///{tmp_path / 'leases.db'}") as coord,
    ):
        config = _config(tmp_path, sim=sim.base_url, coordinator=coord, redis=redis_dsn,
                         timeframe="1m")  # fmt: skip
        proc = await start_worker(
            config, dsn=postgres_dsn, start=start, end=end, name="follower", poll_s=POLL_S,
            extra_args=["--follow"],
        )  # fmt: skip
        try:
            # only a --follow round goes past --end: up to the last closed minute
            await _wait_covered(postgres_dsn, nodes, start, _closed_until(60), proc,
                                timeout_s=15)  # fmt: skip
            rounds_before = len(sim.request_log.requests)
            await asyncio.sleep(10 * POLL_S)  # a covered range stays covered, quietly
            assert proc.returncode is None, "the worker stopped on its own"
            summary, err = await _stop(proc, sig)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert "worker follower: stopped" in err
    assert summary["worker"] == "follower"
    assert summary["window"][0] == start
    assert summary["window"][1] >= minute > end, summary["window"]
    assert {n["node_id"] for n in summary["nodes"]} == set(nodes)
    assert all(n["missing"] == 0 for n in summary["nodes"]), summary
    # nothing is fetched again while no new bar closes (only the minute boundary may add one)
    assert len(sim.request_log.requests) - rounds_before <= 2 * len(nodes)
    assert sim.request_log.count(status=429) == 0


async def test_follow_fills_each_second_bar_that_closes_while_it_runs(
    tmp_path: Path, postgres_dsn: str, redis_dsn: str
) -> None:
    """1s bars close every second: the worker must fill them as they close (``--follow``'s
    end moves to now), not only when a minute ends."""
    nodes = [format_node_id("binance", s, "1s") for s in SYMBOLS]
    start = _closed_until(1) - 120
    async with (
        run_simulator(_scenario()) as sim,
        coordinator_process(f"sqlite:///{tmp_path / 'leases.db'}") as coord,
    ):
        config = _config(tmp_path, sim=sim.base_url, coordinator=coord, redis=redis_dsn,
                         timeframe="1s")  # fmt: skip
        proc = await start_worker(
            config, dsn=postgres_dsn, start=start, end=_closed_until(1), name="seconds",
            poll_s=POLL_S, extra_args=["--follow"],
        )  # fmt: skip
        try:
            await _wait_covered(postgres_dsn, nodes, start, _closed_until(1) - 5, proc,
                                timeout_s=15)  # fmt: skip
            await asyncio.sleep(3)
            # bars that closed after the start and after the first coverage
            await _wait_covered(postgres_dsn, nodes, start, _closed_until(1) - 1, proc,
                                timeout_s=3)  # fmt: skip
            summary, _ = await _stop(proc, signal.SIGTERM)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert all(n["missing"] == 0 for n in summary["nodes"]), summary
    assert sim.request_log.count(status=429) == 0
