"""``qmtl-seamless config check FILE``: ``ok``, a summary and what it resolved, exit 0; or one
error per line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qmtl.cli import config_cmd
from qmtl.runtime.sdk import pending_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "config.example.yaml"
BAD = """\
seamless:
  backfill: {retry_max: 3, window_bars: abc}
  artifact: {publish_fingerprint: false}
cache: {ttl_ms: 0}
"""
BAD_LINES = [
    "seamless.backfill.retry_max: unknown key; did you mean 'max_attempts'? (renamed)",
    "seamless.backfill.window_bars: expected integer, got string 'abc'",
    "cache.ttl_ms: must be >= 1, got 0",
]


def run_check(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qmtl-seamless")
    config_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "QMTL_SEAMLESS_COORDINATOR_URL",
        "QMTL_CCXT_RATE_LIMITER_REDIS",
        "QMTL_SEAMLESS_PUBLISH_FP",
        "QMTL_SEAMLESS_EARLY_FP",
        "QMTL_SEAMLESS_ARTIFACTS",
        "QMTL_SEAMLESS_ARTIFACT_DIR",
        "QMTL_LOG_FORMAT",
        "QMTL_SEAMLESS_WORKER",
    ):
        monkeypatch.delenv(name, raising=False)


def test_example_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_check(["config", "check", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "ok: 1 exchange(s), 2 node id(s), domains: backtest, dryrun, live, storage: duckdb, "
        "artifacts: file",
        f"store: {tmp_path / '.qmtl' / 'seamless.duckdb'}",
        "exchange binance: BTC/USDT, ETH/USDT × 1m",
        "rate limiter: local",
        f"artifacts: {tmp_path / '.qmtl' / 'artifacts'}",
    ]
    assert err == ""


def test_errors_one_per_line_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert run_check(["config", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == BAD_LINES


def test_environment_is_used_unless_no_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QMTL_SEAMLESS_PUBLISH_FP", "perhaps")
    assert run_check(["config", "check", str(EXAMPLE)]) == 2
    assert "(from QMTL_SEAMLESS_PUBLISH_FP)" in capsys.readouterr().err
    assert run_check(["config", "check", "--no-env", str(EXAMPLE)]) == 0


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert run_check(["config", "check", str(missing)]) == 2
    assert (
        capsys.readouterr().err == f"{missing}: cannot read the file: No such file or directory\n"
    )


def test_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qmtl.cli.main import main

    assert main(["config", "check", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert main(["config", "check", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == BAD_LINES


def test_as_a_process(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "qmtl.cli.main", "config", "check"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    ok = subprocess.run(
        [*command, str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith("ok: 1 exchange(s), 2 node id(s)")
    path = tmp_path / "hostile.yaml"
    path.write_text("cache:\n\tttl_ms: 5\n")
    bad = subprocess.run(
        [*command, str(path)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr.splitlines() == [
        f"{path}: invalid YAML at line 2, column 1: while scanning for the next token, found "
        "character '\\t' that cannot start any token (YAML indentation must use spaces, not tabs)"
    ]


def test_config_without_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(["config"]) == 2
    assert "check" in capsys.readouterr().err


def test_pending_settings_a_file_sets_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setting no component reads yet (none today: the mechanism is shown with a patched
    list) is accepted, and config check says it has no effect yet (never silently ignored);
    one that has a reader is not named."""
    monkeypatch.setattr(
        pending_settings, "PENDING_SETTINGS", {"cache.ttl_ms": "a future capability"}
    )
    path = tmp_path / "c.yaml"
    path.write_text(
        "cache: {ttl_ms: 5}\nseamless: {observability: {storage_wait_warn_ms: 200}, "
        "live: {ws: {enabled: true}}}\n"
    )
    assert run_check(["config", "check", str(path), "--no-env"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok: ")
    assert [line for line in out if line.startswith("note: ")] == [
        "note: cache.ttl_ms: has no effect yet (a future capability)",
    ]


# -- what config check resolved --------------------------------------------------------------


def check_lines(
    path: Path, text: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> dict[str, str]:
    """``config check`` of ``text``: its ``key: value`` lines after ``ok:`` (exit 0)."""
    path.write_text(text)
    assert run_check(["config", "check", str(path), *extra]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("ok: ")
    return dict(line.split(": ", 1) for line in lines[1:])


def check_json(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert run_check(["config", "check", "--json", str(path), *extra]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    result: dict[str, Any] = json.loads(out)
    return result


def test_check_resolves_a_relative_duckdb_path_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    lines = check_lines(path, 'seamless: {storage: {dsn: "duckdb:///data/bars.duckdb"}}\n', capsys)
    assert lines["store"] == str(tmp_path / "data" / "bars.duckdb")
    assert check_json(path, capsys)["store"] == str(tmp_path / "data" / "bars.duckdb")


def test_check_keeps_a_four_slash_duckdb_path_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    target = tmp_path / "abs" / "bars.duckdb"
    path = tmp_path / "c.yaml"
    lines = check_lines(path, f'seamless: {{storage: {{dsn: "duckdb:///{target}"}}}}\n', capsys)
    assert lines["store"] == str(target)
    assert not (tmp_path / "abs").exists()  # resolved, not created


def test_check_masks_the_postgresql_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    dsn = "postgresql://bars:s3cret@db.example:5432/history"
    lines = check_lines(path, f'seamless: {{storage: {{dsn: "{dsn}"}}}}\n', capsys)
    assert lines["store"] == "postgresql://bars:***@db.example:5432/history"
    result = check_json(path, capsys)
    assert result["store"] == "postgresql://bars:***@db.example:5432/history"
    assert "s3cret" not in json.dumps(result)


def test_check_says_the_rate_limiter_is_local_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    assert check_lines(path, "{}\n", capsys)["rate limiter"] == "local"
    lines = check_lines(path, "exchanges: {binance: {symbols: [BTC/USDT]}}\n", capsys)
    assert lines["rate limiter"] == "local"


def test_check_masks_the_redis_password_wherever_it_comes_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    masked = "redis://:***@cache.example:6379/2"
    secret = "redis://:hunter2@cache.example:6379/2"
    text = f'seamless: {{rate_limit: {{redis_dsn: "{secret}"}}}}\n'
    assert check_lines(path, text, capsys)["rate limiter"] == masked
    # An exchange's own block: that exchange uses Redis, the other one stays local.
    text = (
        "exchanges:\n"
        f'  binance: {{symbols: [BTC/USDT], rate_limit: {{redis_dsn: "{secret}"}}}}\n'
        "  okx: {symbols: [BTC/USDT]}\n"
    )
    lines = check_lines(path, text, capsys)
    assert lines["rate limiter"] == f"binance: {masked}, okx: local"
    result = check_json(path, capsys)
    assert result["exchanges"]["binance"]["rate_limiter"] == masked
    assert result["exchanges"]["okx"]["rate_limiter"] == "local"
    assert "hunter2" not in json.dumps(result)
    # The environment, unless --no-env.
    monkeypatch.setenv("QMTL_CCXT_RATE_LIMITER_REDIS", secret)
    assert check_lines(path, "{}\n", capsys)["rate limiter"] == masked
    assert check_lines(path, "{}\n", capsys, "--no-env")["rate limiter"] == "local"


def test_check_prints_each_exchange_with_its_rest_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    text = (
        "exchanges:\n"
        "  binance: {symbols: [BTC/USDT, ETH/USDT], timeframes: [1m, 1h],\n"
        '            urls: {rest: "http://127.0.0.1:8080"}}\n'
    )
    lines = check_lines(path, text, capsys)
    assert lines["exchange binance"] == "BTC/USDT, ETH/USDT × 1m, 1h (rest: http://127.0.0.1:8080)"
    assert check_json(path, capsys)["exchanges"] == {
        "binance": {
            "symbols": ["BTC/USDT", "ETH/USDT"],
            "timeframes": ["1m", "1h"],
            "rest": "http://127.0.0.1:8080",
            "ws": None,
            "rate_limiter": "local",
        }
    }


def test_check_prints_the_artifact_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    relative = 'seamless: {artifact: {object_store_uri: "file://out/art"}}\n'
    assert check_lines(path, relative, capsys)["artifacts"] == str(tmp_path / "out" / "art")
    absolute = f'seamless: {{artifact: {{object_store_uri: "file://{tmp_path}/abs"}}}}\n'
    assert check_lines(path, absolute, capsys)["artifacts"] == str(tmp_path / "abs")
    s3 = 'seamless: {artifact: {object_store_uri: "s3://bars-bucket/prefix"}}\n'
    assert check_lines(path, s3, capsys)["artifacts"] == "s3://bars-bucket/prefix"
    monkeypatch.setenv("QMTL_SEAMLESS_ARTIFACT_DIR", "from-env")
    assert check_lines(path, "{}\n", capsys)["artifacts"] == str(tmp_path / "from-env")


def test_check_json_gives_the_same_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    pending = {"seamless.observability.storage_wait_warn_ms": "a future capability"}
    monkeypatch.setattr(pending_settings, "PENDING_SETTINGS", pending)
    path = tmp_path / "c.yaml"
    text = (
        "seamless: {observability: {storage_wait_warn_ms: 200}}\n"
        "exchanges: {binance: {symbols: [BTC/USDT]}}\n"
    )
    lines = check_lines(path, text, capsys)
    result = check_json(path, capsys)
    assert set(result) == {"ok", "store", "exchanges", "rate_limiter", "artifacts", "notes"}
    assert result["ok"] is True
    assert result["store"] == lines["store"] == str(tmp_path / ".qmtl" / "seamless.duckdb")
    assert result["rate_limiter"] == lines["rate limiter"] == "local"
    assert result["artifacts"] == lines["artifacts"]
    assert list(result["exchanges"]) == ["binance"]
    assert [f"note: {note}" for note in result["notes"]] == [
        "note: seamless.observability.storage_wait_warn_ms: has no effect yet (a future capability)"
    ]


def test_check_json_of_a_bad_file_keeps_errors_on_stderr_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert run_check(["config", "check", "--json", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == BAD_LINES
    assert json.loads(out) == {"ok": False, "errors": BAD_LINES}


def test_check_refuses_a_duckdb_dsn_the_store_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store's own reading of the DSN is part of the check: a file check accepts is a
    file backfill accepts."""
    path = tmp_path / "c.yaml"
    path.write_text('seamless: {storage: {dsn: "duckdb:///bars.duckdb?mode=ro"}}\n')
    assert run_check(["config", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("seamless.storage.dsn: a DuckDB DSN is duckdb:///relative/path")


def test_check_names_an_exchanges_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    text = "exchanges:\n  binance: {symbols: [BTC/USDT], archive: {enabled: true}}\n"
    lines = check_lines(path, text, capsys)
    assert lines["exchange binance"] == "BTC/USDT × 1m; archive: https://data.binance.vision"
    path.write_text("exchanges:\n  okx: {symbols: [BTC/USDT], archive: {enabled: true}}\n")
    assert run_check(["config", "check", str(path)]) == 2
    assert "okx (spot) publishes no bulk archives" in capsys.readouterr().err
