"""Execution-domain governance and the cache, rule by rule: each with a fresh metrics registry
and the captured log records, fields included (real DuckDB, real artifact files; the hot
store is filled directly, no exchange)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from prometheus_client import CollectorRegistry

from qmtl.runtime.io.artifact import ArtifactRegistrar
from qmtl.runtime.io.artifact_stores import LocalArtifactStore
from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk import Range, SeamlessCoverageError, SeamlessDomainPolicyError
from qmtl.runtime.sdk.artifact_keys import as_of_from_ms, as_of_to_ms
from qmtl.runtime.sdk.bars import frame_from_columns
from qmtl.runtime.sdk.cache import CacheKey, ResultCache
from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.config import CacheConfig
from qmtl.runtime.sdk.domain_gate import Downgrade, GateVerdict
from qmtl.runtime.sdk.fetch_result import SeamlessFetchMetadata, SeamlessFetchResult
from qmtl.runtime.sdk.history_storage import LedgerUpdate
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.seamless_data_provider import SeamlessDataProvider

NODE = "ohlcv:binance:BTC/USDT:1m"
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY = 86_400
NOW = T0 + 2 * DAY  # the clock: two days after the first bar


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


class Rig:
    """A provider over a DuckDB file holding ``[T0, T0 + DAY)`` minus a hole, an artifact
    store, a fake clock and a fresh metrics registry."""

    def __init__(self, tmp: Path, **provider: Any) -> None:
        self.tmp = tmp
        self.clock = FakeClock(NOW)
        self.registry = CollectorRegistry()
        self.metrics = SeamlessMetrics(self.registry)
        self.store = open_storage(f"duckdb:///{tmp / 'hot.duckdb'}")
        self.registrar = ArtifactRegistrar(
            LocalArtifactStore(tmp / "art"), clock=self.clock, metrics=self.metrics
        )
        self.provider = SeamlessDataProvider(
            storage=self.store, registrar=self.registrar, clock=self.clock,
            metrics=self.metrics, **provider,
        )  # fmt: skip

    async def fill(self, start: int, end: int) -> None:
        ts = np.arange(start, end, 60, dtype=np.int64)
        x = 100 + np.sin(ts / 3600.0)
        frame = frame_from_columns(
            {"ts": ts, "open": x, "high": x + 1, "low": x - 1, "close": x, "volume": x}
        )
        update = LedgerUpdate(interval=60, data=(Range(start, end),), fetched_at=self.clock.now())
        await self.store.write_bars(NODE, frame, ledger_update=update)

    async def close(self) -> None:
        await self.store.close()
        await self.registrar.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    made = Rig(tmp_path, cache=None)
    await made.fill(T0, T0 + DAY)
    yield made
    await made.close()


async def test_a_backtest_without_as_of_is_refused_and_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="qmtl"),
        pytest.raises(SeamlessDomainPolicyError, match="missing_as_of"),
    ):
        await rig.provider.fetch(T0, T0 + DAY, node_id=NODE, execution_domain="backtest",
                                 world_id="w1")  # fmt: skip
    (record,) = events(caplog, "seamless.domain_gate.missing_as_of")
    assert (record.node_id, record.world_id, record.execution_domain) == (  # type: ignore[attr-defined]
        NODE, "w1", "backtest",
    )  # fmt: skip


async def test_a_backtest_over_an_unpublished_range_fails_naming_it(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    dryrun = await rig.provider.fetch(
        T0, T0 + DAY // 2, node_id=NODE, execution_domain="dryrun", as_of=T0
    )  # publishes the first half
    as_of = dryrun.metadata.as_of
    assert as_of is not None
    with (
        caplog.at_level(logging.INFO, logger="qmtl"),
        pytest.raises(SeamlessDomainPolicyError, match="missing_artifact"),
    ):
        await rig.provider.fetch(T0, T0 + DAY, node_id=NODE, execution_domain="backtest",
                                 as_of=as_of, world_id="w1")  # fmt: skip
    (record,) = events(caplog, "seamless.domain_gate.missing_artifact")
    assert record.as_of == as_of and record.world_id == "w1"  # type: ignore[attr-defined]
    assert record.missing == [str(Range(T0 + DAY // 2, T0 + DAY))]  # type: ignore[attr-defined]
    ok = await rig.provider.fetch(T0, T0 + DAY // 2, node_id=NODE, execution_domain="backtest",
                                  as_of=as_of)  # fmt: skip
    assert ok.frame.equals(dryrun.frame) and ok.metadata.as_of == as_of


async def test_a_later_publication_is_invisible_to_an_earlier_as_of(rig: Rig) -> None:
    first = await rig.provider.fetch(T0, T0 + 3600, node_id=NODE, execution_domain="dryrun",
                                     as_of=T0)  # fmt: skip
    rig.clock.advance(5)
    await rig.provider.fetch(T0 + 3600, T0 + 7200, node_id=NODE, execution_domain="dryrun",
                             as_of=T0)  # fmt: skip
    backtest = await rig.provider.fetch(
        T0, T0 + 3600, node_id=NODE, execution_domain="backtest", as_of=first.metadata.as_of
    )
    assert backtest.metadata.rows == 60 and backtest.frame.equals(first.frame)
    with pytest.raises(SeamlessDomainPolicyError, match="missing_artifact"):
        await rig.provider.fetch(T0, T0 + 7200, node_id=NODE, execution_domain="backtest",
                                 as_of=first.metadata.as_of)  # fmt: skip


async def test_live_data_older_than_max_lag_is_held(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="qmtl"):
        result = await rig.provider.fetch(T0, T0 + DAY, node_id=NODE, execution_domain="live",
                                          world_id="w1")  # fmt: skip
    meta = result.metadata
    assert (meta.downgraded, meta.downgrade_mode, meta.downgrade_reason) == (
        True, "HOLD", "freshness_breach",
    )  # fmt: skip
    (record,) = events(caplog, "seamless.domain_gate.downgrade")
    fields = {k: getattr(record, k) for k in (
        "node_id", "interval", "world_id", "execution_domain", "from_mode", "to_mode", "reason",
        "dataset_fingerprint", "as_of")}  # fmt: skip
    assert fields == {
        "node_id": NODE, "interval": 60, "world_id": "w1", "execution_domain": "live",
        "from_mode": "SEAMLESS", "to_mode": "HOLD", "reason": "freshness_breach",
        "dataset_fingerprint": meta.dataset_fingerprint, "as_of": None,
    }  # fmt: skip
    assert sample(rig.registry, "domain_gate_holds_total", node_id=NODE, world_id="w1",
                  reason="freshness_breach") == 1.0  # fmt: skip
    fresh = await rig.provider.fetch(T0, T0 + DAY, node_id=NODE, execution_domain="live",
                                     max_lag_seconds=3 * DAY)  # fmt: skip
    assert not fresh.metadata.downgraded  # the fetch's own limit wins over the domain's


async def test_coverage_under_the_limit_is_held(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="qmtl"):
        result = await rig.provider.fetch(
            T0, T0 + 2 * DAY, node_id=NODE, execution_domain="shadow", min_coverage=0.9,
            max_lag_seconds=10 * DAY,
        )  # fmt: skip
    assert result.metadata.coverage_ratio == 0.5
    assert result.metadata.downgrade_reason == "coverage_breach"
    (record,) = events(caplog, "seamless.domain_gate.downgrade")
    assert record.reason == "coverage_breach"  # type: ignore[attr-defined]
    assert record.dataset_fingerprint == result.metadata.dataset_fingerprint  # type: ignore[attr-defined]
    assert sample(rig.registry, "domain_gate_holds_total", node_id=NODE, world_id="",
                  reason="coverage_breach") == 1.0  # fmt: skip


async def test_an_as_of_regression_is_held_even_after_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = {"max_lag_seconds": 10 * DAY, "execution_domain": "live", "world_id": "w1"}
    first = Rig(tmp_path)
    await first.fill(T0, T0 + DAY)
    with caplog.at_level(logging.INFO, logger="qmtl"):
        a = await first.provider.fetch(T0, T0 + DAY, node_id=NODE, as_of=T0 + 10, **live)
        b = await first.provider.fetch(T0, T0 + DAY, node_id=NODE, as_of=T0 + 20, **live)
        c = await first.provider.fetch(T0, T0 + DAY, node_id=NODE, as_of=T0 + 20, **live)
    assert not (a.metadata.downgraded or b.metadata.downgraded or c.metadata.downgraded)
    advanced = events(caplog, "seamless.as_of.advanced")
    assert [(r.previous, r.current) for r in advanced] == [  # type: ignore[attr-defined]
        (None, "2024-01-01T00:00:10.000Z"),
        ("2024-01-01T00:00:10.000Z", "2024-01-01T00:00:20.000Z"),
    ]
    assert sample(first.registry, "as_of_advancement_events_total", node_id=NODE,
                  world_id="w1") == 2.0  # fmt: skip
    await first.close()
    caplog.clear()

    restarted = Rig(tmp_path)  # a new process: the mark lives in the hot store
    with caplog.at_level(logging.INFO, logger="qmtl"):
        back = await restarted.provider.fetch(T0, T0 + DAY, node_id=NODE, as_of=T0 + 15, **live)
    assert (back.metadata.downgrade_mode, back.metadata.downgrade_reason) == (
        "HOLD", "as_of_regression",
    )  # fmt: skip
    (record,) = events(caplog, "seamless.domain_gate.downgrade")
    assert record.as_of == "2024-01-01T00:00:15.000Z"  # type: ignore[attr-defined]
    assert events(caplog, "seamless.as_of.advanced") == []
    assert sample(restarted.registry, "domain_gate_holds_total", node_id=NODE, world_id="w1",
                  reason="as_of_regression") == 1.0  # fmt: skip
    await restarted.close()


def test_hold_outranks_partial_fill() -> None:
    verdict = GateVerdict((Downgrade("PARTIAL_FILL", "sla_total"), Downgrade("HOLD", "x")))
    assert verdict.governing == Downgrade("HOLD", "x")
    assert GateVerdict((Downgrade("PARTIAL_FILL", "a"),)).governing == Downgrade(
        "PARTIAL_FILL", "a"
    )
    assert GateVerdict().governing is None


# -- the cache ------------------------------------------------------------------------------------


async def test_a_cache_hit_is_re_gated_and_never_crosses_a_world(tmp_path: Path) -> None:
    made = Rig(tmp_path, cache=None)
    cache = ResultCache(CacheConfig(ttl_ms=10 * DAY * 1000, max_shards=2), clock=made.clock)
    made.provider.governor.cache = cache
    await made.fill(T0, T0 + DAY)
    args: dict[str, Any] = {"node_id": NODE, "execution_domain": "live", "max_lag_seconds": 2 * DAY}
    first = await made.provider.fetch(T0, T0 + DAY, world_id="w1", **args)
    assert first.metadata.cache_key is not None and not first.metadata.downgraded
    made.clock.advance(30)
    first.frame.loc[:, "close"] = -1.0  # a caller changing its frame in place
    hit = await made.provider.fetch(T0, T0 + DAY, world_id="w1", **args)
    assert set(hit.metadata.sla_phases_ms) == {"total"}  # served from memory, timed as such
    assert (hit.frame["close"] > 0).all()  # ...and a copy: the caller's change is not served
    hit.frame.loc[:, "close"] = -2.0
    assert hit.metadata.staleness_ms == pytest.approx(first.metadata.staleness_ms + 30_000)
    other = await made.provider.fetch(T0, T0 + DAY, world_id="w2", **args)
    assert set(other.metadata.sla_phases_ms) != {"total"}  # another world: never a hit
    made.clock.advance(DAY)  # still cached, but the re-gated hit is now too stale
    stale = await made.provider.fetch(T0, T0 + DAY, world_id="w1", **args)
    assert set(stale.metadata.sla_phases_ms) == {"total"} and (stale.frame["close"] > 0).all()
    assert (stale.metadata.downgrade_mode, stale.metadata.downgrade_reason) == (
        "HOLD", "freshness_breach",
    )  # fmt: skip
    assert len(cache) == 2
    await made.close()


def complete_result() -> SeamlessFetchResult:
    """A small complete result (nothing missing), as the cache keeps them."""
    values: dict[str, Any] = {
        "node_id": NODE, "interval": 60, "requested_range": Range(0, 60), "rows": 1,
        "coverage_bounds": Range(0, 60), "missing_ranges": (), "coverage_ratio": 1.0,
        "conformance_flags": {}, "conformance_warnings": (), "conformance_version": "v2",
        "strategy": "SEAMLESS", "partial": False, "downgraded": False,
        "sla_phases_ms": {}, "artifacts": (),
    }  # fmt: skip
    for field in dataclasses.fields(SeamlessFetchMetadata):
        values.setdefault(field.name, None)
    columns = {c: np.zeros(1) for c in ("open", "high", "low", "close", "volume")}
    frame = frame_from_columns({"ts": np.zeros(1, dtype=np.int64), **columns})
    return SeamlessFetchResult(frame, SeamlessFetchMetadata(**values))


def test_the_cache_key_parts_decide_and_a_domain_switch_purges_the_world() -> None:
    clock = FakeClock(0.0)
    cache = ResultCache(CacheConfig(ttl_ms=1000, max_shards=3), clock=clock)
    result = complete_result()
    key = CacheKey(NODE, 0, 60, 60, "v2", "a:b", None)
    alias = CacheKey(NODE, 0, 60, 60, "v2", "a", None)  # same rendered prefix, other world
    assert cache.put(key, result, domain="live")
    assert cache.get(alias, domain="live") is None
    hit = cache.get(key, domain="live")
    assert hit is not None and hit.frame.equals(result.frame) and hit.frame is not result.frame
    assert cache.get(CacheKey(NODE, 0, 60, 60, "v2", "a:b", 5), domain="live") is None  # as_of
    clock.advance(1.0)
    assert cache.get(key, domain="live") is None  # ttl
    assert cache.put(key, result, domain="live")
    assert cache.get(key, domain="backtest") is None  # the world switched domain: purged
    for i in range(5):
        cache.put(CacheKey(NODE, i, 60, 60, "v2", "w", None), result, domain=None)
    assert len(cache) == 3  # LRU bound


# -- the model: no fetch serves a bar published after its as_of; the cache never crosses --------

HOUR = 3600
WINDOWS = [Range(T0, T0 + HOUR), Range(T0 + HOUR, T0 + 3 * HOUR), Range(T0, T0 + 3 * HOUR)]


class GovernanceMachine(RuleBasedStateMachine):
    """Writes to the hot store, dryrun publications, backtests at any instant from two
    worlds (through the cache), domain switches and clock advances, against a model: per
    bar, the value of the newest publication at or before the backtest's ``as_of``."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        root = Path(os.environ["QMTL_GOVERNANCE_MACHINE_ROOT"]) / str(time.monotonic_ns())
        root.mkdir(parents=True)
        self.rig = Rig(root, cache=None)
        self.rig.provider.governor.cache = ResultCache(
            CacheConfig(ttl_ms=10**9, max_shards=4), clock=self.rig.clock
        )
        self.stored: dict[int, float] = {}  # ts -> close, as the hot store holds it
        self.published: list[tuple[int, dict[int, float]]] = []  # (as_of ms, bars)
        self.known: set[str] = set()  # manifest keys already in the model

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize()
    def start(self) -> None:  # a useful state at once: 3 h stored, the first hour published
        self.write(0, 3, 1)
        self.publish(WINDOWS[0])

    @rule(first=st.integers(0, 5), hours=st.integers(1, 3), seed=st.integers(1, 3))
    def write(self, first: int, hours: int, seed: int) -> None:
        start = T0 + first * HOUR // 2
        end = min(start + hours * HOUR, T0 + 3 * HOUR)
        ts = np.arange(start, end, 60, dtype=np.int64)
        x = 100.0 + seed + ts % 7
        frame = frame_from_columns(
            {"ts": ts, "open": x, "high": x + 1, "low": x - 1, "close": x, "volume": x}
        )
        update = LedgerUpdate(interval=60, data=(Range(start, end),), fetched_at=None)
        self.run(self.rig.store.write_bars(NODE, frame, ledger_update=update))
        self.stored.update(zip(ts.tolist(), x.tolist(), strict=True))

    @rule(window=st.sampled_from(WINDOWS))
    def publish(self, window: Range) -> None:
        with contextlib.suppress(SeamlessCoverageError):  # parts never written: the rest
            self.run(self.rig.provider.fetch(
                window.start, window.end, node_id=NODE, execution_domain="dryrun", as_of=T0
            ))  # fmt: skip
        for entry in self.run(self.rig.registrar.catalog(NODE)).entries:
            if entry.manifest_key not in self.known:
                self.known.add(entry.manifest_key)
                bars = {t: v for t, v in self.stored.items() if entry.start <= t < entry.end}
                self.published.append((entry.as_of_ms, bars))

    @rule(seconds=st.sampled_from([0.001, 1.0, 600.0]))
    def advance(self, seconds: float) -> None:
        self.rig.clock.advance(seconds)

    @rule(world=st.sampled_from(["w1", "w2"]))
    def switch_domain(self, world: str) -> None:
        self.run(self.rig.provider.fetch(T0, T0 + HOUR, node_id=NODE, execution_domain="live",
                                         world_id=world, max_lag_seconds=10**9))  # fmt: skip

    @rule(first=st.sampled_from(["w1", "w2"]), window=st.sampled_from(WINDOWS),
          pick=st.integers(0, 100))  # fmt: skip
    def backtest(self, first: str, window: Range, pick: int) -> None:
        """Both worlds ask the same thing, in either order: a cache that crossed worlds
        would hand the second the first one's result."""
        stamps = sorted(s for s, _ in self.published) or [int(NOW * 1000)]
        as_of = stamps[pick % len(stamps)] + (pick % 4 == 3) - (pick % 8 == 7) * 2
        model: dict[int, float] = {}
        for stamp, bars in sorted(self.published, key=lambda p: p[0]):
            if stamp <= as_of:
                model.update(bars)
        expected = {t: v for t, v in model.items() if window.start <= t < window.end}
        for world in (first, "w2" if first == "w1" else "w1"):
            try:
                result = self.run(self.rig.provider.fetch(
                    window.start, window.end, node_id=NODE, execution_domain="backtest",
                    world_id=world, as_of=as_of,
                ))  # fmt: skip
            except SeamlessDomainPolicyError:
                assert len(expected) < window.bars(60)  # refused only when not all published
                continue
            meta = result.metadata
            event("backtest served")
            assert meta.world_id == world and meta.requested_as_of == as_of_from_ms(as_of)
            served = dict(zip(result.frame["ts"].tolist(), result.frame["close"].tolist(),
                              strict=True))  # fmt: skip
            assert served == expected  # nothing published after as_of, nothing of another world
            assert meta.as_of is not None and as_of_to_ms(meta.as_of) <= as_of

    def teardown(self) -> None:
        self.run(self.rig.close())
        self.loop.close()


@pytest.mark.usefixtures("_governance_root")
class TestGovernanceModel(GovernanceMachine.TestCase):  # type: ignore[misc,name-defined]
    settings = settings(
        max_examples=30,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.fixture
def _governance_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QMTL_GOVERNANCE_MACHINE_ROOT", str(tmp_path))
