"""The pieces of a local cluster as subprocesses, as a user runs them: the coordinator
(``qmtl-seamless coordinator serve``) and workers (``qmtl-seamless worker``). Used by
``demo --cluster``, the cluster tests and ``bench/workers.py``, so all three start them one
way."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["CLI", "coordinator_process", "start_worker"]

#: The CLI of the running interpreter (the installed console script's equivalent).
CLI: Final = (sys.executable, "-m", "qmtl.cli.main")
_BANNER: Final = "coordinator: "


@asynccontextmanager
async def coordinator_process(dsn: str, *, timeout_s: float = 30.0) -> AsyncIterator[str]:
    """``coordinator serve --dsn DSN --port 0`` in a subprocess; yields its URL once it
    listens (``ConnectionError`` if it does not say so within ``timeout_s``), and stops it
    with SIGTERM (a graceful stop) on exit."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "coordinator", "serve", "--dsn", dsn, "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout_s)).decode().strip()
        if not line.startswith(_BANNER):
            raise ConnectionError(f"the coordinator did not start: {line!r}")
        yield line.removeprefix(_BANNER)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def start_worker(
    config: Path, *, dsn: str, start: int, end: int, name: str, poll_s: float
) -> asyncio.subprocess.Process:
    """``worker --config CONFIG --dsn DSN --start --end --json`` as worker ``name``
    (``QMTL_SEAMLESS_WORKER``), stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        *CLI, "worker", "--config", str(config), "--dsn", dsn, "--start", str(start),
        "--end", str(end), "--poll-s", str(poll_s), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "QMTL_SEAMLESS_WORKER": name},
    )  # fmt: skip
