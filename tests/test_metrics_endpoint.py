"""``--metrics-port``: :func:`serve_metrics` over real HTTP (a fresh registry, the exposition,
404/405, no port, bad and busy ports), then the serving commands as a user runs them: the
``metrics: URL`` line on stderr, a lease claimed through the coordinator counted on the
metrics port, the simulator's exposition, and a bad port as one error line with exit 2."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from qmtl.cli.main import EXIT_USAGE, build_parser, exit_code
from qmtl.runtime.io.metrics_endpoint import serve_metrics
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from tests.cli_rig import one_error_line

CLI = [sys.executable, "-m", "qmtl.cli.main"]
CLAIMED = 'seamless_coordinator_leases_total{event="claim"} 1.0'
KEY = "ohlcv:binance:BTC/USDT:1m:60:1704067200:1704070800::"


# -- the context manager ----------------------------------------------------------------------


async def test_serves_the_registry_text_at_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    registry = CollectorRegistry()
    SeamlessMetrics(registry).coordinator_leases.labels(event="claim").inc()
    async with serve_metrics(0, registry) as url, aiohttp.ClientSession() as http:
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            assert CLAIMED in await resp.text()
        root = url.removesuffix("/metrics")
        async with http.get(f"{root}/other") as resp:
            assert resp.status == 404
        async with http.post(url) as resp:
            assert resp.status == 405
    assert capsys.readouterr().err == f"metrics: {url}\n"


async def test_no_port_serves_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    async with serve_metrics(None, CollectorRegistry()) as url:
        assert url is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("port", [-1, 65536, 70000])
async def test_a_port_out_of_range_is_a_value_error(port: int) -> None:
    with pytest.raises(ValueError, match=rf"0\.\.65535.*got {port}$"):
        async with serve_metrics(port, CollectorRegistry()):
            pass


async def test_a_busy_port_is_one_line_and_the_users_mistake() -> None:
    registry = CollectorRegistry()
    async with serve_metrics(0, registry) as url:
        assert url is not None
        port = int(url.rsplit(":", 1)[1].removesuffix("/metrics"))
        with pytest.raises(OSError, match=f"metrics port {port}: cannot listen") as caught:
            async with serve_metrics(port, registry):
                pass
    assert caught.value.errno == errno.EADDRINUSE
    assert "\n" not in str(caught.value)
    assert exit_code(caught.value) == EXIT_USAGE


@pytest.mark.parametrize(
    "argv",
    [
        ["coordinator", "serve"],
        ["simulator", "serve"],
        ["worker", "--config", "c.yaml"],
        ["backfill", "--config", "c.yaml"],
        ["live", "ohlcv:binance:BTC/USDT:1m"],
        ["demo"],
        ["demo", "--cluster"],
    ],
)
def test_every_long_running_command_takes_the_option(argv: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(argv).metrics_port is None
    assert parser.parse_args([*argv, "--metrics-port", "9464"]).metrics_port == 9464


# -- the commands -----------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("QMTL_")}


def _line_starting(stream: IO[str] | None, prefix: str) -> str:
    assert stream is not None
    for line in stream:  # the pipe stays open while the command runs: stop at the line
        if line.startswith(prefix):
            return line.strip().removeprefix(prefix)
    raise AssertionError(f"no {prefix!r} line")


@contextmanager
def _serving(args: list[str], banner: str) -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    """The command in a subprocess: its service URL (stdout ``banner``), its metrics URL
    (stderr ``metrics:``), and the process (stopped with SIGTERM by the caller, killed here
    if still running)."""
    with subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_environment(),
    ) as proc:  # fmt: skip
        try:
            service = _line_starting(proc.stdout, banner)
            metrics = _line_starting(proc.stderr, "metrics: ")
            yield service, metrics, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_coordinator_serve_counts_a_claim_on_the_metrics_port(tmp_path: Path) -> None:
    args = ["coordinator", "serve", "--dsn", f"sqlite:///{tmp_path}/leases.db", "--port", "0"]
    with _serving([*args, "--metrics-port", "0"], "coordinator: ") as (url, metrics, proc):
        assert metrics.startswith("http://127.0.0.1:") and metrics.endswith("/metrics")
        assert metrics.removesuffix("/metrics") != url  # a port of its own
        claim = urllib.request.Request(
            f"{url}/v1/leases/claim",
            data=json.dumps({"key": KEY, "lease_ms": 60000}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(claim, timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(metrics, timeout=10) as resp:
            assert CLAIMED in resp.read().decode()
        _stop(proc)


def test_simulator_serve_answers_metrics() -> None:
    args = ["simulator", "serve", "--port", "0", "--metrics-port", "0"]
    with _serving(args, "rest: ") as (_, metrics, proc):
        with urllib.request.urlopen(metrics, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
        _stop(proc)


def test_a_bad_metrics_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "coordinator", "serve", "--dsn", f"sqlite:///{tmp_path}/leases.db",
         "--port", "0", "--metrics-port", "70000"],
        capture_output=True, text=True, timeout=60, env=_environment(),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "70000" in one_error_line(done.stderr, "coordinator")
    assert "coordinator:" not in done.stdout  # never announced


def test_demo_serves_its_metrics_while_it_runs(tmp_path: Path) -> None:
    """``demo --metrics-port``: scraped while the demo backfills, the backfill's own counters
    show up (the demo's components record into the registry it serves)."""
    with subprocess.Popen(
        [*CLI, "demo", "--days", "1", "--dir", str(tmp_path), "--json", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(),
    ) as proc:  # fmt: skip
        try:
            url = _line_starting(proc.stderr, "metrics: ")
            seen = ""
            while proc.poll() is None and "seamless_backfill_rows_total{" not in seen:
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        seen = response.read().decode()
                except OSError:
                    break  # the demo finished between the poll and the scrape
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "seamless_backfill_rows_total{" in seen, seen[-2000:]
