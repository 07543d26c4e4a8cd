"""The throwaway servers behind every backend test really run, and state never leaks."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import obstore
import pytest
import redis.asyncio as aioredis
from obstore.exceptions import AlreadyExistsError, PreconditionError
from obstore.store import S3Store
from redis.exceptions import ConnectionError as RedisConnectionError

from qmtl.testing.servers import PostgresServer, RedisServer
from tests.conftest import S3Bucket


@pytest.mark.parametrize("round_", [1, 2])
async def test_redis_is_real_and_empty_per_test(redis_dsn: str, round_: int) -> None:
    client = aioredis.Redis.from_url(redis_dsn)
    try:
        assert await client.dbsize() == 0  # the other round's key is gone
        await client.set(f"k{round_}", "v")
        script = client.register_script("return redis.call('TIME')")
        seconds, _micros = await script()
        assert int(seconds) > 1_700_000_000
        info = await client.info("server")
        assert info["redis_version"]
    finally:
        await client.aclose()


async def test_redis_can_be_killed_and_restarted(redis_server: RedisServer, redis_dsn: str) -> None:
    client = aioredis.Redis.from_url(redis_dsn)
    try:
        assert await client.ping()
        redis_server.stop()
        with pytest.raises(RedisConnectionError):
            await client.ping()
        redis_server.start()
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.parametrize("round_", [1, 2])
async def test_postgres_database_is_fresh_per_test(postgres_dsn: str, round_: int) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE bars (ts bigint PRIMARY KEY, close double precision)")
        await conn.executemany(
            "INSERT INTO bars VALUES ($1, $2)", [(60 * i, 1.5) for i in range(3)]
        )
        assert await conn.fetchval("SELECT count(*) FROM bars") == 3
        assert str(await conn.fetchval("SHOW server_version")).startswith(("15", "16", "17", "18"))
    finally:
        await conn.close()


async def test_postgres_can_be_stopped_and_restarted_with_its_data(
    own_postgres: PostgresServer,
) -> None:
    dsn = own_postgres.create_database("kept")
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
    for mode in ("fast", "immediate"):
        await asyncio.to_thread(own_postgres.stop, mode)
        assert not await asyncio.to_thread(lambda: own_postgres.running)
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(dsn)
        await asyncio.to_thread(own_postgres.start)
        assert await asyncio.to_thread(lambda: own_postgres.running)
        conn = await asyncpg.connect(dsn)  # same port, same DSN
        assert await conn.fetchval("SELECT x FROM t") == 7
    await conn.close()


async def test_postgres_that_died_behind_our_back_starts_again(
    own_postgres: PostgresServer,
) -> None:
    pid_file = Path(own_postgres.data_dir) / "postmaster.pid"
    pid = int((await asyncio.to_thread(pid_file.read_text)).split()[0])
    os.kill(pid, signal.SIGQUIT)  # what a crash looks like from outside: no pg_ctl involved
    deadline = time.monotonic() + 30
    while await asyncio.to_thread(lambda: own_postgres.running):
        assert time.monotonic() < deadline, "postmaster did not exit"
        await asyncio.sleep(0.05)
    await asyncio.to_thread(own_postgres.start)  # notices it is down, not a no-op
    conn = await asyncpg.connect(own_postgres.dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_postgres_refuses_non_identifier_database(postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="plain identifier"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


@pytest.mark.parametrize("round_", [1, 2])
async def test_s3_bucket_is_real_and_fresh(s3_bucket: S3Bucket, round_: int) -> None:
    store = S3Store(
        s3_bucket.bucket,
        endpoint=s3_bucket.endpoint_url,
        access_key_id=s3_bucket.access_key,
        secret_access_key=s3_bucket.secret_key,
        region=s3_bucket.region,
        client_options={"allow_http": True},
    )
    listed = [item for batch in obstore.list(store) for item in batch]
    assert listed == []
    await obstore.put_async(store, "a/b.bin", b"payload")
    got = await obstore.get_async(store, "a/b.bin")
    assert bytes(await got.bytes_async()) == b"payload"
    # Create-once semantics (If-None-Match) hold on this server: immutable artifacts rely on it.
    with pytest.raises((AlreadyExistsError, PreconditionError)):
        await obstore.put_async(store, "a/b.bin", b"other", mode="create")
