"""A new user's first hour, as the user types it: dates the way traders write them, results
they can read, notebooks, exports that say what they hold — each observed problem as the
command or call that showed it (real simulator in a subprocess, real ccxt, real DuckDB)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from blockbuster import BlockBuster

from qmtl.cli import _common
from qmtl.cli.main import main
from qmtl.runtime.io import EnhancedQuestDBProvider
from qmtl.runtime.sdk import Range, SeamlessCoverageError
from tests.cli_rig import one_error_line, progress_lines, simulator

NODE = "ohlcv:binance:BTC/USDT:1m"
JAN1, JAN2 = 1_704_067_200, 1_704_153_600  # 2024-01-01 and 2024-01-02, 00:00 UTC


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with simulator(tmp_path_factory.mktemp("sim")) as url:
        yield url


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the date-form tests: the first fills it, the others read it."""
    return f"duckdb:///{tmp_path_factory.mktemp('store') / 's.duckdb'}"


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def provider_for(sim_url: str, tmp_path: Path, **seamless: Any) -> EnhancedQuestDBProvider:
    return EnhancedQuestDBProvider.from_config(
        {
            "seamless": {"storage": {"dsn": f"duckdb:///{tmp_path / 'p.duckdb'}"}, **seamless},
            "exchanges": {"binance": {"symbols": ["BTC/USDT"], "urls": {"rest": sim_url}}},
        },
        env={},
        strategy="AUTO_BACKFILL",
    )


# -- dates as traders write them ----------------------------------------------------------------


@pytest.mark.parametrize(
    "window",
    [
        ["--start", "20240101", "--end", "20240102"],  # was read as epoch seconds: 1970, 0 rows
        ["--timerange", "20240101-20240102"],
        ["--start", "1704067200000", "--end", "1704153600000"],  # ms: was "year 58877"
        ["--start", "2024-01-01", "--end", "2024-01-02T00:00:00Z"],
        ["--start", "1704067200", "--end", "20240102"],
    ],
    ids=["yyyymmdd", "timerange", "epoch-ms", "iso", "mixed"],
)
def test_fetch_reads_every_date_form_as_the_same_day(
    window: list[str], sim_url: str, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fetch", NODE, *window, "--dsn", store, "--exchange-url", sim_url]
    code, meta = run_json(argv, capsys)
    assert code == 0
    assert meta["requested_range"] == [JAN1, JAN2]
    assert meta["rows"] == 1440 and meta["missing_ranges"] == []


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (["--start", "2024-01-01T00:00", "--end", "2024-01-02"], "has no timezone"),
        (["--start", "20241301", "--end", "20250102"], "is not a date YYYYMMDD"),
        (["--start", "next tuesday"], "is not a date or time"),
        (["--timerange", "2024-01-01-2024-01-02"], "--timerange: expected START-END"),
        (["--timerange", "-20240102"], "needs one"),  # fetch needs a start
        (["--timerange", "20240101-20240102", "--start", "20240101"], "not both"),
        (["--start", "9999999999999999"], "after year 9999 even as epoch milliseconds"),
    ],
)
def test_ambiguous_or_impossible_dates_are_one_line_naming_the_accepted_forms(
    window: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fetch", NODE, *window, "--dsn", f"duckdb:///{tmp_path / 's.duckdb'}"]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, "fetch")
    assert message in line
    if "date or time" in message or "timezone" in message or "YYYYMMDD" in message:
        assert "accepted: ISO-8601" in line and "epoch milliseconds" in line
    assert not (tmp_path / "s.duckdb").exists()


def test_coverage_takes_open_ended_timeranges(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"duckdb:///{tmp_path / 's.duckdb'}"
    fetch = ["fetch", NODE, "--timerange", "20240101-20240102", "--dsn", dsn]
    assert main([*fetch, "--exchange-url", sim_url]) == 0
    capsys.readouterr()
    code, cov = run_json(["coverage", NODE, "--timerange", "-20240102", "--dsn", dsn], capsys)
    assert code == 0 and cov["window"] == [JAN1, JAN2]  # from the first stored bar
    assert cov["window_iso"] == ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]
    code, cov = run_json(["coverage", NODE, "--timerange", "20240101-", "--dsn", dsn], capsys)
    assert code == 1 and cov["window"][0] == JAN1 and cov["missing"][0][0] == JAN2  # to now


# -- the library: dates, interval, errors in ISO ---------------------------------------------------


async def test_python_fetch_reads_dates_derives_the_interval_and_refuses_ambiguity(
    sim_url: str, tmp_path: Path
) -> None:
    async with provider_for(sim_url, tmp_path) as provider:
        result = await provider.fetch("20240101", "20240102", node_id=NODE)  # no interval=
        assert result.metadata.requested_range == Range(JAN1, JAN2) and len(result) == 1440
        millis = await provider.fetch(JAN1 * 1000, JAN2 * 1000, node_id=NODE)
        assert millis.metadata.dataset_fingerprint == result.metadata.dataset_fingerprint
        with pytest.raises(ValueError, match=r"20240101 is ambiguous.*'20240101'.*accepted"):
            await provider.fetch(20240101, 20240102, node_id=NODE)  # was: 1970, silently
        with pytest.raises(ValueError, match="does not match timeframe"):
            await provider.fetch(JAN1, JAN2, node_id=NODE, interval=3600)
        report = await provider.coverage_report(node_id=NODE)
        assert (report.window, report.data_bars, report.missing) == (Range(JAN1, JAN2), 1440, ())
        assert report.complete and report.ratio == 1.0
        assert "2024-01-01T00:00:00Z" in str(report)


async def test_ranges_and_errors_show_iso_next_to_the_epoch(sim_url: str, tmp_path: Path) -> None:
    assert str(Range(JAN1, JAN2)) == (
        "[2024-01-01T00:00:00Z, 2024-01-02T00:00:00Z) = [1704067200, 1704153600)"
    )
    provider = provider_for(sim_url, tmp_path)
    provider.strategy = type(provider.strategy).FAIL_FAST
    async with provider:
        with pytest.raises(SeamlessCoverageError) as caught:
            await provider.fetch("2024-01-01", "2024-01-02", node_id=NODE)
    assert "[2024-01-01T00:00:00Z, 2024-01-02T00:00:00Z) = [1704067200, 1704153600)" in str(
        caught.value
    )


async def test_a_finished_auto_backfill_is_never_downgraded_whatever_the_sla(
    sim_url: str, tmp_path: Path
) -> None:
    tiny = {"max_wait_storage_ms": 1, "max_wait_backfill_ms": 1, "total_deadline_ms": 1}
    async with provider_for(sim_url, tmp_path, sla=tiny) as provider:
        meta = (await provider.fetch("2024-01-01", "2024-01-03", node_id=NODE)).metadata
    assert meta.strategy == "AUTO_BACKFILL" and meta.rows == 2880
    assert not meta.downgraded and meta.downgrade_reason is None and meta.sla_violation is None
    assert not meta.partial


# -- notebooks --------------------------------------------------------------------------------


def test_fetch_sync_works_in_plain_code_and_inside_a_running_loop(
    sim_url: str, tmp_path: Path, blockbuster: BlockBuster
) -> None:
    with provider_for(sim_url, tmp_path) as provider:
        result = provider.fetch_sync("2024-01-01", "2024-01-02", node_id=NODE)
        assert len(result) == 1440 and provider.last_fetch_metadata == result.metadata
        indexed = result.to_pandas(datetime_index=True)
        assert isinstance(indexed.index, pd.DatetimeIndex) and str(indexed.index.tz) == "UTC"
        assert indexed.index.name == "time" and indexed.index[0] == pd.Timestamp(
            JAN1, unit="s", tz="UTC"
        )
        assert indexed["ts"].iloc[-1] == JAN2 - 60 and result.frame.index[0] == 0  # a copy

        async def notebook_cell() -> str | None:  # Jupyter runs a loop in the main thread
            return provider.fetch_sync(JAN1, JAN2, node_id=NODE).metadata.dataset_fingerprint

        blockbuster.deactivate()  # a notebook cell *does* block its loop while it waits
        assert asyncio.run(notebook_cell()) == result.metadata.dataset_fingerprint
        blockbuster.activate()
        report = provider.run_sync(provider.coverage_report(node_id=NODE))
        assert report.data_bars == 1440
    assert provider._loop_thread is None  # released by the with block


# -- exports, tables, progress, stores ----------------------------------------------------------


def test_exports_carry_provenance(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"duckdb:///{tmp_path / 's.duckdb'}"
    base = ["fetch", NODE, "--timerange", "20240101-20240102", "--dsn", dsn]
    base += ["--exchange-url", sim_url]
    code, meta = run_json([*base, "--out", str(tmp_path / "bars.parquet")], capsys)
    assert code == 0
    kv = {
        k.decode(): v.decode()
        for k, v in pq.read_schema(tmp_path / "bars.parquet").metadata.items()
    }
    assert kv["node_id"] == NODE and kv["interval"] == "60"
    assert (kv["start"], kv["end"]) == (str(JAN1), str(JAN2))
    assert (kv["start_iso"], kv["end_iso"]) == ("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z")
    assert kv["dataset_fingerprint"] == meta["dataset_fingerprint"].strip()
    assert kv["as_of"] == "" and kv["producer"] == "qmtl-seamless" and kv["producer_version"]
    assert json.loads(kv["missing_ranges"]) == []
    assert len(pd.read_parquet(tmp_path / "bars.parquet")) == 1440

    csv = tmp_path / "bars.csv"
    assert main([*base, "--out", str(csv), "--sidecar"]) == 0
    sidecar = json.loads((tmp_path / "bars.csv.json").read_text())
    assert (
        sidecar["dataset_fingerprint"] == kv["dataset_fingerprint"]
        and len(pd.read_csv(csv)) == 1440
    )
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "b.parquet"), "--sidecar"]) == 2
    assert "--sidecar is for CSV" in one_error_line(capsys.readouterr().err, "fetch")


def test_reports_keep_every_digit_at_80_columns(
    sim_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_common.console, "_width", 80)
    long_node = "ohlcv:binance:BTC/USDT:1m"
    dsn = f"duckdb:///{tmp_path / 's.duckdb'}"
    argv = ["fetch", long_node, "--start", "2023-12-01", "--end", "2024-01-02", "--dsn", dsn]
    assert main([*argv, "--exchange-url", sim_url]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "46,080" in out  # rows, never "44,6…"
    assert main(["coverage", long_node, "--dsn", dsn]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "46,080" in out and "100.00%" in out


@pytest.mark.usefixtures("terminal")
def test_fetch_shows_progress_on_a_terminal_and_none_with_json(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"duckdb:///{tmp_path / 's.duckdb'}"
    argv = ["fetch", NODE, "--timerange", "20240101-20240103", "--dsn", dsn]
    argv += ["--exchange-url", sim_url]
    assert main(argv) == 0
    lines = progress_lines(capsys.readouterr().err, "fetch")
    assert lines and "2880/2880 bars" in lines[-1] and "requests" in lines[-1]
    assert "ETA" in lines[-1]
    other = ["fetch", NODE, "--timerange", "20240103-20240104", "--dsn", dsn]
    assert main([*other, "--exchange-url", sim_url, "--json"]) == 0
    assert progress_lines(capsys.readouterr().err, "fetch") == []


def test_a_three_slash_dsn_is_relative_and_every_command_says_where_it_is(
    sim_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    dsn = "duckdb:///data/x.duckdb"  # relative to the working directory
    assert main(["coverage", NODE, "--dsn", dsn]) == 2
    assert f"no store at {tmp_path}/data/x.duckdb" in one_error_line(
        capsys.readouterr().err, "coverage"
    )
    (tmp_path / "data").mkdir()
    argv = ["fetch", NODE, "--timerange", "20240101-20240102", "--dsn", dsn]
    assert main([*argv, "--exchange-url", sim_url]) == 0
    assert f"store: {tmp_path}/data/x.duckdb" in capsys.readouterr().err
    code, cov = run_json(["coverage", NODE, "--dsn", dsn], capsys)
    assert code == 0 and cov["store"] == f"{tmp_path}/data/x.duckdb"


def test_demo_takes_dsn_and_reports_the_store_it_resolved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "elsewhere" / "d.duckdb"
    code, report = run_json(["demo", "--days", "1", "--dsn", f"duckdb:///{store}"], capsys)
    assert code == 0 and report["store"] == str(store) and store.exists()
    assert main(["demo", "--dsn", "mysql://x"]) == 2
    assert "unsupported scheme" in one_error_line(capsys.readouterr().err, "demo")


def test_a_store_another_process_writes_is_named_with_the_one_writer_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "busy.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STORE, str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert main(["coverage", NODE, "--dsn", f"duckdb:///{store}"]) == 3
        line = one_error_line(capsys.readouterr().err, "coverage")
        assert f"DuckDB store {store} is in use by another process (process {holder.pid})" in line
        assert "one writer at a time" in line and "-readonly" not in line
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()


#: A process that opens a DuckDB file for writing and keeps it open.
HOLD_STORE = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("open", flush=True)
time.sleep(60)
"""


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    command = f"{sys.executable} -m qmtl.cli.main exchanges --json | head -c 10"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "" and len(done.stdout) == 10
