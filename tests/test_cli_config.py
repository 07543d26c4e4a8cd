"""``qmtl-seamless config check FILE``: ``ok`` + summary and exit 0, or one error per line."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from qmtl.cli import config_cmd

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


def test_example_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(["config", "check", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == (
        "ok: 1 exchange(s), 2 node id(s), domains: backtest, dryrun, live, storage: duckdb, "
        "artifacts: file\n"
    )
    assert err == ""


def test_errors_one_per_line_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert run_check(["config", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == BAD_LINES


def test_environment_is_used_unless_no_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QMTL_SEAMLESS_PUBLISH_FP", "perhaps")
    assert run_check(["config", "check", str(EXAMPLE)]) == 1
    assert "(from QMTL_SEAMLESS_PUBLISH_FP)" in capsys.readouterr().err
    assert run_check(["config", "check", "--no-env", str(EXAMPLE)]) == 0


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert run_check(["config", "check", str(missing)]) == 1
    assert (
        capsys.readouterr().err == f"{missing}: cannot read the file: No such file or directory\n"
    )


def test_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qmtl.cli.main import main

    assert main(["config", "check", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert main(["config", "check", str(path)]) == 1
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
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert bad.stderr.splitlines() == [
        f"{path}: invalid YAML at line 2, column 1: while scanning for the next token, found "
        "character '\\t' that cannot start any token (YAML indentation must use spaces, not tabs)"
    ]


def test_config_without_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(["config"]) == 2
    assert "check" in capsys.readouterr().err


def test_pending_settings_a_file_sets_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A setting the SPEC names but no component reads yet is accepted, and config check
    says it has no effect yet (never silently ignored)."""
    path = tmp_path / "c.yaml"
    path.write_text("cache: {ttl_ms: 5}\nseamless: {artifact: {compression: snappy}}\n")
    assert run_check(["config", "check", str(path), "--no-env"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok: ")
    assert out[1:] == [
        "note: seamless.artifact.compression: has no effect yet "
        "(artifacts (immutable fingerprinted Parquet, as_of))",
        "note: cache.ttl_ms: has no effect yet (the world-keyed result cache)",
    ]
