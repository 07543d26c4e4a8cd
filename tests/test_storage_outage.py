"""Store outages surface fast as :class:`StorageError`, and the same store instance works again
once the store is back — PostgreSQL stopped (politely or as a crash) under an open pool, a
DuckDB file held by another process.

These tests stop servers: they use a PostgreSQL of their own, never the shared session one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from qmtl.runtime.io.storage import HistoryStorage, LedgerUpdate, StorageError, open_storage
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.testing.servers import PostgresServer
from tests.test_storage import NODE, I, bars

FAST_S = 5.0  # "fast": well under any command timeout, far from a hang


@pytest.fixture
def own_postgres_dsn(own_postgres: PostgresServer) -> Iterator[str]:
    own_postgres.start()  # a previous test may have left it stopped
    name = f"outage_{time.monotonic_ns()}"
    yield own_postgres.create_database(name)
    own_postgres.start()
    own_postgres.drop_database(name)


async def fails_fast(call: Callable[[], Awaitable[Any]]) -> StorageError:
    """Run ``call``: it must raise :class:`StorageError` — not a raw driver or ``OSError``,
    not a hang (the outer timeout would surface as ``TimeoutError``) — within ``FAST_S``."""
    began = time.monotonic()
    with pytest.raises(StorageError) as info:
        await asyncio.wait_for(call(), FAST_S * 4)
    elapsed = time.monotonic() - began
    assert elapsed < FAST_S, f"took {elapsed:.1f} s to fail"
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is not None  # the driver's error stays chained for debugging
    return info.value


def calls(store: HistoryStorage, version: float) -> list[Callable[[], Awaitable[Any]]]:
    update = LedgerUpdate(interval=I, data=(Range(0, 600),), source="t")
    return [
        lambda: store.write_bars(NODE, bars(range(0, 600, I), version), ledger_update=update),
        lambda: store.read_ledger(NODE, I),
        lambda: store.read_range(NODE, 0, 600),
        lambda: store.coverage_bounds(NODE, I),
    ]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_outage_is_a_fast_storage_error_and_the_store_recovers(
    own_postgres: PostgresServer,
    own_postgres_dsn: str,
    mode: Literal["fast", "immediate"],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = open_storage(own_postgres_dsn)
    async with store:
        for call in calls(store, 1):  # the pool is open and its connections used
            await call()
        await asyncio.to_thread(own_postgres.stop, mode)
        for call in calls(store, 2):
            await fails_fast(call)
        await asyncio.to_thread(own_postgres.start)
        # The same instance, no reopen: dropped connections are replaced on demand.
        for call in calls(store, 3):
            await call()
        got = await store.read_range(NODE, 0, 600)
        assert got["volume"].tolist() == [13.0] * 10
    # Nothing shouted a driver traceback meanwhile (asyncpg's background reconnects would).
    noisy = [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


async def test_postgres_down_at_first_use_then_up(
    own_postgres: PostgresServer, own_postgres_dsn: str
) -> None:
    await asyncio.to_thread(own_postgres.stop)
    store = open_storage(own_postgres_dsn)
    try:
        error = await fails_fast(lambda: store.read_range(NODE, 0, 60))
        assert "postgresql://postgres@127.0.0.1" in str(error)  # which store, for the CLI
        await asyncio.to_thread(own_postgres.start)
        assert await store.write_bars(NODE, bars([0])) == 1
    finally:
        await store.close()


async def test_postgres_close_during_an_outage_is_quick_and_quiet(
    own_postgres: PostgresServer, own_postgres_dsn: str
) -> None:
    store = open_storage(own_postgres_dsn)
    await store.write_bars(NODE, bars([0]))
    await asyncio.to_thread(own_postgres.stop, "immediate")
    began = time.monotonic()
    await store.close()  # releases what is local; no raw driver error, no hang
    assert time.monotonic() - began < FAST_S
    with pytest.raises(StorageError, match="is closed"):
        await store.read_range(NODE, 0, 60)


HOLD_FILE = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


async def test_duckdb_file_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "hot.duckdb"
    async with open_storage(f"duckdb:///{path}") as store:
        await store.write_bars(NODE, bars([0]))
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_FILE, str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        for read_only in (False, True):
            store = open_storage(f"duckdb:///{path}", read_only=read_only)
            error = await fails_fast(lambda: store.read_range(NODE, 0, 60))  # noqa: B023
            assert str(path) in str(error) and "in use by another process" in str(error)
            if not read_only:
                writer = store
            else:
                await store.close()
    finally:
        holder.stdin.close()
        await holder.wait()
    # The process let go: the same instance opens the file now.
    assert len(await writer.read_range(NODE, 0, 60)) == 1
    await writer.write_bars(NODE, bars([60]))
    await writer.close()
