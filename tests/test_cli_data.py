"""The data commands as a user runs them: demo, fetch, coverage, backfill (real simulator in a
subprocess, real ccxt, real DuckDB)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from qmtl.cli.main import main
from tests.cli_rig import progress_lines

NODE = "ohlcv:binance:BTC/USDT:1m"


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmtl.cli.main", "simulator", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("rest: http://127.0.0.1:"), line
    yield line.removeprefix("rest: ")
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


def test_demo_backfills_with_faults_and_serves_the_second_pass_from_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--days", "3", "--dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["klines_requests_second_pass"] == 0
    assert set(report["retries"]) == {"ExchangeUnavailableError", "ExchangeDataError"}
    nodes = {n["node_id"]: n for n in report["nodes"]}
    assert all(not n["missing"] and n["same_fingerprint_second_pass"] for n in nodes.values())
    assert nodes["ohlcv:binance:BTC/USDT:1m"]["known_empty_bars"] == 180  # the 3 h halt
    assert nodes["ohlcv:binance:SOL/USDT:1m"]["known_empty_bars"] > 0  # before its listing
    assert nodes["ohlcv:binance:ETH/USDT:1m"]["data_bars"] == 3 * 1440
    assert (tmp_path / "seamless.duckdb").exists()


def test_fetch_writes_parquet_and_csv_and_coverage_reads_the_ledger(
    simulator_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"duckdb:///{tmp_path}/s.duckdb"
    args = ["fetch", NODE, "--start", "2024-01-01", "--end", "2024-01-02", "--dsn", dsn]
    args += ["--exchange-url", simulator_url]
    assert main([*args, "--out", str(tmp_path / "bars.parquet"), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["rows"] == 1440 and meta["missing_ranges"] == []
    assert meta["dataset_fingerprint"].startswith("sha256:")
    frame = pd.read_parquet(tmp_path / "bars.parquet")
    assert list(frame.columns) == ["ts", "open", "high", "low", "close", "volume"]
    assert len(frame) == 1440 and frame["ts"].iloc[-1] == 1704153600 - 60
    assert main([*args, "--out", str(tmp_path / "bars.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "bars.csv")) == 1440
    assert "sha256:" in capsys.readouterr().out

    assert main(["coverage", NODE, "--dsn", dsn, "--json"]) == 0
    cov = json.loads(capsys.readouterr().out)
    assert cov["data_bars"] == 1440 and cov["missing"] == [] and cov["coverage_ratio"] == 1.0
    assert cov["store"] == f"{tmp_path}/s.duckdb"


def test_backfill_command_fills_every_configured_node(
    simulator_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "seamless:\n"
        f"  storage: {{dsn: 'duckdb:///{tmp_path}/b.duckdb'}}\n"
        "exchanges:\n"
        "  binance:\n"
        "    symbols: [BTC/USDT, ETH/USDT]\n"
        "    timeframes: [1m, 1h]\n"
        f"    urls: {{rest: '{simulator_url}'}}\n"
    )
    args = ["backfill", "--config", str(config), "--start", "2024-02-01", "--end", "2024-02-03"]
    assert main([*args, "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["store"] == f"{tmp_path}/b.duckdb"
    reports = output["nodes"]
    assert [r["node_id"] for r in reports] == [
        "ohlcv:binance:BTC/USDT:1m",
        "ohlcv:binance:BTC/USDT:1h",
        "ohlcv:binance:ETH/USDT:1m",
        "ohlcv:binance:ETH/USDT:1h",
    ]
    assert [r["data_bars"] for r in reports] == [2880, 48, 2880, 48]
    assert all(r["gaps"] == [] for r in reports)
    assert main(args) == 0  # second run: nothing missing, human report
    out, err = capsys.readouterr()
    assert "gap report" in out
    assert f"store: {tmp_path}/b.duckdb" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fetch", "ohlcv:binance:BTC/USDT:7m", "--days", "1"], "unknown timeframe '7m'"),
        (["fetch", NODE, "--start", "2024-01-02", "--end", "2024-01-01"], "is not before"),
        (["fetch", NODE, "--days", "1", "--out", "x.xlsx"], "--out must end in"),
        (["fetch", NODE, "--start", "yesterday"], "is not a date or time; accepted: ISO-8601"),
        (["coverage", NODE, "--dsn", "mysql://x"], "supported"),
        (["demo", "--days", "0"], "--days must be within"),
        (["backfill", "--config", "/nonexistent.yaml"], "nonexistent.yaml"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_backfill_reads_archives_first_and_reports_the_sources_apart(
    simulator_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``archive.enabled`` with ``--exchange-url``: the archive's default base URL follows
    the exchange URL (the simulator serves both); January 2024 comes from one monthly file,
    the half day after it from REST, and the report says so."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "seamless:\n"
        f"  storage: {{dsn: 'duckdb:///{tmp_path}/a.duckdb'}}\n"
        "exchanges:\n"
        "  binance:\n"
        "    symbols: [BTC/USDT]\n"
        "    archive: {enabled: true}\n"
    )
    args = ["backfill", "--config", str(config), "--exchange-url", simulator_url,
            "--start", "2024-01-01", "--end", "2024-02-01T12:00:00Z"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["sources"]["archive_bars"] == 31 * 1440
    assert output["sources"]["archive_files"] == 1
    assert output["sources"]["rest_bars"] == 720
    assert 1 <= output["sources"]["rest_requests"] <= 3  # the half day (+ the markets)
    assert output["nodes"][0]["data_bars"] == 31 * 1440 + 720


@pytest.mark.usefixtures("terminal")
def test_backfill_progress_and_report_show_archive_and_rest_apart(
    simulator_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "seamless:\n"
        f"  storage: {{dsn: 'duckdb:///{tmp_path}/p.duckdb'}}\n"
        "exchanges:\n"
        "  binance: {symbols: [BTC/USDT], archive: {enabled: true}}\n"
    )
    args = ["backfill", "--config", str(config), "--exchange-url", simulator_url,
            "--start", "2024-03-01", "--end", "2024-03-03T06:00:00Z"]  # fmt: skip
    assert main(args) == 0
    out, err = capsys.readouterr()
    last = progress_lines(err, "backfill")[-1]
    assert "3240/3240 bars" in last and "+ 2,880 bars from 2 archive files" in last, last
    assert "sources: 2,880 bars from 2 archive files, 360 bars from " in out
