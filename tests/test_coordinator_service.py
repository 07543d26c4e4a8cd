"""The coordinator's protocol end to end over real HTTP, on a real SQLite file and a real
PostgreSQL database; two replicas on one database never grant one key twice."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.sdk.events import (
    COORDINATOR_CLAIMED,
    COORDINATOR_COMPLETED,
    COORDINATOR_EXPIRED,
    COORDINATOR_FAILED,
    EVENT_FIELDS,
)
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.services.coordinator import (
    CoordinatorServer,
    LeaseStore,
    PostgresLeaseStore,
    SQLiteLeaseStore,
    run_coordinator,
)

NODE = "ohlcv:binance:BTC/USDT:1m"
OTHER = "ohlcv:binance:ETH/USDT:1m"


def key(i: int, node: str = NODE) -> str:
    return f"{node}:60:{i * 3600}:{(i + 1) * 3600}::"


@pytest.fixture(params=["sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], LeaseStore]:
    """A factory of stores on one location (a second call: a restarted coordinator)."""
    if request.param == "sqlite":
        path = tmp_path / "leases" / "leases.db"
        return lambda: SQLiteLeaseStore(path)
    dsn: str = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresLeaseStore(dsn)


Start = Callable[..., Awaitable[tuple[CoordinatorServer, SeamlessMetrics]]]


@pytest.fixture
async def start(new_store: Callable[[], LeaseStore]) -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:

        async def _start(token: str | None = None) -> tuple[CoordinatorServer, SeamlessMetrics]:
            metrics = SeamlessMetrics(CollectorRegistry())
            server = await stack.enter_async_context(
                run_coordinator(new_store(), metrics=metrics, token=token, coordinator_id="c1")
            )
            return server, metrics

        yield _start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    server: CoordinatorServer,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{server.base_url}{path}"
    if body is None and raw is None:
        request = http.get(url, headers=headers)
    else:
        data = raw if raw is not None else json.dumps(body).encode()
        request = http.post(url, data=data, headers=headers)
    async with request as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


def count(metrics: SeamlessMetrics, event: str) -> float:
    value = metrics.registry.get_sample_value("seamless_coordinator_leases_total", {"event": event})
    return value or 0.0


async def test_the_protocol(start: Start, http: aiohttp.ClientSession) -> None:
    server, metrics = await start()
    assert await call(http, server, "/healthz") == (200, {"status": "ok"})
    # Every transition's series is there at 0 before the first one (alerts take increase()).
    for event in ("claim", "complete", "fail", "expire"):
        sample = metrics.registry.get_sample_value(
            "seamless_coordinator_leases_total", {"event": event}
        )
        assert sample == 0.0, event

    status, body = await call(http, server, "/v1/leases/claim", {"key": key(0), "lease_ms": 60_000})
    assert status == 200 and set(body) == {"lease", "completion_ratio"}
    lease = body["lease"]
    assert set(lease) == {"key", "token", "lease_until_ms"} and lease["key"] == key(0)
    assert body["completion_ratio"] == 0.0

    status, body = await call(http, server, "/v1/leases/claim", {"key": key(0), "lease_ms": 10})
    assert status == 409 and set(body) == {"held_by", "lease_until_ms"}
    assert body["lease_until_ms"] == lease["lease_until_ms"] and lease["token"] not in body.values()

    wrong = {"key": key(0), "token": "not-the-token"}
    assert (await call(http, server, "/v1/leases/complete", wrong))[0] == 409
    unknown = {"key": key(9), "token": lease["token"]}
    assert (await call(http, server, "/v1/leases/complete", unknown))[0] == 404

    status, body = await call(
        http, server, "/v1/leases/heartbeat", {**wrong, "token": lease["token"], "lease_ms": 90_000}
    )
    assert status == 200 and body["lease"]["lease_until_ms"] > lease["lease_until_ms"]

    done = {"key": key(0), "token": lease["token"]}
    assert await call(http, server, "/v1/leases/complete", done) == (200, {"completion_ratio": 1.0})

    _, second = await call(http, server, "/v1/leases/claim", {"key": key(1), "lease_ms": 60_000})
    assert second["completion_ratio"] == 0.5
    failed = {"key": key(1), "token": second["lease"]["token"], "reason": "exchange down"}
    assert await call(http, server, "/v1/leases/fail", failed) == (200, {"completion_ratio": 0.5})
    assert (await call(http, server, "/v1/leases/fail", failed))[0] == 409  # no longer held
    _, third = await call(http, server, "/v1/leases/claim", {"key": key(1), "lease_ms": 60_000})
    assert third["lease"]["token"] != second["lease"]["token"]  # failed: claimable at once
    _, other = await call(http, server, "/v1/leases/claim", {"key": key(0, OTHER), "lease_ms": 5})
    assert other["completion_ratio"] == 0.0  # per node

    status, body = await call(http, server, f"/v1/leases/inspect?prefix={NODE}")
    assert status == 200 and body["truncated"] is False
    assert [(x["key"], x["state"]) for x in body["leases"]] == [
        (key(0), "completed"),
        (key(1), "held"),
    ]
    _, limited = await call(http, server, "/v1/leases/inspect?prefix=ohlcv&limit=1")
    assert len(limited["leases"]) == 1 and limited["truncated"] is True

    assert [count(metrics, e) for e in ("claim", "complete", "fail", "expire")] == [4, 1, 1, 0]
    status, text = await call(http, server, "/metrics")
    assert status == 200 and 'seamless_coordinator_leases_total{event="claim"} 4.0' in text


async def test_bearer_auth(start: Start, http: aiohttp.ClientSession) -> None:
    server, _ = await start(token="s3cret")
    claim = {"key": key(0), "lease_ms": 1000}
    for token in (None, "wrong", "s3cre", "s3cretx"):
        status, body = await call(http, server, "/v1/leases/claim", claim, token=token)
        assert status == 401 and "error" in body
    assert (await call(http, server, "/metrics"))[0] == 401
    assert (await call(http, server, "/healthz"))[0] == 200  # open
    assert (await call(http, server, "/v1/leases/claim", claim, token="s3cret"))[0] == 200


BAD_BODIES: list[tuple[bytes, int]] = [
    (b"{not json", 400),
    (b"[1, 2]", 400),
    (b'"key"', 400),
    (b"\xff\xfe", 400),
    (json.dumps({"key": key(0)}).encode(), 400),  # missing lease_ms
    (json.dumps({"key": key(0), "lease_ms": "10"}).encode(), 400),
    (json.dumps({"key": key(0), "lease_ms": True}).encode(), 400),
    (json.dumps({"key": key(0), "lease_ms": 1.5}).encode(), 400),
    (json.dumps({"key": key(0), "lease_ms": 0}).encode(), 400),
    (json.dumps({"key": key(0), "lease_ms": 86_400_001}).encode(), 400),
    (b'{"key": "' + key(0).encode() + b'", "lease_ms": NaN}', 400),
    (json.dumps({"key": key(0), "lease_ms": 10, "extra": 1}).encode(), 400),
    (json.dumps({"key": 5, "lease_ms": 10}).encode(), 400),
    (json.dumps({"key": "../../etc/passwd", "lease_ms": 10}).encode(), 400),
    (json.dumps({"key": key(0) + "'; DROP TABLE x; --", "lease_ms": 10}).encode(), 400),
    (json.dumps({"key": key(0).replace("::", ':"w":'), "lease_ms": 10}).encode(), 400),
    (json.dumps({"key": key(0) + "\x00", "lease_ms": 10}).encode(), 400),
    (json.dumps({"key": NODE + ":60:0:3600:" + "w" * 10_000 + ":", "lease_ms": 10}).encode(), 400),
    (json.dumps({"key": key(0), "lease_ms": 10, "pad": "x" * 20_000}).encode(), 413),
    (b"[" * 5000 + b"]" * 5000, 400),
]


async def test_bad_requests_are_refused_and_change_nothing(
    start: Start, http: aiohttp.ClientSession
) -> None:
    server, metrics = await start()
    for raw, expected in BAD_BODIES:
        status, body = await call(http, server, "/v1/leases/claim", raw=raw)
        assert (status, "error" in body) == (expected, True), raw[:80]
    _, held = await call(http, server, "/v1/leases/claim", {"key": key(1), "lease_ms": 60_000})
    token = held["lease"]["token"]
    for path, bad in [
        ("/v1/leases/complete", {"key": key(1)}),
        ("/v1/leases/complete", {"key": key(1), "token": ""}),
        ("/v1/leases/complete", {"key": key(1), "token": "t" * 200}),
        ("/v1/leases/fail", {"key": key(1), "token": token}),
        ("/v1/leases/fail", {"key": key(1), "token": token, "reason": "r" * 1025}),
        ("/v1/leases/heartbeat", {"key": key(1), "token": token, "lease_ms": -1}),
        ("/v1/leases/heartbeat", {"key": "x:y", "token": token, "lease_ms": 10}),
    ]:
        status, body = await call(http, server, path, bad)
        assert status == 400 and "error" in body, (path, bad)
    for query in ("limit=0", "limit=x", "limit=1001", "other=1", "prefix=%00"):
        status, body = await call(http, server, f"/v1/leases/inspect?{query}")
        assert status == 400 and "error" in body, query
    status, body = await call(http, server, "/v1/leases/nope", {})
    assert status == 404 and "error" in body
    status, body = await call(http, server, "/v1/leases/claim")  # GET
    assert status == 405 and "error" in body
    _, listed = await call(http, server, "/v1/leases/inspect")
    assert [(x["key"], x["state"]) for x in listed["leases"]] == [(key(1), "held")]
    assert count(metrics, "claim") == 1


async def test_expiry_events_and_restart(
    start: Start, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qmtl.services.coordinator")
    server, metrics = await start()
    _, first = await call(http, server, "/v1/leases/claim", {"key": key(0), "lease_ms": 200})
    await asyncio.sleep(0.3)
    _, second = await call(http, server, "/v1/leases/claim", {"key": key(0), "lease_ms": 60_000})
    assert second["lease"]["token"] != first["lease"]["token"]
    stale = {"key": key(0), "token": first["lease"]["token"]}
    assert (await call(http, server, "/v1/leases/complete", stale))[0] == 409
    assert (await call(http, server, "/v1/leases/fail", {**stale, "reason": "late"}))[0] == 409
    assert (await call(http, server, "/v1/leases/heartbeat", {**stale, "lease_ms": 9}))[0] == 409
    current = {"key": key(0), "token": second["lease"]["token"]}
    assert (await call(http, server, "/v1/leases/fail", {**current, "reason": "boom"}))[0] == 200
    assert count(metrics, "expire") == 1 and count(metrics, "claim") == 2

    events = [r for r in caplog.records if getattr(r, "event", "").startswith("seamless.")]
    names = [r.event for r in events]  # type: ignore[attr-defined]
    assert names == [
        COORDINATOR_CLAIMED,
        COORDINATOR_EXPIRED,
        COORDINATOR_CLAIMED,
        COORDINATOR_FAILED,
    ]
    for record in events:
        for field in EVENT_FIELDS[record.event]:  # type: ignore[attr-defined]
            assert hasattr(record, field), (record.event, field)  # type: ignore[attr-defined]
    failed = events[-1]
    assert (failed.node_id, failed.batch_start, failed.batch_end, failed.reason) == (  # type: ignore[attr-defined]
        NODE, 0, 3600, "boom",
    )  # fmt: skip
    assert all(second["lease"]["token"] not in r.getMessage() for r in events)
    assert all(r.lease_token != second["lease"]["token"] for r in events)  # type: ignore[attr-defined]

    # A restart on the same file / database keeps the leases.
    _, third = await call(http, server, "/v1/leases/claim", {"key": key(1), "lease_ms": 60_000})
    await server.stop()
    restarted, _ = await start()
    status, _ = await call(http, restarted, "/v1/leases/claim", {"key": key(1), "lease_ms": 10})
    assert status == 409
    done = {"key": key(1), "token": third["lease"]["token"]}
    status, body = await call(http, restarted, "/v1/leases/complete", done)
    assert (status, body) == (200, {"completion_ratio": 0.5})
    assert COORDINATOR_COMPLETED in [getattr(r, "event", None) for r in caplog.records]


async def test_two_replicas_on_one_database_never_grant_a_key_twice(
    postgres_dsn: str, http: aiohttp.ClientSession
) -> None:
    metrics = [SeamlessMetrics(CollectorRegistry()) for _ in range(2)]
    async with (
        run_coordinator(PostgresLeaseStore(postgres_dsn), metrics=metrics[0]) as a,
        run_coordinator(PostgresLeaseStore(postgres_dsn), metrics=metrics[1]) as b,
    ):
        replicas = (a, b)

        async def claim(i: int) -> tuple[int, str]:
            status, _ = await call(
                http, replicas[i % 2], "/v1/leases/claim", {"key": key(i % 20), "lease_ms": 60_000}
            )
            return status, key(i % 20)

        results = await asyncio.gather(*(claim(i) for i in range(200)))
    granted = [k for status, k in results if status == 200]
    assert sorted(granted) == sorted(key(i) for i in range(20))  # each exactly once
    assert all(status in (200, 409) for status, _ in results)
    assert sum(count(m, "claim") for m in metrics) == 20


def test_cli_serves_until_interrupted(tmp_path: Path) -> None:
    env = {**os.environ, "QMTL_SEAMLESS_COORDINATOR_TOKEN": "t0ken"}
    dsn = f"sqlite:///{tmp_path}/leases.db"
    cmd = [sys.executable, "-m", "qmtl.cli.main", "coordinator", "serve", "--port", "0"]
    with subprocess.Popen(
        [*cmd, "--dsn", dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("coordinator: http://127.0.0.1:"), line
            url = line.removeprefix("coordinator: ")
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
                assert json.loads(resp.read()) == {"status": "ok"}
            request = urllib.request.Request(f"{url}/metrics")
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=5)
            assert info.value.code == 401  # the token came from the environment
            info.value.close()
            request.add_header("Authorization", "Bearer t0ken")
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert resp.status == 200
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert (tmp_path / "leases.db").exists()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


async def test_concurrent_claims_each_grant_a_key_once_on_either_store(
    start: Start, http: aiohttp.ClientSession
) -> None:
    """200 claims of 20 keys at once on one coordinator: SQLite applies them in batched
    transactions, PostgreSQL under row locks; either way one grant per key, in order."""
    server, metrics = await start()

    async def claim(i: int) -> tuple[int, str]:
        status, _ = await call(
            http, server, "/v1/leases/claim", {"key": key(i % 20), "lease_ms": 60_000}
        )
        return status, key(i % 20)

    results = await asyncio.gather(*(claim(i) for i in range(200)))
    granted = [k for status, k in results if status == 200]
    assert sorted(granted) == sorted(key(i) for i in range(20))
    assert all(status in (200, 409) for status, _ in results)
    assert count(metrics, "claim") == 20


# -- an operator's release ----------------------------------------------------------------------


async def holder(http: aiohttp.ClientSession, server: CoordinatorServer, k: str) -> dict[str, Any]:
    """The lease on ``k`` as inspect shows it."""
    _, body = await call(http, server, f"/v1/leases/inspect?prefix={k}")
    (lease,) = [x for x in body["leases"] if x["key"] == k]
    return dict(lease)


async def test_an_operator_releases_a_lease_by_its_holder(
    start: Start, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qmtl.services.coordinator")
    server, metrics = await start()
    _, claimed = await call(http, server, "/v1/leases/claim", {"key": key(0), "lease_ms": 60_000})
    token, until = claimed["lease"]["token"], claimed["lease"]["lease_until_ms"]
    shown = await holder(http, server, key(0))
    release = {"key": key(0), "held_by": shown["held_by"], "reason": "stuck"}

    wrong = {**release, "held_by": "0123456789abcdef"}
    status, body = await call(http, server, "/v1/leases/release", wrong)
    assert (status, body) == (
        409,
        {"error": "held by another holder", "held_by": shown["held_by"], "lease_until_ms": until},
    )
    status, body = await call(http, server, "/v1/leases/release", {**release, "key": key(9)})
    assert status == 404 and "error" in body
    assert count(metrics, "fail") == 0 and await holder(http, server, key(0)) == shown

    caplog.clear()
    assert await call(http, server, "/v1/leases/release", release) == (
        200,
        {"completion_ratio": 0.0},
    )
    after = await holder(http, server, key(0))
    assert (after["state"], after["reason"]) == ("failed", "released by operator: stuck")
    assert count(metrics, "fail") == 1
    (event,) = [r for r in caplog.records if getattr(r, "event", None) == COORDINATOR_FAILED]
    for field in EVENT_FIELDS[COORDINATOR_FAILED]:
        assert hasattr(event, field), field
    assert (event.lease_key, event.reason, event.released) == (  # type: ignore[attr-defined]
        key(0), "released by operator: stuck", True,
    )  # fmt: skip
    assert event.lease_token == shown["held_by"]  # type: ignore[attr-defined]
    assert all(token not in str(vars(r)) for r in caplog.records)

    # The old holder's token is stale; nothing more to release; claimable at once.
    stale = {"key": key(0), "token": token}
    assert (await call(http, server, "/v1/leases/complete", stale))[0] == 409
    assert (await call(http, server, "/v1/leases/fail", {**stale, "reason": "x"}))[0] == 409
    assert (await call(http, server, "/v1/leases/heartbeat", {**stale, "lease_ms": 9}))[0] == 409
    status, body = await call(http, server, "/v1/leases/release", release)
    assert (status, body["error"]) == (409, "not held")
    status, again = await call(http, server, "/v1/leases/claim", {"key": key(0), "lease_ms": 9000})
    assert status == 200 and again["lease"]["token"] != token

    # The operator's stale view never kills the new lease.
    status, body = await call(http, server, "/v1/leases/release", release)
    assert (status, body["error"]) == (409, "held by another holder")
    assert (await holder(http, server, key(0)))["state"] == "held"
    assert count(metrics, "fail") == 1 and count(metrics, "claim") == 2


async def test_an_expired_lease_nobody_reclaimed_may_be_released(
    start: Start, http: aiohttp.ClientSession
) -> None:
    server, _ = await start()
    _, claimed = await call(http, server, "/v1/leases/claim", {"key": key(0), "lease_ms": 100})
    await asyncio.sleep(0.2)
    shown = await holder(http, server, key(0))
    assert shown["state"] == "expired"
    release = {"key": key(0), "held_by": shown["held_by"], "reason": "worker host lost"}
    assert (await call(http, server, "/v1/leases/release", release))[0] == 200
    # Unreleased, the holder could still have completed it; now it cannot.
    late = {"key": key(0), "token": claimed["lease"]["token"]}
    assert (await call(http, server, "/v1/leases/complete", late))[0] == 409
    assert (await holder(http, server, key(0)))["state"] == "failed"


async def test_hostile_release_bodies_are_refused_and_change_nothing(
    start: Start, http: aiohttp.ClientSession
) -> None:
    server, metrics = await start(token="s3cret")
    _, claimed = await call(
        http, server, "/v1/leases/claim", {"key": key(0), "lease_ms": 60_000}, token="s3cret"
    )
    _, listed = await call(http, server, "/v1/leases/inspect", token="s3cret")
    shown = listed["leases"][0]
    good = {"key": key(0), "held_by": shown["held_by"], "reason": "stuck"}
    for bad in [
        {**good, "extra": 1},
        {"key": key(0), "held_by": shown["held_by"]},
        {**good, "held_by": 5},
        {**good, "reason": ["stuck"]},
        {**good, "key": None},
        {**good, "reason": "r" * 1025},
        {**good, "reason": ""},
        {**good, "reason": "   "},
        {**good, "reason": "stuck\nforged log line"},
        {**good, "reason": "bell\x07"},
        {**good, "key": "x:y"},
        {**good, "key": key(0) + "\x00"},
        {**good, "held_by": "A" + shown["held_by"][1:]},  # upper case (.upper() of an
        # all-digit digest, one in ~1,800, would be the digest itself)
        {**good, "held_by": shown["held_by"][:15]},
        {**good, "held_by": shown["held_by"] + "0"},
        {**good, "held_by": "g" * 16},
        {**good, "held_by": claimed["lease"]["token"]},  # the token is not the holder id
    ]:
        status, body = await call(http, server, "/v1/leases/release", bad, token="s3cret")
        assert status == 400 and "error" in body, bad
    padded = {**good, "pad": "x" * 20_000}
    assert (await call(http, server, "/v1/leases/release", padded, token="s3cret"))[0] == 413
    for raw in (b"{not json", b"[]", b'{"key": NaN}'):
        status, _ = await call(http, server, "/v1/leases/release", raw=raw, token="s3cret")
        assert status == 400, raw
    for token in (None, "wrong"):  # auth first: nothing about the lease is revealed
        status, body = await call(http, server, "/v1/leases/release", good, token=token)
        assert status == 401 and set(body) == {"error"}
    assert (await call(http, server, "/v1/leases/release", token="s3cret"))[0] == 405  # GET
    _, listed = await call(http, server, "/v1/leases/inspect", token="s3cret")
    assert listed["leases"] == [shown] and count(metrics, "fail") == 0
    assert (await call(http, server, "/v1/leases/release", good, token="s3cret"))[0] == 200
