"""Archive-first backfill end to end: the real provider and ccxt client against the simulator,
which serves Binance's REST API and its public-data archive on one port.

Invariants: the same range backfilled archive-first and REST-only stores the same bars and
serves the same fingerprint, whatever is wrong with the archive (missing, corrupt, checksum
mismatch, bars missing inside a file); archives never establish known-empty; the ledger says
which segments came from archives; REST is asked only for what the archive could not give.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.io.composition import build_provider
from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.config import ConfigError, load_config
from qmtl.runtime.sdk.fetch_result import SeamlessFetchResult
from qmtl.runtime.sdk.history_coverage import Range, SegmentKind
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.services.coordinator import open_lease_store, run_coordinator
from qmtl.services.exchange_sim import Scenario, SimulatorServer, run_simulator

NODE = "ohlcv:binance:BTC/USDT:1m"
USDM = "ohlcv:binanceusdm:BTC/USDT:USDT:1h"


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def config(tmp: Path, sim: SimulatorServer, name: str, *, archive: bool, **archive_extra: Any
           ) -> Any:  # fmt: skip
    archive_entry = {"enabled": archive, "base_url": sim.base_url, **archive_extra}
    entry = {"symbols": ["BTC/USDT"], "timeframes": ["1m"], "urls": {"rest": sim.base_url},
             "archive": archive_entry}  # fmt: skip
    return load_config(
        {"exchanges": {"binance": entry},
         "seamless": {"storage": {"dsn": f"duckdb:///{tmp / name}.duckdb"}}},
        env={},
    )  # fmt: skip


async def backfill(cfg: Any, start: int, end: int, node: str = NODE) -> SeamlessFetchResult:
    async with build_provider(cfg, strategy="AUTO_BACKFILL") as provider:
        return await provider.fetch(start, end, node_id=node)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with run_simulator(Scenario.from_dict({"seed": 5})) as server:
        yield server


def klines(sim: SimulatorServer) -> int:
    return sim.request_log.count("/api/v3/klines")


async def test_archive_first_and_rest_only_store_the_same_bars(
    sim: SimulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """December 2024 (millisecond files) into January 2025 (microseconds), from mid-day to
    mid-day: two monthly files, whole days, and REST only for the two partial days."""
    start, end = ts("2024-11-29T12:00:00"), ts("2025-02-02T06:00:00")
    rest_only = await backfill(config(tmp_path, sim, "rest", archive=False), start, end)
    rest_requests = klines(sim)
    with caplog.at_level(logging.INFO, logger="qmtl"):
        archived = await backfill(config(tmp_path, sim, "archive", archive=True), start, end)
    archive_requests = klines(sim) - rest_requests
    assert archived.metadata.dataset_fingerprint == rest_only.metadata.dataset_fingerprint
    pd.testing.assert_frame_equal(archived.frame, rest_only.frame)
    assert archived.metadata.coverage_ratio == 1.0 and len(archived.frame) == (end - start) // 60
    # The 2 partial days by REST (12 h + 6 h of 1m bars: a page each, or two where a
    # batch boundary cuts them), against 66 days of pages.
    assert 2 <= archive_requests <= 4 and rest_requests >= 95
    sources = {r.source for r in caplog.records if getattr(r, "source", None)}
    assert sources == {"archive", "ccxt"}
    async with open_storage(f"duckdb:///{tmp_path / 'archive'}.duckdb") as store:
        ledger = await store.read_ledger(NODE, 60)
    archive_data = [s for s in ledger if s.source == "archive"]
    assert archive_data and all(s.kind is SegmentKind.DATA for s in archive_data)
    # Whole days from Nov 30 (a daily file) to Feb 2 (Feb 1's daily file) came from archives.
    assert sum(s.end - s.start for s in archive_data) == ts("2025-02-02") - ts("2024-11-30")


def test_archive_on_an_exchange_without_archives_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"exchanges\.okx\.archive\.enabled: okx \(spot\)"):
        load_config({"exchanges": {"okx": {"archive": {"enabled": True}}}}, env={})


# -- whatever is wrong with the archive ----------------------------------------------------------

FAULT_DAYS = ("2025-01-02", "2025-01-03", "2025-01-04")
SPAN = (ts("2025-01-01T20:00:00"), ts("2025-01-05T03:00:00"))
HALT = [ts("2025-01-03T10:00:00"), ts("2025-01-03T11:30:00")]  # no bars: REST says so
_baseline: dict[str, pd.DataFrame] = {}


def fault_scenario(faults: dict[str, str]) -> Scenario:
    archive: dict[str, Any] = {"missing": [], "corrupt": [], "checksum_mismatch": [],
                               "incomplete": {}}  # fmt: skip
    for day, fault in faults.items():
        name = f"BTCUSDT-1m-{day}.zip"
        if fault == "incomplete":
            hole = ts(f"{day}T05:00:00")
            archive["incomplete"][name] = [[hole, hole + 3 * 3600]]
        else:
            archive[fault].append(name)
    return Scenario.from_dict(
        {"seed": 5, "symbols": {"BTC/USDT": {"halts": [HALT]}}, "archive": archive}
    )


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    faults=st.dictionaries(
        st.sampled_from(FAULT_DAYS),
        st.sampled_from(["missing", "corrupt", "checksum_mismatch", "incomplete"]),
    )
)
async def test_any_archive_fault_leaves_the_store_equal_to_the_exchange(
    tmp_path_factory: pytest.TempPathFactory, faults: dict[str, str]
) -> None:
    tmp = tmp_path_factory.mktemp("faults")
    async with run_simulator(fault_scenario(faults)) as sim:
        if "rest" not in _baseline:
            rest = await backfill(config(tmp, sim, "rest", archive=False), *SPAN)
            _baseline["rest"] = rest.frame
        before = klines(sim)
        archived = await backfill(config(tmp, sim, "archive", archive=True), *SPAN)
        requests = klines(sim) - before
    pd.testing.assert_frame_equal(archived.frame, _baseline["rest"])
    assert archived.metadata.coverage_ratio == 1.0
    async with open_storage(f"duckdb:///{tmp / 'archive'}.duckdb") as store:
        ledger = await store.read_ledger(NODE, 60)
    empty = [s for s in ledger if s.kind is SegmentKind.EMPTY]
    assert [Range(s.start, s.end) for s in empty] == [Range(*HALT)]  # the halt, and only it
    assert all(s.source != "archive" for s in empty)  # never on an archive's word
    # REST asked for the two partial days and, per bad file, that day or its hole.
    assert requests <= 4 + 2 * len(faults)


async def test_a_bad_monthly_file_is_reported_and_its_month_fetched_by_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = Scenario.from_dict({"seed": 5, "archive": {"corrupt": ["BTCUSDT-1m-2024-11.zip"]}})
    start, end = ts("2024-10-01"), ts("2024-12-01")
    async with run_simulator(scenario) as sim:
        with caplog.at_level(logging.INFO, logger="qmtl"):
            result = await backfill(config(tmp_path, sim, "a", archive=True), start, end)
        requests = klines(sim)
    assert result.metadata.coverage_ratio == 1.0 and len(result.frame) == (end - start) // 60
    (fallback,) = [r for r in caplog.records if r.getMessage() == "seamless.archive.fallback"]
    assert fallback.kind == "corrupt" and "BTCUSDT-1m-2024-11.zip" in fallback.error  # type: ignore[attr-defined]
    assert fallback.window == str(Range(ts("2024-11-01"), ts("2024-12-01")))  # type: ignore[attr-defined]
    assert 30 * 1440 / 1000 <= requests <= 30 * 1440 / 900 + 2  # November, by REST only


async def test_usdm_hourly_archives_with_their_header_row(tmp_path: Path) -> None:
    start, end = ts("2024-06-01"), ts("2024-08-01")
    async with run_simulator(Scenario.from_dict({"seed": 5})) as sim:
        entry = {"symbols": ["BTC/USDT:USDT"], "timeframes": ["1h"], "market_type": "swap",
                 "urls": {"rest": sim.base_url},
                 "archive": {"enabled": True, "base_url": sim.base_url}}  # fmt: skip
        cfg = load_config({"exchanges": {"binanceusdm": entry}, "seamless": {
            "storage": {"dsn": f"duckdb:///{tmp_path / 'u'}.duckdb"}}}, env={})  # fmt: skip
        result = await backfill(cfg, start, end, node=USDM)
        assert sim.request_log.count("/fapi/v1/klines") == 0  # two whole months: archives only
    assert len(result.frame) == (end - start) // 3600 and result.metadata.coverage_ratio == 1.0


async def test_an_unlisted_symbol_plans_no_archive_and_rest_says_why(
    sim: SimulatorServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, sim, "x", archive=True)
    async with build_provider(cfg, strategy="AUTO_BACKFILL") as provider:
        result = await provider.fetch(ts("2024-10-01"), ts("2024-10-03"),
                                      node_id="ohlcv:binance:NOPE/USDT:1m")  # fmt: skip
    assert result.metadata.coverage_ratio == 0.0
    assert any("NOPE" in e or "symbol" in e.lower() for e in result.metadata.backfill_errors)


async def test_with_a_coordinator_each_file_is_read_under_its_lease(
    sim: SimulatorServer, tmp_path: Path
) -> None:
    """Each archive window is claimed and completed at the coordinator like a REST batch
    (two workers never download one file at once); a window another worker holds is left
    missing — neither downloaded nor fetched by REST — and asked again later."""
    metrics = SeamlessMetrics(CollectorRegistry())
    store = open_lease_store(f"sqlite:///{tmp_path / 'leases.db'}")
    async with run_coordinator(store, metrics=metrics) as server:
        held = f"{NODE}:60:{ts('2024-11-01')}:{ts('2024-12-01')}::"
        async with aiohttp.ClientSession() as http:
            claim = {"key": held, "lease_ms": 600_000}
            async with http.post(f"{server.base_url}/v1/leases/claim", json=claim) as resp:
                assert resp.status == 200  # another worker holds November
        cfg = config(tmp_path, sim, "c", archive=True)
        cfg = replace(cfg, environment=replace(cfg.environment, coordinator_url=server.base_url))
        before = klines(sim)
        result = await backfill(cfg, ts("2024-10-01"), ts("2024-12-01"))
        requests = klines(sim) - before
    count = metrics.registry.get_sample_value
    assert count("seamless_coordinator_leases_total", {"event": "claim"}) == 2  # + ours
    assert count("seamless_coordinator_leases_total", {"event": "complete"}) == 1  # October
    assert len(result.frame) == 31 * 1440  # October from its file; November held
    assert [(m.start, m.end) for m in result.metadata.missing_ranges] == [
        (ts("2024-11-01"), ts("2024-12-01"))
    ]
    assert requests == 0  # the held month was not fetched by REST either


def test_the_fetcher_takes_archive_settings_as_a_mapping_and_refuses_other_exchanges() -> None:
    config = CcxtBackfillConfig(exchange_id="binance", archive={"enabled": True})  # type: ignore[arg-type]
    assert CcxtOHLCVFetcher(config).archive is not None
    assert CcxtOHLCVFetcher(CcxtBackfillConfig(exchange_id="binance")).archive is None
    okx = CcxtBackfillConfig(exchange_id="okx", archive={"enabled": True})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"okx \(spot\) publishes no bulk archives"):
        CcxtOHLCVFetcher(okx)


async def test_the_fetchers_own_fetch_reads_archives_first(sim: SimulatorServer) -> None:
    """``CcxtOHLCVFetcher.fetch`` with the archive on: the same bars as REST-only; REST only
    for the partial days and for a file that could not be used."""
    start, end = ts("2024-05-30T18:00:00"), ts("2024-07-02T06:00:00")
    rest_config = CcxtBackfillConfig(exchange_id="binance", urls={"rest": sim.base_url})
    async with CcxtOHLCVFetcher(rest_config) as rest_fetcher:
        expected = await rest_fetcher.fetch(start, end, node_id=NODE, interval=60)
    before = klines(sim)
    archive = {"enabled": True, "base_url": sim.base_url}
    config = CcxtBackfillConfig(exchange_id="binance", urls={"rest": sim.base_url},
                                archive=archive)  # type: ignore[arg-type]  # fmt: skip
    async with CcxtOHLCVFetcher(config) as fetcher:
        got = await fetcher.fetch(start, end, node_id=NODE, interval=60)
    pd.testing.assert_frame_equal(got, expected)
    assert len(got) == (end - start) // 60
    assert klines(sim) - before <= 4  # 6 h + 6 h by REST: May and July 1 from daily files
