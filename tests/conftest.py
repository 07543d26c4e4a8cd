"""Shared fixtures: real throwaway servers (one per xdist worker), isolated per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from qmtl.testing.servers import MotoS3Server, PostgresServer, RedisServer, ServerUnavailable


def _start(factory: type[RedisServer] | type[PostgresServer] | type[MotoS3Server]):  # type: ignore[no-untyped-def]
    try:
        return factory().start()
    except ServerUnavailable as exc:
        pytest.fail(f"{factory.__name__}: {exc}", pytrace=False)


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which qmtl code makes a blocking call on the event loop thread
    (file or socket I/O, sleeps, DuckDB through those): such work belongs in a thread."""
    # qmtl.testing starts and stops the throwaway servers; blocking there is by design.
    with blockbuster_ctx("qmtl", excluded_modules=["qmtl.testing"]) as bb:
        for func in bb.functions.values():
            # asyncpg stats ~/.pgpass and ~/.postgresql/*.crt while parsing the DSN of each new
            # pool connection: its business, once per connection, not a hot path of ours.
            func.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")
        yield bb


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _start(RedisServer)
    yield server
    server.close()


@pytest.fixture
def redis_dsn(redis_server: RedisServer) -> str:
    """A running Redis with an empty keyspace (flushed before each test)."""
    import redis

    redis_server.start()  # a previous test may have stopped it
    client = redis.Redis.from_url(redis_server.dsn)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.dsn


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _start(PostgresServer)
    yield server
    server.close()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test module's own, for tests that stop it (stopping the shared
    session server would break every other test). Tests start it again if they need it."""
    server = _start(PostgresServer)
    yield server
    server.close()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database of its own for each test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = postgres_server.create_database(name)
    yield dsn
    postgres_server.drop_database(name)


@dataclass(frozen=True)
class S3Bucket:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3Server]:
    server = _start(MotoS3Server)
    yield server
    server.close()


@pytest.fixture
def s3_bucket(s3_server: MotoS3Server) -> S3Bucket:
    """A fresh, empty bucket on the S3-compatible server."""
    import boto3

    bucket = f"qmtl-{uuid.uuid4().hex[:20]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    )
    client.create_bucket(Bucket=bucket)
    client.close()
    return S3Bucket(
        s3_server.endpoint_url, bucket, s3_server.access_key, s3_server.secret_key, s3_server.region
    )


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's stderr console behaves as a terminal (progress lines are drawn only there)."""
    from qmtl.cli._common import err_console

    monkeypatch.setattr(err_console, "_force_terminal", True)
