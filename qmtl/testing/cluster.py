"""The pieces of a local cluster as subprocesses, as a user runs them: the coordinator
(``qmtl-seamless coordinator serve``) and workers (``qmtl-seamless worker``). Used by
``demo --cluster``, the cluster tests and ``bench/workers.py``, so all three start them one
way."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["CLI", "coordinator_process", "start_worker", "worker_config"]

#: The CLI of the running interpreter (the installed console script's equivalent).
CLI: Final = (sys.executable, "-m", "qmtl.cli.main")
_BANNER: Final = "coordinator: "


@asynccontextmanager
async def coordinator_process(
    dsn: str,
    *,
    timeout_s: float = 30.0,
    port: int = 0,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[str]:
    """``coordinator serve --dsn DSN --port PORT`` in a subprocess; yields its URL once it
    listens (``ConnectionError`` if it does not say so within ``timeout_s``), and stops it
    with SIGTERM (a graceful stop) on exit. ``port=0`` picks a free port; a fixed one
    (:func:`qmtl.testing.servers.free_port`) lets a restarted coordinator keep its URL.
    ``env`` is added to this process's environment."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "coordinator", "serve", "--dsn", dsn, "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
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
    config: Path,
    *,
    dsn: str,
    start: int,
    end: int,
    name: str,
    poll_s: float,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """``worker --config CONFIG --dsn DSN --start --end --json [EXTRA_ARGS]`` as worker
    ``name`` (``QMTL_SEAMLESS_WORKER``), stdout and stderr piped; ``env`` is added to this
    process's environment (e.g. the S3 credentials of an artifact store)."""
    return await asyncio.create_subprocess_exec(
        *CLI, "worker", "--config", str(config), "--dsn", dsn, "--start", str(start),
        "--end", str(end), "--poll-s", str(poll_s), "--json", *extra_args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {}), "QMTL_SEAMLESS_WORKER": name},
    )  # fmt: skip


def worker_config(
    path: Path,
    *,
    symbols: Sequence[str],
    timeframes: Sequence[str],
    rest: str,
    coordinator: str,
    redis: str,
    seamless: Mapping[str, Any] | None = None,
) -> Path:
    """Write the configuration a cluster's workers share to ``path``: Binance (``symbols`` ×
    ``timeframes``) at ``rest``, the shared Redis budget, the coordinator, and any other
    ``seamless`` settings (``rate_limit`` entries are merged over the Redis DSN)."""
    import yaml

    extra = dict(seamless or {})
    rate_limit = {"redis_dsn": redis, **extra.pop("rate_limit", {})}
    document = {
        "exchanges": {
            "binance": {
                "symbols": list(symbols), "timeframes": list(timeframes), "urls": {"rest": rest},
            },
        },
        "seamless": {"rate_limit": rate_limit, **extra},
        "environment": {"coordinator_url": coordinator},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
