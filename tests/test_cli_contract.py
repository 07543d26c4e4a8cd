"""The CLI contract of SPEC §15, command by command, as a user runs it: ``main([...])``
against the exchange simulator (real HTTP, real ccxt, in a subprocess) and real DuckDB files.

- an explicit ``--exchange-url``/``--dsn`` overrides the ``--config`` file, everywhere;
- absurd windows are one line and exit 2, before anything is built or contacted;
- logs: one human line per warning with its reason, or JSON lines (``QMTL_LOG_FORMAT``);
- ``backfill`` counts failed batches as failed and says why each range is missing;
- ``fetch`` finishes its job (AUTO_BACKFILL by default, background work waited for);
- ``config check`` runs the runtime's checks; read commands never create a store;
- exit codes: 0 complete, 1 missing data, 2 user mistake, 3 environment failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmtl.cli.main import main
from tests.cli_rig import dead_url, one_error_line, progress_lines, simulator

NODE = "ohlcv:binance:BTC/USDT:1m"
DAY = ["--start", "2024-02-01", "--end", "2024-02-02"]
#: BTC/USDT klines always answer 503; ETH/USDT is healthy.
BTC_DOWN = """\
symbols:
  BTC/USDT: {outages: [{next_requests: 1000000, status: 503}]}
  ETH/USDT: {}
"""
#: Few, fast retries: failures are the point of these tests, not the backoff.
FAST_RETRIES = "  backfill: {max_attempts: 2, retry_backoff_ms: 10}\n"


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with simulator(tmp_path_factory.mktemp("sim")) as url:
        yield url


@pytest.fixture(scope="module")
def btc_down_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with simulator(tmp_path_factory.mktemp("sim_down"), BTC_DOWN) as url:
        yield url


@pytest.fixture(autouse=True)
def _no_log_format_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QMTL_LOG_FORMAT", raising=False)


def write_config(
    tmp: Path,
    *,
    rest: str | None,
    symbols: str = "[BTC/USDT]",
    store: str = "store.duckdb",
    seamless: str = FAST_RETRIES,
) -> Path:
    urls = f", urls: {{rest: '{rest}'}}" if rest else ""
    path = tmp / "seamless.yaml"
    path.write_text(
        "seamless:\n"
        f"  storage: {{dsn: 'duckdb:///{tmp / store}'}}\n"
        f"{seamless}"
        "exchanges:\n"
        f"  binance: {{symbols: {symbols}, timeframes: [1m]{urls}}}\n"
    )
    return path


# -- 1. explicit arguments override the file ---------------------------------------------------


def test_exchange_url_and_dsn_override_the_config_file(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, rest=dead_url())  # the file points at nothing
    store = tmp_path / "store.duckdb"
    fetch = ["fetch", NODE, *DAY, "--config", str(config), "--exchange-url", sim_url]
    assert main([*fetch, "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["rows"] == 1440 and meta["missing_ranges"] == []
    assert meta["store"] == str(store)

    backfill = ["backfill", "--config", str(config), "--exchange-url", sim_url]
    assert main([*backfill, "--start", "2024-02-02", "--end", "2024-02-03"]) == 0
    out, err = capsys.readouterr()
    assert f"store: {store}" in err.splitlines()
    assert "gap report" in out

    # coverage takes --config too (the store it names), and --dsn wins over it
    assert main(["coverage", NODE, "--config", str(config), "--json"]) == 0
    cov = json.loads(capsys.readouterr().out)
    assert cov["store"] == str(store) and cov["data_bars"] == 2 * 1440
    other = tmp_path / "other.duckdb"
    assert main(["coverage", NODE, "--config", str(config), "--dsn", f"duckdb:///{other}"]) == 2
    assert f"no store at {other}" in one_error_line(capsys.readouterr().err, "coverage")


# -- 2. absurd input ---------------------------------------------------------------------------

ABSURD = [
    ["--start", "-99999999999", "--end", "0"],
    ["--days", "inf"],
    ["--days", "nan"],
    ["--days", "1e300"],
    ["--days", "-1"],
    ["--days", "abc"],
    ["--start", "99999999999999999999", "--end", "999999999999999999999"],
    ["--start", "1" * 5000],
    ["--start", "2024-01-01", "--end", "99999999999999"],
]


@pytest.mark.parametrize("window", ABSURD, ids=lambda w: " ".join(w)[:40])
@pytest.mark.parametrize("command", ["fetch", "backfill", "coverage"])
def test_absurd_windows_are_one_line_and_exit_2_before_anything_starts(
    command: str, window: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, rest=dead_url())
    argv = {
        "fetch": ["fetch", NODE, "--config", str(config)],
        "backfill": ["backfill", "--config", str(config)],
        "coverage": ["coverage", NODE, "--config", str(config)],
    }[command]
    assert main([*argv, *window]) == 2
    one_error_line(capsys.readouterr().err, command)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seamless.yaml"]  # no store made


def test_a_window_over_max_range_bars_is_refused_before_backfilling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, rest=dead_url())
    window = ["--start", "0", "--end", "99999999999"]  # 1.7e9 bars of 1m
    for argv in (["fetch", NODE], ["backfill"]):
        assert main([*argv, "--config", str(config), *window]) == 2
        line = one_error_line(capsys.readouterr().err, argv[0])
        assert "more than backfill.max_range_bars" in line
    assert not (tmp_path / "store.duckdb").exists()


# -- 3. logs -----------------------------------------------------------------------------------


def test_human_logs_are_one_line_per_warning_with_the_reason(
    btc_down_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, rest=btc_down_url)
    assert main(["backfill", "--config", str(config), *DAY]) == 3
    err = capsys.readouterr().err.splitlines()
    failed = sorted(line for line in err if line.startswith("backfill failed: "))  # concurrent
    assert len(failed) == 2
    assert failed[0].startswith(
        "backfill failed: ohlcv:binance:BTC/USDT:1m [2024-02-01T00:00:00Z, "
    )
    assert " after 2 attempts: ExchangeUnavailableError: " in failed[0] and "503" in failed[0]
    assert any(line.startswith("backfill retry: ") for line in err)
    assert not any(line.startswith("seamless.") for line in err)  # never a bare event name
    assert not any("backfill attempt" in line for line in err)  # INFO is for JSON logs


def _json_log_lines(err: str) -> list[dict[str, object]]:
    """Every stderr line but the command's own error line is one JSON object."""
    lines = [line for line in err.splitlines() if not line.startswith("qmtl-seamless ")]
    return [json.loads(line) for line in lines]


def test_qmtl_log_format_json_makes_stderr_json_lines_and_stdout_stays_json(
    btc_down_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("QMTL_LOG_FORMAT", "json")
    config = write_config(tmp_path, rest=btc_down_url, symbols="[BTC/USDT, ETH/USDT]")
    assert main(["backfill", "--config", str(config), *DAY, "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["store"] == str(tmp_path / "store.duckdb")
    records = _json_log_lines(err)
    events = {r["event"] for r in records}
    assert {"seamless.backfill.attempt", "seamless.backfill.succeeded"} <= events
    failed = [r for r in records if r["event"] == "seamless.backfill.failed"]
    assert len(failed) == 2
    assert all(r["node_id"] == NODE and r["level"] == "error" for r in failed)
    assert all(str(r["error"]).startswith("ExchangeUnavailableError: ") for r in failed)


def test_log_format_json_from_the_config_file(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seamless = "  observability: {log_format: json}\n"
    config = write_config(tmp_path, rest=sim_url, seamless=seamless)
    assert main(["fetch", NODE, *DAY, "--config", str(config), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["rows"] == 1440
    succeeded = [r for r in _json_log_lines(err) if r["event"] == "seamless.backfill.succeeded"]
    assert sum(int(str(r["rows"])) for r in succeeded) == 1440


# -- 4. backfill progress and gap report ---------------------------------------------------------


@pytest.mark.usefixtures("terminal")
def test_backfill_counts_failed_batches_and_reports_why_ranges_are_missing(
    btc_down_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, rest=btc_down_url, symbols="[BTC/USDT, ETH/USDT]")
    assert main(["backfill", "--config", str(config), *DAY]) == 1  # ETH stored: served, partly
    out, err = capsys.readouterr()
    progress = progress_lines(err, "backfill")
    assert progress, err
    assert "1440/2880 bars" in progress[-1]  # only the bars that were stored
    assert "failed 2 batches (1,440 bars)" in progress[-1]
    (gap,) = [line.strip() for line in out.splitlines() if "MISSING" in line]
    assert gap.startswith(
        "MISSING ohlcv:binance:BTC/USDT:1m [2024-02-01T00:00:00Z, 2024-02-02T00:00:00Z)  "
        "1,440 bars: ExchangeUnavailableError: "
    )

    # again: ETH is already complete, BTC fails again -- nothing done, the exchange is down
    assert main(["backfill", "--config", str(config), *DAY, "--json"]) == 3
    nodes = {n["node_id"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    (btc_gap,) = nodes[NODE]["gaps"]
    assert (btc_gap["start"], btc_gap["end"]) == (1706745600, 1706832000)
    assert btc_gap["reasons"] and all("503" in r for r in btc_gap["reasons"])
    assert nodes["ohlcv:binance:ETH/USDT:1m"]["gaps"] == []


# -- 5. fetch finishes its job -----------------------------------------------------------------


def test_fetch_defaults_to_auto_backfill(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"duckdb:///{tmp_path / 's.duckdb'}"
    assert main(["fetch", NODE, *DAY, "--dsn", dsn, "--exchange-url", sim_url, "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["strategy"] == "AUTO_BACKFILL" and meta["rows"] == 1440


def test_fetch_partial_fill_waits_for_the_background_backfill(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"duckdb:///{tmp_path / 's.duckdb'}"
    args = ["fetch", NODE, *DAY, "--dsn", dsn, "--exchange-url", sim_url]
    assert main([*args, "--strategy", "PARTIAL_FILL", "--json"]) == 1  # served: nothing yet
    meta = json.loads(capsys.readouterr().out)
    assert meta["rows"] == 0 and meta["partial"]
    assert meta["background_batches_waited_for"] >= 1
    assert meta["stored_after_wait"]["missing"] == []
    assert meta["stored_after_wait"]["data_bars"] == 1440

    assert main(["coverage", NODE, "--dsn", dsn, *DAY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data_bars"] == 1440

    later = ["fetch", NODE, "--start", "2024-02-02", "--end", "2024-02-03"]
    later += ["--dsn", dsn, "--exchange-url", sim_url, "--strategy", "PARTIAL_FILL"]
    assert main(later) == 1
    out = capsys.readouterr().out
    assert "waited for 2 background batch(es) before exiting" in out
    assert "the store now holds 100.00% of the range" in out


# -- 6. config check ---------------------------------------------------------------------------


def test_config_check_runs_every_runtime_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "exchanges:\n"
        "  binance: {symbols: [BTC/USDT], page_limit: 5000}\n"
        "  binanse: {symbols: [BTC/USDT]}\n"
        "  nosuchex: {symbols: [BTC/USDT]}\n"
    )
    assert main(["config", "check", str(path)]) == 2  # a user mistake, as for every command
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == (
        "exchanges.binance.page_limit: 5000 is more than binance spot serves per request (1000)"
    )
    assert lines[1].startswith("exchanges.binanse: 'binanse' is not a ccxt exchange; did you")
    assert "'binance'" in lines[1]
    assert lines[2].startswith("exchanges.nosuchex: 'nosuchex' is not a ccxt exchange")
    assert len(lines) == 3
    # and backfill refuses the same file with the same problems, before touching anything
    assert main(["backfill", "--config", str(path)]) == 2
    assert "exchanges.binance.page_limit: 5000" in capsys.readouterr().err


# -- 7. read commands never create a store; --out checked first --------------------------------


def test_coverage_of_a_mistyped_store_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo" / "stroe.duckdb"
    assert main(["coverage", NODE, "--dsn", f"duckdb:///{missing}"]) == 2
    line = one_error_line(capsys.readouterr().err, "coverage")
    assert f"no store at {missing}" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("nodir/bars.parquet", "does not exist"),
        ("bars.xlsx", "--out must end in .parquet or .csv"),
        ("adir.csv", "is a directory"),
    ],
)
def test_fetch_out_is_checked_before_fetching(
    out: str, message: str, sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "adir.csv").mkdir()
    store = tmp_path / "s.duckdb"
    argv = ["fetch", NODE, *DAY, "--dsn", f"duckdb:///{store}", "--exchange-url", sim_url]
    assert main([*argv, "--out", str(tmp_path / out)]) == 2
    assert message in one_error_line(capsys.readouterr().err, "fetch")
    assert not store.exists()  # nothing fetched, nothing stored


# -- 8. exit codes -----------------------------------------------------------------------------


def test_fail_fast_with_missing_data_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"duckdb:///{tmp_path / 's.duckdb'}"
    argv = ["fetch", NODE, *DAY, "--dsn", dsn, "--exchange-url", dead_url()]
    assert main([*argv, "--strategy", "FAIL_FAST"]) == 1
    assert "missing ranges" in one_error_line(capsys.readouterr().err, "fetch")


def test_unknown_symbol_is_a_user_mistake(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"duckdb:///{tmp_path / 's.duckdb'}"
    node = "ohlcv:binance:NOPE/USDT:1m"
    assert main(["fetch", node, *DAY, "--dsn", dsn, "--exchange-url", sim_url, "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["missing_ranges"]  # the report still comes, machine-readable
    errors = [line for line in err.splitlines() if line.startswith("qmtl-seamless fetch:")]
    assert len(errors) == 1 and "ExchangeRequestError: BadSymbol" in errors[0]


def test_unreachable_exchange_is_an_environment_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, rest=dead_url(), seamless="  backfill: {max_attempts: 1}\n")
    assert main(["fetch", NODE, *DAY, "--config", str(config)]) == 3
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("qmtl-seamless")]
    assert len(errors) == 1 and "ExchangeUnavailableError" in errors[0]
    assert main(["backfill", "--config", str(config), *DAY]) == 3


def test_a_failing_store_is_an_environment_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dir.duckdb").mkdir()  # a directory where the DuckDB file should be
    dsn = f"duckdb:///{tmp_path / 'dir.duckdb'}"
    assert main(["fetch", NODE, *DAY, "--dsn", dsn, "--exchange-url", dead_url()]) == 3
    assert "cannot open DuckDB store" in one_error_line(capsys.readouterr().err, "fetch")


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch"]) == 2
    assert "the following arguments are required: NODE_ID" in one_error_line(
        capsys.readouterr().err, "fetch"
    )
    assert main(["fetch", "ohlcv:binance:BTC/USDT:7m", "--days", "1"]) == 2
    assert "unknown timeframe '7m'" in one_error_line(capsys.readouterr().err, "fetch")


def test_main_leaves_the_logging_setup_as_it_found_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logging is configured for the run only: after ``main`` returns, the ``qmtl`` logger is
    back as it was (other code in the process keeps its handlers and propagation)."""
    import logging

    qmtl_logger = logging.getLogger("qmtl")
    before = (list(qmtl_logger.handlers), qmtl_logger.level, qmtl_logger.propagate)
    assert main(["coverage", NODE, "--dsn", f"duckdb:///{tmp_path / 'none.duckdb'}"]) == 2
    capsys.readouterr()
    assert (list(qmtl_logger.handlers), qmtl_logger.level, qmtl_logger.propagate) == before
