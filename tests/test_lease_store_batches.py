"""Lease stores apply concurrent decisions in batches (one transaction each): whatever the
mix of claims, completes, fails and decisions that raise, on shared keys, every outcome and
completion ratio equals applying the same decisions one at a time, in arrival order, to a
dict — on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.sdk import lease_rules as rules
from qmtl.runtime.sdk.lease_rules import LeaseKey, LeaseRecord
from qmtl.services.coordinator import LeaseStore, PostgresLeaseStore, SQLiteLeaseStore

LEASE_MS = 3_600_000  # far longer than an example: nothing expires, so `now` never matters

#: (kind, node 0..1, window 0..2, token choice 0..3): complete/fail use the token of the
#: claim numbered ``token choice`` in this example (or a stale one when there is none).
op = st.tuples(
    st.sampled_from(["claim", "complete", "fail", "raise"]),
    st.integers(0, 1),
    st.integers(0, 2),
    st.integers(0, 3),
)


@pytest.fixture(params=["sqlite", "postgres"])
def runner_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[asyncio.Runner, LeaseStore]]:
    store: LeaseStore
    if request.param == "sqlite":
        store = SQLiteLeaseStore(tmp_path / "leases.db")
    else:
        store = PostgresLeaseStore(request.getfixturevalue("postgres_dsn"))
    with asyncio.Runner() as runner:
        runner.run(store.open())
        yield runner, store
        runner.run(store.close())


def _decision(kind: str, key: LeaseKey, token: str) -> Callable[[LeaseRecord | None, int], Any]:
    if kind == "claim":
        return lambda row, now: rules.claim(row, key, now_ms=now, lease_ms=LEASE_MS, token=token)
    if kind == "complete":
        return lambda row, now: rules.complete(row, token, now_ms=now)
    if kind == "fail":
        return lambda row, now: rules.fail(row, token, "boom", now_ms=now)

    def raising(row: LeaseRecord | None, now: int) -> Any:
        raise RuntimeError("a decision that fails")

    return raising


def _summary(outcome: Any) -> tuple[str, str | None, str | None]:
    record = getattr(outcome, "record", None)
    if record is None:
        return (type(outcome).__name__, None, None)
    return (type(outcome).__name__, record.token, record.state.value)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op, min_size=1, max_size=24))
def test_batched_decisions_equal_one_at_a_time_on_a_dict(
    runner_store: tuple[asyncio.Runner, LeaseStore], ops: list[tuple[str, int, int, int]]
) -> None:
    runner, store = runner_store
    tag = uuid.uuid4().hex[:8]  # fresh keys per example: the store is shared
    claim_tokens: list[str] = []
    calls = []
    for kind, node_i, window, choice in ops:
        node = f"ohlcv:model:{tag}{node_i}/USDT:1m"
        key = LeaseKey(node, 60, window * 3600, (window + 1) * 3600)
        if kind == "claim":
            token = rules.new_token()
            claim_tokens.append(token)
        else:
            token = claim_tokens[choice] if choice < len(claim_tokens) else "f" * 32
        calls.append((str(key), node, _decision(kind, key, token)))

    async def concurrently() -> list[Any]:  # submitted in order, in as few batches as may be
        return await asyncio.gather(
            *(store.apply(k, n, d) for k, n, d in calls), return_exceptions=True
        )

    got = runner.run(concurrently())
    rows: dict[str, LeaseRecord] = {}
    for (key, node, decide), result in zip(calls, got, strict=True):
        try:
            outcome = decide(rows.get(key), 0)
        except RuntimeError:
            assert isinstance(result, RuntimeError), result
            continue
        written = getattr(outcome, "record", None)
        if isinstance(outcome, rules.Granted | rules.Changed):
            rows[key] = written
        mine = [r for r in rows.values() if r.node_id == node]
        done = sum(r.state is rules.LeaseState.COMPLETED for r in mine)
        assert not isinstance(result, BaseException), result
        assert _summary(result.outcome) == _summary(outcome)
        assert result.completion_ratio == pytest.approx(done / len(mine) if mine else 0.0)
    stored = runner.run(store.inspect(f"ohlcv:model:{tag}", 100))
    assert {r.key: (r.token, r.state) for r in stored} == {
        k: (r.token, r.state) for k, r in rows.items()
    }


async def test_decision_queue_answers_every_decision_whatever_the_timing() -> None:
    """Up to two batches in flight, decisions arriving at every moment — including the step in
    which both drainers find the queue empty and end: each is answered, in one batch, in
    arrival order within its batch. (A drainer that left its slot a step after it ended once
    stranded such a decision forever.)"""
    from qmtl.services.coordinator.lease_rows import Applied, DecisionQueue, Pending

    batches: list[list[str]] = []

    async def apply_batch(batch: Any) -> list[Any]:
        batches.append([p.key for p in batch])
        for _ in range(len(batches) % 3):
            await asyncio.sleep(0)
        return [Applied(p.key, 0.0) for p in batch]

    queue = DecisionQueue(apply_batch, in_flight=2)

    async def one(i: int) -> str:
        for _ in range(i % 5):
            await asyncio.sleep(0)
        applied = await queue.submit(Pending(str(i), "n", lambda row, now: None))
        return str(applied.outcome)

    got = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(2000))), 10)
    assert got == [str(i) for i in range(2000)]
    seen = [key for batch in batches for key in batch]
    assert sorted(seen, key=int) == [str(i) for i in range(2000)]  # each decided once

    async def at_once(batch: Any) -> list[Any]:  # a store that answers without suspending
        return [Applied(p.key, 0.0) for p in batch]

    queue = DecisionQueue(at_once, in_flight=2)

    async def in_a_row(name: str) -> list[str]:  # each answer wakes it before the drainers end
        answers = []
        for i in range(3):
            applied = await queue.submit(Pending(f"{name}{i}", "n", lambda row, now: None))
            answers.append(str(applied.outcome))
        return answers

    assert await asyncio.wait_for(asyncio.gather(in_a_row("a"), in_a_row("b")), 5) == [
        ["a0", "a1", "a2"],
        ["b0", "b1", "b2"],
    ]


async def test_postgres_counts_are_seeded_from_an_older_schema(postgres_dsn: str) -> None:
    """A database whose lease rows predate the counts table: opening the store counts them,
    so completion ratios stay right across the upgrade."""
    import asyncpg

    from qmtl.services.coordinator.postgres_store import COUNTS_TABLE

    store = PostgresLeaseStore(postgres_dsn)
    await store.open()
    node = "ohlcv:binance:SEED/USDT:1m"
    keys = [LeaseKey(node, 60, i * 60, (i + 1) * 60) for i in range(3)]
    tokens = [rules.new_token() for _ in keys]
    for key, token in zip(keys, tokens, strict=True):
        await store.apply(str(key), node, _decision("claim", key, token))
    await store.apply(str(keys[0]), node, _decision("complete", keys[0], tokens[0]))
    await store.close()
    conn = await asyncpg.connect(postgres_dsn)
    await conn.execute(f"DROP TABLE {COUNTS_TABLE}")
    await conn.close()
    store = PostgresLeaseStore(postgres_dsn)
    await store.open()
    applied = await store.apply(str(keys[1]), node, _decision("complete", keys[1], tokens[1]))
    await store.close()
    assert applied.completion_ratio == pytest.approx(2 / 3)


async def test_postgres_vacuums_its_counts_table_as_count_rows_churn(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every node's count row changes with each batch; the store vacuums the counts table
    every ``VACUUM_EVERY`` count updates (autovacuum alone let dead versions pile up and
    latency grow), beside the decisions, and answers correctly throughout."""
    import asyncpg

    from qmtl.services.coordinator import postgres_store

    monkeypatch.setattr(postgres_store, "VACUUM_EVERY", 20)
    store = PostgresLeaseStore(postgres_dsn)
    await store.open()
    node = "ohlcv:binance:VAC/USDT:1m"
    for i in range(60):
        key = LeaseKey(node, 60, i * 60, (i + 1) * 60)
        token = rules.new_token()
        await store.apply(str(key), node, _decision("claim", key, token))
        done = await store.apply(str(key), node, _decision("complete", key, token))
        assert done.completion_ratio == 1.0
    await store.close()  # waits for a vacuum in flight
    conn = await asyncpg.connect(postgres_dsn)
    try:
        vacuums = await conn.fetchval(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = $1",
            postgres_store.COUNTS_TABLE,
        )
    finally:
        await conn.close()
    assert vacuums >= 3, vacuums  # 120 count updates, one vacuum per 20
