"""As-of marks (``advance_as_of`` / ``as_of_mark``): the newest ``as_of`` each
``(world_id, node_id)`` was served, kept in the hot store so it survives restarts and is shared
by every process on the store — one suite over DuckDB and real PostgreSQL.

Invariant: a mark only ever rises, and every advance sees the mark as it was just before it
(the answers of concurrent advances are those of *some* serial order: exactly one first
sighting, nothing above the final mark).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.io.storage import (
    HistoryStorage,
    PostgresStorage,
    StorageError,
    open_storage,
)
from qmtl.runtime.io.storage.base import MARKS_TABLE, SCHEMA_VERSION
from tests.test_storage import BACKENDS, NODE, assert_bars_equal, bars
from tests.test_storage_schema import make_legacy, meta_of, sql, tables_of

WORLD = "world-a"
OTHER = "ohlcv:binance:ETH/USDT:1m"
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
T0 = 1_700_000_000_000  # epoch ms


@pytest.fixture(params=BACKENDS)
def storage_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'hot.duckdb'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
async def storage(storage_dsn: str) -> AsyncIterator[HistoryStorage]:
    async with open_storage(storage_dsn) as store:
        yield store


# -- behaviour --------------------------------------------------------------------------------


async def test_first_sighting_then_advances_and_regressions(storage: HistoryStorage) -> None:
    assert await storage.as_of_mark(WORLD, NODE) is None
    assert await storage.advance_as_of(WORLD, NODE, T0) is None  # first sighting
    assert await storage.as_of_mark(WORLD, NODE) == T0
    assert await storage.advance_as_of(WORLD, NODE, T0 + 5) == T0  # the mark before
    assert await storage.as_of_mark(WORLD, NODE) == T0 + 5
    assert await storage.advance_as_of(WORLD, NODE, T0) == T0 + 5  # lower: mark unchanged
    assert await storage.as_of_mark(WORLD, NODE) == T0 + 5
    assert await storage.advance_as_of(WORLD, NODE, T0 + 5) == T0 + 5  # equal: unchanged
    assert await storage.as_of_mark(WORLD, NODE) == T0 + 5


async def test_worlds_and_nodes_are_independent(storage: HistoryStorage) -> None:
    await storage.advance_as_of(WORLD, NODE, 100)
    assert await storage.as_of_mark("", NODE) is None
    assert await storage.as_of_mark(WORLD, OTHER) is None
    assert await storage.advance_as_of("", NODE, 50) is None  # "" is "no world"
    assert await storage.advance_as_of(WORLD, OTHER, 7) is None
    assert await storage.as_of_mark(WORLD, NODE) == 100
    assert await storage.as_of_mark("", NODE) == 50
    assert await storage.as_of_mark(WORLD, OTHER) == 7
    # The key of (world, node) is not the key of their concatenation split elsewhere.
    assert await storage.advance_as_of("ab", "c", 1) is None
    assert await storage.advance_as_of("a", "bc", 2) is None
    assert (await storage.as_of_mark("ab", "c"), await storage.as_of_mark("a", "bc")) == (1, 2)


async def test_marks_and_bars_do_not_touch(storage: HistoryStorage) -> None:
    await storage.advance_as_of(WORLD, OTHER, T0)
    assert await storage.list_nodes() == []  # a mark is no stored node
    await storage.write_bars(NODE, bars([0, 60]))
    await storage.advance_as_of(WORLD, NODE, T0)
    assert [s.node_id for s in await storage.list_nodes()] == [NODE]
    await storage.delete_node(NODE)  # marks record what was asked, not what is stored
    assert await storage.as_of_mark(WORLD, NODE) == T0
    assert await storage.list_nodes() == []


HOSTILE = [
    "'; DROP TABLE qmtl_as_of_marks; --",
    'quote " and \\ backslash',
    "../../etc/passwd",
    "x" * 10_000,  # far beyond a PostgreSQL b-tree entry: keys are hashes
    "世界 🌍 \u200b e\u0301 \U0010ffff",
    "\n\t\r",
]


async def test_hostile_ids_round_trip(storage: HistoryStorage, storage_dsn: str) -> None:
    for i, hostile in enumerate(HOSTILE):
        assert await storage.advance_as_of(hostile, NODE, i) is None
        assert await storage.advance_as_of(WORLD, hostile, i + 100) is None
        assert await storage.advance_as_of(hostile, hostile, i + 200) is None
    for i, hostile in enumerate(HOSTILE):
        assert await storage.as_of_mark(hostile, NODE) == i
        assert await storage.as_of_mark(WORLD, hostile) == i + 100
        assert await storage.as_of_mark(hostile, hostile) == i + 200
    await storage.close()  # release the DuckDB file for a look at the table itself
    rows = await sql(storage_dsn, f"SELECT world_id, node_id, as_of_ms FROM {MARKS_TABLE}")
    stored = {(str(w), str(n)): int(v) for w, n, v in rows}
    assert stored[(HOSTILE[3], HOSTILE[3])] == 203  # the ids are kept verbatim, for people
    assert len(stored) == 3 * len(HOSTILE)


@pytest.mark.parametrize(
    ("world", "node", "as_of_ms", "match"),
    [
        ("w\x00", NODE, 1, "world id contains NUL"),
        (WORLD, "n\x00", 1, "node id contains NUL"),
        (WORLD, "", 1, "node id is empty"),
        (None, NODE, 1, "world id must be a str"),
        ("\ud800", NODE, 1, "world id is not valid Unicode"),
        (WORLD, NODE, True, "as_of_ms must be an int"),
        (WORLD, NODE, 1.0, "as_of_ms must be an int"),
        (WORLD, NODE, "1", "as_of_ms must be an int"),
        (WORLD, NODE, INT64_MAX + 1, "outside int64"),
        (WORLD, NODE, INT64_MIN - 1, "outside int64"),
    ],
)
async def test_bad_arguments_are_refused(
    storage: HistoryStorage, world: Any, node: Any, as_of_ms: Any, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        await storage.advance_as_of(world, node, as_of_ms)
    if "as_of_ms" not in match and "int64" not in match:
        with pytest.raises(ValueError, match=match):
            await storage.as_of_mark(world, node)
    assert await storage.as_of_mark(WORLD, NODE) is None  # nothing was recorded


async def test_int64_extremes_are_kept_exactly(storage: HistoryStorage) -> None:
    assert await storage.advance_as_of(WORLD, NODE, INT64_MIN) is None
    assert await storage.advance_as_of(WORLD, NODE, INT64_MAX) == INT64_MIN
    assert await storage.advance_as_of(WORLD, NODE, 0) == INT64_MAX
    assert await storage.as_of_mark(WORLD, NODE) == INT64_MAX


# -- model-based ------------------------------------------------------------------------------


@pytest.fixture
def sync_store(storage_dsn: str) -> Iterator[tuple[asyncio.Runner, HistoryStorage]]:
    """A store driven from a private event loop, for hypothesis (which cannot await)."""
    with asyncio.Runner() as runner:
        store = open_storage(storage_dsn)
        yield runner, store
        runner.run(store.close())


calls = st.lists(
    st.tuples(
        st.sampled_from(["", "w1", "w2"]),
        st.sampled_from(["a", "b"]),
        st.one_of(st.integers(-3, 3), st.integers(INT64_MIN, INT64_MAX)),
    ),
    max_size=25,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=calls)
def test_advances_match_a_dict_of_max_model(
    sync_store: tuple[asyncio.Runner, HistoryStorage],
    sequence: list[tuple[str, str, int]],
) -> None:
    runner, store = sync_store
    run = uuid.uuid4().hex  # fresh node ids per example: the store is shared
    model: dict[tuple[str, str], int] = {}
    for world, node, value in sequence:
        key = (world, f"{node}:{run}")
        assert runner.run(store.advance_as_of(*key, value)) == model.get(key)
        model[key] = max(model.get(key, value), value)
    for world in ("", "w1", "w2"):
        for node in ("a", "b"):
            key = (world, f"{node}:{run}")
            assert runner.run(store.as_of_mark(*key)) == model.get(key)


# -- concurrency ------------------------------------------------------------------------------


def assert_serializable(values: list[int], answers: list[int | None], final: int | None) -> None:
    """``answers[i]`` (the mark before the advance to ``values[i]``, all started on an empty
    mark) are those of some serial order of the advances. Grouped by answer (``None`` first,
    then ascending), a serial order exists exactly when: one first sighting; each answer is
    the largest value of the groups before it (a record set by one of them); and in each
    group at most one advance goes above the group's answer (that one comes last and sets
    the next record). A lost update shows as two advances above the same answer."""
    assert final == max(values)
    assert all(a is None or a <= final for a in answers)
    groups: dict[int | None, list[int]] = {}
    for value, answer in zip(values, answers, strict=True):
        groups.setdefault(answer, []).append(value)
    assert len(groups.get(None, [])) == 1, "exactly one first sighting"
    seen = list(groups.pop(None))
    for answer in sorted(groups, key=lambda a: a if a is not None else INT64_MIN):
        assert answer == max(seen), f"answer {answer} is not the mark left before it"
        above = [v for v in groups[answer] if v > answer]
        assert len(above) <= 1, f"{len(above)} advances from mark {answer}: a lost update"
        seen.extend(groups[answer])


async def test_concurrent_advances_on_one_key(storage: HistoryStorage) -> None:
    rng = random.Random(7)
    values = [rng.randrange(T0, T0 + 1_000) for _ in range(50)]
    answers = await asyncio.gather(*(storage.advance_as_of(WORLD, NODE, v) for v in values))
    assert_serializable(values, list(answers), await storage.as_of_mark(WORLD, NODE))


async def test_postgres_two_pools_race_on_one_key(postgres_dsn: str) -> None:
    rng = random.Random(11)
    values = [rng.randrange(T0, T0 + 1_000) for _ in range(50)]
    async with (
        PostgresStorage(postgres_dsn, max_size=5) as first,
        PostgresStorage(postgres_dsn, max_size=5) as second,
    ):
        stores = [first, second]
        answers = await asyncio.gather(
            *(stores[i % 2].advance_as_of(WORLD, NODE, v) for i, v in enumerate(values))
        )
        assert_serializable(values, list(answers), await first.as_of_mark(WORLD, NODE))
        assert await second.as_of_mark(WORLD, NODE) == max(values)


RACER = textwrap.dedent(
    """
    import asyncio, json, sys
    from qmtl.runtime.io.storage import PostgresStorage

    async def main() -> None:
        dsn, world, node, values = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        async with PostgresStorage(dsn, max_size=4) as store:
            answers = await asyncio.gather(*(store.advance_as_of(world, node, v) for v in values))
        print(json.dumps(answers))

    asyncio.run(main())
    """
)


async def test_postgres_processes_race_on_one_key(postgres_dsn: str) -> None:
    rng = random.Random(13)
    batches = [[rng.randrange(T0, T0 + 1_000) for _ in range(25)] for _ in range(2)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACER,
            postgres_dsn,
            WORLD,
            NODE,
            json.dumps(batch),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for batch in batches
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    answers: list[int | None] = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        answers.extend(json.loads(out))
    async with open_storage(postgres_dsn) as store:
        final = await store.as_of_mark(WORLD, NODE)
    assert_serializable([v for batch in batches for v in batch], answers, final)


# -- durability and read-only -----------------------------------------------------------------


async def test_marks_survive_a_restart(storage_dsn: str) -> None:
    async with open_storage(storage_dsn) as store:
        await store.advance_as_of(WORLD, NODE, T0)
        await store.advance_as_of("", OTHER, T0 + 1)
    async with open_storage(storage_dsn) as again:
        assert await again.as_of_mark(WORLD, NODE) == T0
        assert await again.advance_as_of("", OTHER, T0) == T0 + 1
    async with open_storage(storage_dsn, read_only=True) as reader:
        assert await reader.as_of_mark(WORLD, NODE) == T0
        with pytest.raises(StorageError, match=r"is open read-only: advance_as_of refused"):
            await reader.advance_as_of(WORLD, NODE, T0 + 10)
        assert await reader.as_of_mark(WORLD, NODE) == T0


async def test_read_only_duckdb_file_without_our_tables_has_no_marks(tmp_path: Path) -> None:
    dsn = f"duckdb:///{tmp_path / 'empty.duckdb'}"
    await sql(dsn, "SELECT 1")
    async with open_storage(dsn, read_only=True) as store:
        assert await store.as_of_mark(WORLD, NODE) is None
        with pytest.raises(StorageError, match="advance_as_of refused"):
            await store.advance_as_of(WORLD, NODE, 1)


async def test_read_only_postgres_without_our_tables_has_no_marks(postgres_dsn: str) -> None:
    async with open_storage(postgres_dsn, read_only=True) as store:
        assert await store.as_of_mark(WORLD, NODE) is None
    assert await tables_of(postgres_dsn) == set()


# -- stores from earlier schema versions ------------------------------------------------------


async def make_version(dsn: str, version: int) -> None:
    """A store as the release writing schema ``version`` (0 or 1) left it, with five bars."""
    await make_legacy(dsn)  # version 0: no qmtl_meta
    if version == 1:
        await sql(
            dsn,
            "CREATE TABLE qmtl_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "INSERT INTO qmtl_meta VALUES ('schema_version', '1'), ('package_version', '0.2.0')",
        )


@pytest.mark.parametrize("version", [0, 1])
async def test_an_older_store_migrates_and_keeps_marks(storage_dsn: str, version: int) -> None:
    await make_version(storage_dsn, version)
    assert MARKS_TABLE not in await tables_of(storage_dsn)
    async with open_storage(storage_dsn) as store:
        assert_bars_equal(await store.read_range(NODE, 0, 10_000), bars(range(0, 300, 60)))
        assert await store.as_of_mark(WORLD, NODE) is None
        assert await store.advance_as_of(WORLD, NODE, T0) is None
        assert await store.advance_as_of(WORLD, NODE, T0 + 1) == T0
    assert (await meta_of(storage_dsn))["schema_version"] == str(SCHEMA_VERSION) == "2"
    assert MARKS_TABLE in await tables_of(storage_dsn)
    async with open_storage(storage_dsn) as again:
        assert await again.as_of_mark(WORLD, NODE) == T0 + 1


@pytest.mark.parametrize("version", [0, 1])
async def test_read_only_open_of_an_older_store(storage_dsn: str, version: int) -> None:
    await make_version(storage_dsn, version)
    before = await tables_of(storage_dsn)
    async with open_storage(storage_dsn, read_only=True) as store:
        assert await store.as_of_mark(WORLD, NODE) is None  # no marks table: never recorded
        assert_bars_equal(await store.read_range(NODE, 0, 10_000), bars(range(0, 300, 60)))
        assert await store.read_ledger(NODE, 60) != []
        assert [s.node_id for s in await store.list_nodes()] == [NODE]
        with pytest.raises(StorageError, match="is open read-only: advance_as_of refused"):
            await store.advance_as_of(WORLD, NODE, T0)
    assert await tables_of(storage_dsn) == before  # nothing created or migrated


async def test_a_duckdb_file_with_only_a_marks_table_is_not_adopted(tmp_path: Path) -> None:
    dsn = f"duckdb:///{tmp_path / 'odd.duckdb'}"
    await sql(dsn, f"CREATE TABLE {MARKS_TABLE} (x INTEGER)")
    with pytest.raises(StorageError, match=f"it holds table {MARKS_TABLE} and no qmtl_meta"):
        await open_storage(dsn).as_of_mark(WORLD, NODE)
    assert await tables_of(dsn) == {MARKS_TABLE}
