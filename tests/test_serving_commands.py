"""The serving commands (`coordinator serve`, `simulator serve`) stop gracefully on SIGTERM
and on SIGINT, even when started with SIGINT ignored (a process inherits that: a supervisor or
a test runner may start it so, and it then never stopped)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

SERVERS = {
    "coordinator": (["coordinator", "serve", "--port", "0", "--dsn"], "coordinator: http://"),
    "simulator": (["simulator", "serve", "--port", "0"], "rest: http://"),
}


@pytest.mark.parametrize("command", sorted(SERVERS))
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT while ignored at start"])
def test_a_serving_command_stops_gracefully(command: str, how: str, tmp_path: Path) -> None:
    sig = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
    args, banner = SERVERS[command]
    if command == "coordinator":
        args = [*args, f"sqlite:///{tmp_path}/leases.db"]

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with subprocess.Popen(
        [sys.executable, "-m", "qmtl.cli.main", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ignore_sigint if sig == signal.SIGINT else None,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith(banner)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert f"{command} stopped" in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
