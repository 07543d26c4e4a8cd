"""The coordinator clients against the real service over real HTTP (SQLite store), the
in-memory one against the same sequences, and providers that backfill under leases (real
ccxt against the in-process exchange simulator, real DuckDB files)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.io import (
    CoordinatorUnavailable,
    DistributedBackfillCoordinator,
    EnhancedQuestDBProvider,
    ExchangeRouter,
    InMemoryBackfillCoordinator,
)
from qmtl.runtime.io.composition import build_fetchers
from qmtl.runtime.sdk.backfill_coordinator import BackfillCoordinator, Lease
from qmtl.runtime.sdk.backfill_types import FetchWindowResult
from qmtl.runtime.sdk.clock import FakeClock, SystemClock
from qmtl.runtime.sdk.config import QMTLConfig, load_config
from qmtl.runtime.sdk.events import (
    COORDINATOR_CLAIM_FAILED,
    COORDINATOR_CLAIMED,
    COORDINATOR_COMPLETED,
    COORDINATOR_EXPIRED,
    COORDINATOR_FAILED,
    EVENT_FIELDS,
)
from qmtl.runtime.sdk.history_coverage import Range, compute_missing_ranges
from qmtl.runtime.sdk.lease_rules import holder_id
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.services.coordinator import CoordinatorServer, SQLiteLeaseStore, run_coordinator
from qmtl.services.exchange_sim import Scenario, run_simulator

NODE = "ohlcv:binance:BTC/USDT:1m"
JAN1 = 1_704_067_200
TRANSITIONS = (COORDINATOR_CLAIMED, COORDINATOR_COMPLETED, COORDINATOR_FAILED)


def key(i: int) -> str:
    return f"{NODE}:60:{JAN1 + i * 3600}:{JAN1 + (i + 1) * 3600}::"


def dead_url() -> str:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async with AsyncExitStack() as stack:
        count = iter(range(100))

        async def _serve(token: str | None = None) -> CoordinatorServer:
            store = SQLiteLeaseStore(tmp_path / f"leases-{next(count)}.db")
            metrics = SeamlessMetrics(CollectorRegistry())
            return await stack.enter_async_context(
                run_coordinator(store, metrics=metrics, token=token, coordinator_id="c1")
            )

        yield _serve


def coordinator_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "qmtl.runtime.io.coordinator_client"
        and getattr(r, "event", None) in EVENT_FIELDS
    ]


def assert_no_token(records: list[logging.LogRecord], leases: list[Lease]) -> None:
    for record in records:
        text = repr(vars(record))
        for lease in leases:
            assert lease.token not in text, f"{record.getMessage()} leaks a token"


async def script(coordinator: Any, clock: FakeClock | None = None) -> list[Any]:
    """One sequence of operations; returns what each call answered (normalised) and the
    leases granted."""
    answers: list[Any] = []
    first = await coordinator.claim(key(0), 60_000)
    answers.append(("claim", first is not None))
    answers.append(("claim again", await coordinator.claim(key(0), 60_000)))
    renewed = await coordinator.heartbeat(first, 120_000)
    answers.append(("heartbeat", renewed is not None and renewed.token == first.token))
    answers.append(("extended", renewed.lease_until_ms >= first.lease_until_ms + 50_000))
    answers.append(("complete", await coordinator.complete(first)))
    answers.append(("complete twice", await coordinator.complete(first)))
    second = await coordinator.claim(key(0), 60_000)  # a completed window may be claimed
    answers.append(("reclaim", second is not None and second.token != first.token))
    answers.append(("stale complete", await coordinator.complete(first)))  # logged, no raise
    answers.append(("stale fail", await coordinator.fail(first, "old")))
    answers.append(("stale heartbeat", await coordinator.heartbeat(first, 1000)))
    answers.append(("fail", await coordinator.fail(second, "exchange down")))
    third = await coordinator.claim(key(0), 60_000)  # a failed window is claimable at once
    answers.append(("after fail", third is not None))
    unknown = Lease(key(5), "f" * 32, 0)
    answers.append(("unknown complete", await coordinator.complete(unknown)))
    with pytest.raises(ValueError, match="lease"):
        await coordinator.claim("not-a-key", 60_000)
    with pytest.raises(ValueError, match="lease_ms"):
        await coordinator.claim(key(1), 0)
    return [answers, [first, second, third]]


def event_trace(records: list[logging.LogRecord]) -> list[tuple[Any, ...]]:
    return [
        (r.event, r.lease_key, r.completion_ratio, getattr(r, "reason", None))  # type: ignore[attr-defined]
        for r in records
    ]


async def test_http_client_protocol_round_trip_and_events(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve()
    async with DistributedBackfillCoordinator(server.base_url, worker_id="w1") as client:
        with caplog.at_level(logging.INFO, logger="qmtl"):
            answers, leases = await script(client)
    assert answers == [
        ("claim", True), ("claim again", None), ("heartbeat", True), ("extended", True),
        ("complete", None), ("complete twice", None), ("reclaim", True),
        ("stale complete", None), ("stale fail", None), ("stale heartbeat", None),
        ("fail", None), ("after fail", True), ("unknown complete", None),
    ]  # fmt: skip
    records = coordinator_records(caplog)
    events = [r.event for r in records]  # type: ignore[attr-defined]
    assert events == [
        COORDINATOR_CLAIMED, COORDINATOR_COMPLETED, COORDINATOR_COMPLETED, COORDINATOR_CLAIMED,
        COORDINATOR_EXPIRED, COORDINATOR_EXPIRED, COORDINATOR_EXPIRED, COORDINATOR_FAILED,
        COORDINATOR_CLAIMED, COORDINATOR_EXPIRED,
    ]  # fmt: skip
    for record in records:
        for name in EVENT_FIELDS[record.event]:  # type: ignore[attr-defined]
            assert hasattr(record, name), f"{record.getMessage()} lacks {name}"
        assert record.coordinator_id == server.base_url  # type: ignore[attr-defined]
        assert record.worker == "w1"  # type: ignore[attr-defined]
        assert record.node_id == NODE  # type: ignore[attr-defined]
        assert (record.interval, record.world, record.requested_as_of) == (60, "", "")  # type: ignore[attr-defined]
    claimed = records[0]
    assert (claimed.batch_start, claimed.batch_end) == (JAN1, JAN1 + 3600)  # type: ignore[attr-defined]
    assert claimed.lease_token == holder_id(leases[0].token)  # type: ignore[attr-defined]
    assert records[1].completion_ratio == 1.0  # type: ignore[attr-defined]
    assert records[7].reason == "exchange down"  # type: ignore[attr-defined]
    assert {r.levelno for r in records if r.event == COORDINATOR_EXPIRED} == {logging.WARNING}  # type: ignore[attr-defined]
    assert_no_token(list(caplog.records), leases)


async def test_in_memory_coordinator_answers_and_logs_like_the_service(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve()
    async with DistributedBackfillCoordinator(server.base_url, worker_id="w") as client:
        with caplog.at_level(logging.INFO, logger="qmtl"):
            http_answers, _ = await script(client)
        http_trace = event_trace(coordinator_records(caplog))
    caplog.clear()
    memory = InMemoryBackfillCoordinator(worker_id="w")
    with caplog.at_level(logging.INFO, logger="qmtl"):
        memory_answers, leases = await script(memory)
    records = coordinator_records(caplog)
    assert memory_answers == http_answers
    assert event_trace(records) == http_trace
    assert {r.coordinator_id for r in records} == {"in-memory"}  # type: ignore[attr-defined]
    assert_no_token(list(caplog.records), leases)


async def test_in_memory_lease_expires_on_its_clock_and_the_stale_holder_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    memory = InMemoryBackfillCoordinator(clock=clock)
    first = await memory.claim(key(0), 1000)
    assert first is not None and await memory.claim(key(0), 1000) is None
    clock.advance(1.5)
    second = await memory.claim(key(0), 1000)
    assert second is not None
    with caplog.at_level(logging.INFO, logger="qmtl"):
        await memory.complete(first)  # stale: logged, not raised
        await memory.complete(second)
    assert [r.event for r in coordinator_records(caplog)] == [  # type: ignore[attr-defined]
        COORDINATOR_EXPIRED,
        COORDINATOR_COMPLETED,
    ]


async def test_bearer_token_is_sent_and_a_wrong_one_is_a_value_error(
    serve: Callable[..., Any],
) -> None:
    server = await serve(token="s3cret")
    async with DistributedBackfillCoordinator(server.base_url, token="s3cret") as client:
        lease = await client.claim(key(0), 60_000)
        assert lease is not None
        await client.complete(lease)
    async with DistributedBackfillCoordinator(server.base_url, token="wrong") as client:
        with pytest.raises(ValueError, match="bearer token"):
            await client.claim(key(1), 60_000)
    async with DistributedBackfillCoordinator(server.base_url) as client:
        with pytest.raises(ValueError, match="HTTP 401"):
            await client.claim(key(1), 60_000)


async def test_unreachable_coordinator_is_coordinator_unavailable_quickly() -> None:
    started = time.monotonic()
    async with DistributedBackfillCoordinator(dead_url(), timeout_s=2.0) as client:
        with pytest.raises(CoordinatorUnavailable, match="unreachable"):
            await client.claim(key(0), 60_000)
        with pytest.raises(CoordinatorUnavailable):
            await client.complete(Lease(key(0), "t" * 32, 0))
    assert time.monotonic() - started < 2.0


# -- providers backfilling under leases ---------------------------------------------------


class RecordingFetcher:
    """The real ccxt fetchers, with every window fetch recorded as ``(worker, start, end,
    began, ended)`` (monotonic seconds)."""

    def __init__(self, inner: ExchangeRouter, worker: str, log: list[tuple[Any, ...]]) -> None:
        self.inner = inner
        self.worker = worker
        self.log = log

    async def fetch_window(
        self, start: int, end: int, *, node_id: str, interval: int
    ) -> FetchWindowResult:
        began = time.monotonic()
        try:
            return await self.inner.fetch_window(start, end, node_id=node_id, interval=interval)
        finally:
            self.log.append((self.worker, start, end, began, time.monotonic()))

    async def aclose(self) -> None:
        await self.inner.aclose()


def provider_config(tmp_path: Path, name: str, sim_url: str, coordinator_url: str) -> QMTLConfig:
    return load_config(
        {
            "seamless": {
                "storage": {"dsn": f"duckdb:///{tmp_path / f'{name}.duckdb'}"},
                "backfill": {"window_bars": 120, "max_concurrent_requests": 4},
            },
            "exchanges": {"binance": {"symbols": ["BTC/USDT"], "urls": {"rest": sim_url}}},
            "environment": {"coordinator_url": coordinator_url, "worker_id": name},
        },
        env={},
    )


def leased_provider(
    config: QMTLConfig, coordinator: BackfillCoordinator, log: list[tuple[Any, ...]]
) -> EnhancedQuestDBProvider:
    worker = config.environment.worker_id or "?"
    router = ExchangeRouter(build_fetchers(config))
    return EnhancedQuestDBProvider(
        fetcher=RecordingFetcher(router, worker, log),
        coordinator=coordinator,
        config=config,
        strategy="AUTO_BACKFILL",
    )


async def test_two_providers_never_fetch_one_window_while_its_lease_is_live(
    serve: Callable[..., Any], tmp_path: Path
) -> None:
    """The guarantee, with two workers on two separate stores: a window is never fetched by
    both while a lease on it is live — a held batch is not fetched, stays *missing* in that
    worker's ledger and is asked for again by a later pass. Once the holder completed it, the
    other worker may claim it again and fetch it for its own store (so over the whole run a
    window may be fetched once per store, never twice at once), and both stores end
    complete."""
    server = await serve()
    window = Range(JAN1, JAN1 + 86_400)  # 12 batches of 120 one-minute bars
    log: list[tuple[Any, ...]] = []
    scenario = Scenario.from_dict({"seed": 3, "symbols": ["BTC/USDT"], "latency_ms": 100})
    async with run_simulator(scenario) as sim, AsyncExitStack() as stack:
        providers = []
        for name in ("a", "b"):
            config = provider_config(tmp_path, name, sim.base_url, server.base_url)
            assert config.seamless.backfill.distributed_lease_ttl_ms == 120_000
            client = DistributedBackfillCoordinator(server.base_url, worker_id=name)
            provider = leased_provider(config, client, log)
            stack.push_async_callback(provider.aclose)
            providers.append(provider)
        reports = await asyncio.gather(
            *(p.auto_backfiller.backfill(NODE, 60, [window]) for p in providers)
        )
        held = [
            (p, o) for p, r in zip(providers, reports, strict=True) for o in r.outcomes if o.held
        ]
        assert held, "both started at once: some batches must have been held by the other"
        for provider, outcome in held:  # not fetched, and still missing (never known-empty)
            assert outcome.attempts == 0 and outcome.error == "held by another worker"
            ledger = await provider.storage.read_ledger(NODE, 60)
            batch = outcome.batch
            assert compute_missing_ranges(ledger, batch.start, batch.end, 60) == [batch]
        for provider in providers:  # later passes fill what was held
            assert await provider.ensure_data_available(window.start, window.end, node_id=NODE)
            ledger = await provider.storage.read_ledger(NODE, 60)
            assert compute_missing_ranges(ledger, window.start, window.end, 60) == []
        klines = [k for k in sim.request_log.klines if k.status == 200]
    fetches: dict[tuple[int, int], list[tuple[str, float, float]]] = {}
    for worker, start, end, began, ended in log:
        fetches.setdefault((start, end), []).append((worker, began, ended))
    assert len(fetches) == 12
    for span, calls in fetches.items():
        assert len(calls) <= 2, f"{span} fetched {len(calls)} times"
        workers = [c[0] for c in calls]
        assert len(set(workers)) == len(workers), f"{span}: one worker fetched it twice"
        if len(calls) == 2:  # once per store, one after the other, never at once
            (_, _, first_ended), (_, second_began, _) = sorted(calls, key=lambda c: c[1])
            assert first_ended <= second_began, f"{span} fetched by both workers at once"
    assert len(klines) == len(log)  # one exchange request per window fetch (120 bars a page)


async def test_a_provider_whose_coordinator_is_down_still_backfills_and_logs_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    window = Range(JAN1, JAN1 + 86_400)
    scenario = Scenario.from_dict({"seed": 3, "symbols": ["BTC/USDT"]})
    async with run_simulator(scenario) as sim:
        config = provider_config(tmp_path, "solo", sim.base_url, dead_url())
        provider = EnhancedQuestDBProvider.from_config(config, strategy="AUTO_BACKFILL")
        assert isinstance(provider.coordinator, DistributedBackfillCoordinator)
        async with provider:
            with caplog.at_level(logging.INFO, logger="qmtl"):
                assert await provider.ensure_data_available(window.start, window.end, node_id=NODE)
    failures = [r for r in caplog.records if getattr(r, "event", None) == COORDINATOR_CLAIM_FAILED]
    assert len(failures) == 1
    assert failures[0].levelno == logging.WARNING
    assert "unreachable" in failures[0].error  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if getattr(r, "event", None) == COORDINATOR_CLAIMED]


async def test_a_provider_without_coordinator_url_has_none(tmp_path: Path) -> None:
    config = load_config(
        {
            "seamless": {"storage": {"dsn": f"duckdb:///{tmp_path / 'h.duckdb'}"}},
            "exchanges": {"binance": {"symbols": ["BTC/USDT"]}},
        },
        env={},
    )
    provider = EnhancedQuestDBProvider.from_config(config)
    try:
        assert provider.coordinator is None
        assert provider.auto_backfiller.coordinator is None
    finally:
        await provider.aclose()


async def test_a_window_a_worker_on_the_same_store_filled_is_not_fetched_again(
    tmp_path: Path,
) -> None:
    """The coordinator grants a completed window again (for workers with stores of their
    own); a worker on the *same* store asks the store first, completes the lease and fetches
    nothing. (Worker B planned the window before worker A filled it.)"""
    from qmtl.runtime.io import DataFetcherAutoBackfiller, InMemoryBackfillCoordinator
    from qmtl.runtime.io.storage import open_storage
    from tests.fetchers import ScriptedFetcher

    node, window = "ohlcv:binance:BTC/USDT:1m", Range(1_704_067_200, 1_704_067_200 + 3600)
    coordinator = InMemoryBackfillCoordinator()
    fetcher = ScriptedFetcher()
    async with open_storage(f"duckdb:///{tmp_path / 'shared.duckdb'}") as store:
        first = DataFetcherAutoBackfiller(fetcher, store, coordinator=coordinator, lease_ms=60_000)
        second = DataFetcherAutoBackfiller(fetcher, store, coordinator=coordinator, lease_ms=60_000)
        assert not (await first.backfill(node, 60, [window])).failed
        report = await second.backfill(node, 60, [window])
    assert fetcher.calls == [(window.start, window.end)]  # fetched once, by the first worker
    assert [o.shared for o in report.outcomes] == [True] and not report.failed


async def test_a_provider_that_requires_leases_fetches_nothing_while_the_coordinator_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's mode (``leases.require_lease``): with the coordinator unreachable no window
    is fetched — the batches come back held, still missing (never known-empty), the outage is
    logged once and dated — and once a coordinator answers on that URL, the next pass fills
    the range and the outage is over."""
    window = Range(JAN1, JAN1 + 86_400)
    url = dead_url()
    scenario = Scenario.from_dict({"seed": 3, "symbols": ["BTC/USDT"]})
    async with run_simulator(scenario) as sim:
        config = provider_config(tmp_path, "strict", sim.base_url, url)
        provider = EnhancedQuestDBProvider.from_config(config, strategy="AUTO_BACKFILL")
        leases = provider.auto_backfiller.leases
        assert leases is not None and not leases.require_lease  # the library falls back
        leases.require_lease = True
        async with provider:
            with caplog.at_level(logging.INFO, logger="qmtl"):
                served = await provider.ensure_data_available(
                    window.start, window.end, node_id=NODE
                )
            assert served is False
            assert sim.request_log.klines == []
            ledger = await provider.storage.read_ledger(NODE, 60)
            missing = compute_missing_ranges(ledger, window.start, window.end, 60)
            assert missing == [window]
            assert leases.outage_since is not None and leases.outage_error is not None
            assert leases.outage_error.url == url
            failed = [
                r for r in caplog.records if getattr(r, "event", None) == COORDINATOR_CLAIM_FAILED
            ]
            assert len(failed) == 1 and "waiting for it" in failed[0].error  # type: ignore[attr-defined]
            port = int(url.rsplit(":", 1)[1])
            store = SQLiteLeaseStore(tmp_path / "leases.db")
            metrics = SeamlessMetrics(CollectorRegistry())
            async with run_coordinator(store, metrics=metrics, port=port):
                assert await provider.ensure_data_available(window.start, window.end, node_id=NODE)
            assert leases.outage_since is None and leases.outage_error is None
            assert sim.request_log.klines


async def test_a_worker_holds_no_more_leases_than_it_can_fetch_at_once(tmp_path: Path) -> None:
    """Leases are claimed only when a fetch slot is free: a worker planning many batches
    never sits on windows (``max_concurrent_requests`` of them at most) that other workers
    could be fetching meanwhile."""
    from qmtl.runtime.io import DataFetcherAutoBackfiller, InMemoryBackfillCoordinator
    from qmtl.runtime.io.storage import open_storage
    from qmtl.runtime.sdk.backfill_config import BackfillConfig
    from tests.fetchers import ScriptedFetcher

    class Counting(InMemoryBackfillCoordinator):
        held = 0
        most = 0

        async def claim(self, key: str, lease_ms: int) -> Lease | None:
            lease = await super().claim(key, lease_ms)
            if lease is not None:
                Counting.held += 1
                Counting.most = max(Counting.most, Counting.held)
            return lease

        async def complete(self, lease: Lease) -> None:
            Counting.held -= 1
            await super().complete(lease)

    window = Range(JAN1, JAN1 + 86_400)  # 24 batches of 60 bars
    config = BackfillConfig(window_bars=60, max_concurrent_requests=2)
    fetcher = ScriptedFetcher(delay_s=0.01, clock=SystemClock())
    async with open_storage(f"duckdb:///{tmp_path / 'w.duckdb'}") as store:
        worker = DataFetcherAutoBackfiller(
            fetcher, store, coordinator=Counting(), lease_ms=60_000, config=config
        )
        report = await worker.backfill(NODE, 60, [window])
    assert not report.failed and len(report.outcomes) == 24
    assert fetcher.max_in_flight == 2
    assert Counting.most == 2, Counting.most  # was 2 x PLANNED_PER_SLOT before
