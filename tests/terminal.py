"""Progress lines are drawn only on a terminal: a fixture that makes the CLI's stderr console
one, and a reader of what it drew (ANSI control sequences removed, redraws split)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from qmtl.cli._common import err_console

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(err_console, "_force_terminal", True)
    yield


def progress_lines(err: str, label: str) -> list[str]:
    """Every drawn state of the ``label`` progress line, oldest first."""
    text = _ANSI.sub("", err)
    return [part.strip() for part in re.split(r"[\r\n]", text) if part.startswith(f"{label} ")]
