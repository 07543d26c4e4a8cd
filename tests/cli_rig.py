"""What the CLI tests share: the simulator as a user starts it (a subprocess), the one-error-
line contract, a dead URL, and :func:`progress_lines`, which reads what a progress line drew
on a terminal (the ``terminal`` fixture of conftest), ANSI control sequences removed and
redraws split."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qmtl.testing.servers import free_port


@contextmanager
def simulator(tmp: Path, scenario: str | None = None) -> Iterator[str]:
    """``qmtl-seamless simulator serve`` in a subprocess; yields its REST root."""
    command = [sys.executable, "-m", "qmtl.cli.main", "simulator", "serve", "--port", "0"]
    if scenario is not None:
        path = tmp / "scenario.yaml"
        path.write_text(scenario)
        command += ["--scenario", str(path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("rest: http://127.0.0.1:"), line
        yield line.removeprefix("rest: ")
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def dead_url() -> str:
    """A local port nobody listens on: connection refused."""
    return f"http://127.0.0.1:{free_port()}"


def one_error_line(err: str, command: str) -> str:
    """The command's one error line; besides it, stderr may only say which store it used."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("store: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"qmtl-seamless {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def progress_lines(err: str, label: str) -> list[str]:
    """Every drawn state of the ``label`` progress line, oldest first."""
    text = _ANSI.sub("", err)
    return [part.strip() for part in re.split(r"[\r\n]", text) if part.startswith(f"{label} ")]
