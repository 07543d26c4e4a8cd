"""``HistoryStorage.list_nodes`` over every backend (DuckDB file, real PostgreSQL): what a
store holds, per node and interval, checked against a model computed from the store's own
``read_range``/``read_ledger`` — and the pure counting of :func:`summarize_node`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.io.storage import HistoryStorage, LedgerUpdate, NodeSummary, open_storage
from qmtl.runtime.sdk.history_coverage import CoverageSegment, Range, SegmentKind
from qmtl.runtime.sdk.history_storage import summarize_node
from tests.test_storage import HOSTILE_IDS, NODE, I, bars
from tests.test_storage_schema import make_legacy, sql

DATA, EMPTY = SegmentKind.DATA, SegmentKind.EMPTY
INTERVALS = (60, 300)
#: Ids a model example writes: ones that name a timeframe and ones that do not, hostile
#: ones, and a pair whose order differs between collations ("Zeta" < "alpha" by code point).
POOL = (
    NODE,
    "ohlcv:okx:ETH/USDT:5m",
    "ohlcv:x:'; DROP TABLE qmtl_bars;--:1m",
    "../../etc/passwd",
    "quote\"double' \\ $1 ? %s",
    "Zeta",
    "alpha",
    "é🚀" * 800,
)
#: The interval a bars-only node is listed at: its id's timeframe, else 0 (unknown).
NAMED = {NODE: 60, "ohlcv:okx:ETH/USDT:5m": 300}


@pytest.fixture(params=["duckdb", "postgres"])
def storage_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'hot.duckdb'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


async def model(store: HistoryStorage, node_ids: tuple[str, ...] = POOL) -> list[NodeSummary]:
    """What ``list_nodes`` must say, from the store's reads alone (bars enumerated one by
    one: independent of the range arithmetic ``list_nodes`` uses)."""
    rows: list[NodeSummary] = []
    for node in node_ids:
        ts = (await store.read_range(node, 0, 2**62))["ts"].tolist()
        first, last = (ts[0], ts[-1]) if ts else (None, None)
        counted = []
        for interval in INTERVALS:
            ledger = await store.read_ledger(node, interval)
            if not ledger:
                continue
            covered = {t for s in ledger for t in range(s.start, s.end, interval)}
            empty = {t for s in ledger if s.kind is EMPTY for t in range(s.start, s.end, interval)}
            span = range(min(s.start for s in ledger), max(s.end for s in ledger), interval)
            fetched = [s.fetched_at for s in ledger if s.fetched_at is not None]
            missing = sum(t not in covered for t in span)
            counted.append((interval, len(empty), missing, max(fetched, default=None)))
        if not counted and ts:
            counted.append((NAMED.get(node, 0), 0, 0, None))
        rows += [
            NodeSummary(
                node_id=node,
                interval=interval,
                first_bar=first,
                last_bar=last,
                stored_bars=len(ts),
                known_empty_bars=empty_bars,
                missing_bars=missing,
                last_fetched_at=fetched_at,
            )
            for interval, empty_bars, missing, fetched_at in counted
        ]
    return sorted(rows, key=lambda r: (r.node_id, r.interval))


# -- the model property -----------------------------------------------------------------------


@pytest.fixture
def sync_store(storage_dsn: str) -> Iterator[tuple[asyncio.Runner, HistoryStorage]]:
    """A store driven from a private event loop, for hypothesis (which cannot await)."""
    with asyncio.Runner() as runner:
        store = open_storage(storage_dsn)
        yield runner, store
        runner.run(store.close())


slot_range = st.tuples(st.integers(0, 30), st.integers(0, 30)).map(sorted)
ledger_updates = st.builds(
    lambda interval, data, empty, fetched_at: LedgerUpdate(
        interval=interval,
        data=tuple(Range(a * interval, b * interval) for a, b in data),
        empty=tuple(Range(a * interval, b * interval) for a, b in empty),
        source="model",
        fetched_at=fetched_at,
    ),
    st.sampled_from(INTERVALS),
    st.lists(slot_range, max_size=3),
    st.lists(slot_range, max_size=3),
    st.sampled_from([None, 5_000.0, 1e6 + 0.5]),  # 5,000: trims some EMPTY claims
)
operations = st.tuples(
    st.sampled_from(POOL),
    st.sampled_from(["bars", "ledger", "both", "delete"]),
    st.sets(st.integers(0, 40), max_size=8),  # bar slots of 60 s
    ledger_updates,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operations, max_size=6))
def test_list_nodes_matches_a_model_of_the_reads(
    sync_store: tuple[asyncio.Runner, HistoryStorage],
    ops: list[tuple[str, str, set[int], LedgerUpdate]],
) -> None:
    runner, store = sync_store

    async def example() -> None:
        for node in POOL:  # the store outlives examples: start each from nothing
            await store.delete_node(node)
        assert await store.list_nodes() == []
        for node, op, slots, update in ops:
            frame = bars(sorted(t * I for t in slots))
            if op == "bars":
                await store.write_bars(node, frame)
            elif op == "ledger":
                await store.update_ledger(node, update)
            elif op == "both":
                await store.write_bars(node, frame, ledger_update=update)
            else:
                await store.delete_node(node)
        assert await store.list_nodes() == await model(store)

    runner.run(example())


# -- edges ------------------------------------------------------------------------------------


async def test_an_empty_store_lists_nothing(storage_dsn: str) -> None:
    async with open_storage(storage_dsn) as store:
        assert await store.list_nodes() == []
        await store.write_bars(NODE, bars([]))  # a node row that holds nothing
        await store.update_ledger(NODE, LedgerUpdate(interval=I))
        assert await store.list_nodes() == []


async def test_read_only_stores_list_what_a_writer_stored(storage_dsn: str) -> None:
    update = LedgerUpdate(interval=I, data=(Range(0, 300), Range(600, 900)), fetched_at=1e6)
    async with open_storage(storage_dsn) as writer:
        await writer.write_bars(NODE, bars(range(0, 300, I)), ledger_update=update)
        written = await writer.list_nodes()
    async with open_storage(storage_dsn, read_only=True) as store:
        assert await store.list_nodes() == written == await model(store)
    assert written == [
        NodeSummary(
            node_id=NODE,
            interval=I,
            first_bar=0,
            last_bar=240,
            stored_bars=5,
            missing_bars=5,  # [300, 600): the gap between the two segments
            last_fetched_at=1e6,
        )
    ]


async def test_read_only_stores_without_our_tables_list_nothing(
    storage_dsn: str, tmp_path: Path
) -> None:
    if storage_dsn.startswith("duckdb"):
        await sql(storage_dsn, "SELECT 1")  # a valid DuckDB file holding nothing of ours
    async with open_storage(storage_dsn, read_only=True) as store:
        assert await store.list_nodes() == []


async def test_read_only_lists_a_store_written_before_schema_versions(storage_dsn: str) -> None:
    await make_legacy(storage_dsn)
    async with open_storage(storage_dsn, read_only=True) as store:
        listed = await store.list_nodes()
        assert listed == await model(store, (NODE,))
    assert [(s.node_id, s.stored_bars) for s in listed] == [(NODE, 5)]


async def test_hostile_node_ids_come_back_exactly(storage_dsn: str) -> None:
    ids = [NODE, *HOSTILE_IDS]
    async with open_storage(storage_dsn) as store:
        for n, node in enumerate(ids):
            update = LedgerUpdate(interval=I, data=(Range(0, (n + 1) * I),))
            await store.write_bars(node, bars(range(0, (n + 1) * I, I)), ledger_update=update)
        listed = await store.list_nodes()
    assert [s.node_id for s in listed] == sorted(ids)  # by code point, on every backend
    assert {s.node_id: s.stored_bars for s in listed} == {node: n + 1 for n, node in enumerate(ids)}
    assert all(s.missing_bars == 0 and s.interval == I for s in listed)


async def test_ledger_without_bars_and_bars_without_ledger_are_listed(storage_dsn: str) -> None:
    empty_only = LedgerUpdate(interval=3600, empty=(Range(0, 7200),), fetched_at=None)
    async with open_storage(storage_dsn) as store:
        await store.update_ledger("ohlcv:okx:SOL/USDT:1h", empty_only)
        await store.write_bars("../../etc/passwd", bars([60, 180]))
        await store.write_bars(NODE, bars([0]))
        assert await store.list_nodes() == [
            NodeSummary(node_id="../../etc/passwd", interval=0, first_bar=60, last_bar=180,
                        stored_bars=2),
            NodeSummary(node_id=NODE, interval=I, first_bar=0, last_bar=0, stored_bars=1),
            NodeSummary(node_id="ohlcv:okx:SOL/USDT:1h", interval=3600, known_empty_bars=2),
        ]  # fmt: skip


async def test_one_row_per_ledger_interval(storage_dsn: str) -> None:
    async with open_storage(storage_dsn) as store:
        await store.write_bars(NODE, bars([0, 60]), ledger_update=LedgerUpdate(
            interval=60, data=(Range(0, 120),), fetched_at=10.0))  # fmt: skip
        await store.update_ledger(NODE, LedgerUpdate(interval=300, data=(Range(0, 300),)))
        listed = await store.list_nodes()
    assert [(s.interval, s.stored_bars, s.last_fetched_at) for s in listed] == [
        (60, 2, 10.0),
        (300, 2, None),  # bars belong to the node: both rows show them
    ]


# -- the pure counting ------------------------------------------------------------------------


def test_missing_counts_interior_gaps_only() -> None:
    ledger = [
        CoverageSegment(600, 1200, DATA, "x", 5.0),
        CoverageSegment(1800, 2400, EMPTY, "x", 7.5),
        CoverageSegment(3000, 3600, DATA, "x", None),
    ]
    (row,) = summarize_node("n", {60: ledger}, first_bar=600, last_bar=1140, stored_bars=10)
    # Before 600 and after 3600 nothing is counted: only [1200, 1800) and [2400, 3000).
    assert (row.missing_bars, row.known_empty_bars, row.last_fetched_at) == (20, 10, 7.5)
    assert summarize_node("n", {60: []}) == []
    assert summarize_node("n", {}, first_bar=0, last_bar=0, stored_bars=1) == [
        NodeSummary(node_id="n", interval=0, first_bar=0, last_bar=0, stored_bars=1)
    ]


def test_to_dict_is_json_ready_with_iso_times() -> None:
    summary = NodeSummary(
        node_id=NODE,
        interval=60,
        first_bar=1_704_067_200,
        last_bar=1_704_326_340,
        stored_bars=4_320,
        last_fetched_at=1_704_326_400.25,
    )
    assert summary.to_dict() == {
        "node_id": NODE,
        "interval": 60,
        "first_bar": 1_704_067_200,
        "first_bar_iso": "2024-01-01T00:00:00Z",
        "last_bar": 1_704_326_340,
        "last_bar_iso": "2024-01-03T23:59:00Z",
        "stored_bars": 4_320,
        "known_empty_bars": 0,
        "missing_bars": 0,
        "last_fetched_at": 1_704_326_400.25,
        "last_fetched_at_iso": "2024-01-04T00:00:00.250Z",
    }
    empty = NodeSummary(node_id="n", interval=60, known_empty_bars=3).to_dict()
    assert empty["first_bar_iso"] is None and empty["last_fetched_at_iso"] is None


def test_summaries_refuse_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="stored_bars"):
        NodeSummary(node_id="n", interval=60, stored_bars=-1)
    with pytest.raises(ValueError, match="first_bar and last_bar"):
        NodeSummary(node_id="n", interval=60, first_bar=0)
    with pytest.raises(ValueError, match="first_bar and last_bar"):
        NodeSummary(node_id="n", interval=60, stored_bars=3)
