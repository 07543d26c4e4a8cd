"""``qmtl-seamless list`` as a user runs it, on a real DuckDB file filled through the storage
API: the table (at 80 columns too), ``--json``, where the store comes from, and mistakes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from qmtl.cli._common import console
from qmtl.cli.list_cmd import node_table
from qmtl.cli.main import main
from qmtl.runtime.io.storage import LedgerUpdate, NodeSummary, open_storage
from qmtl.runtime.sdk.history_coverage import Range
from tests.test_storage import bars

BTC = "ohlcv:binance:BTC/USDT:1m"
ETH = "ohlcv:binance:ETH/USDT:USDT:1h"
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY, YEAR = 86_400, 365 * 86_400
FETCHED = T0 + 3 * DAY + 6 * 3600 + 1.8  # 2024-01-04T06:00:01.800Z


async def fill(path: Path) -> None:
    """BTC: 3 days of 1m bars (4,320), 3 h known-empty after them, a gap, one more hour two
    years later. ETH: a ledger that knows 2 days are empty, no bars."""
    async with open_storage(f"duckdb:///{path}") as store:
        days = Range(T0, T0 + 3 * DAY)
        halt = Range(days.end, days.end + 3 * 3600)
        update = LedgerUpdate(interval=60, data=(days,), empty=(halt,), fetched_at=FETCHED)
        await store.write_bars(BTC, bars(range(days.start, days.end, 60)), ledger_update=update)
        later = Range(T0 + 2 * YEAR, T0 + 2 * YEAR + 3600)
        update = LedgerUpdate(interval=60, data=(later,), fetched_at=later.end + DAY)
        await store.write_bars(BTC, bars(range(later.start, later.end, 60)), ledger_update=update)
        empty = LedgerUpdate(interval=3600, empty=(Range(T0, T0 + 2 * DAY),), fetched_at=FETCHED)
        await store.update_ledger(ETH, empty)


#: What the store above holds, for the assertions.
BTC_STORED = "4,380"  # 4,320 + 60
BTC_MISSING = f"{(2 * YEAR - 3 * DAY - 3 * 3600) // 60:,}"  # interior gap: 1,046,700
BTC_LAST = "2025-12-31 00:59"  # T0 + 2 years (2024 is a leap year) + 59 min


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    path = tmp_path / "bars.duckdb"
    asyncio.run(fill(path))
    return path


def node_column(out: str) -> str:
    """The node ids of a printed table, folded pieces joined back (the column's width is
    where the ``first bar`` header starts)."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "first bar" in line)
    width = lines[header].index("first bar")
    return "".join(line[:width].strip() for line in lines[header + 2 :])


def test_list_prints_one_row_per_node(
    store_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "_width", 120)
    assert main(["list", "--dsn", f"duckdb:///{store_file}"]) == 0  # missing bars: still 0
    out, err = capsys.readouterr()
    assert err == f"store: {store_file}\n"
    btc, eth = (line.split() for line in out.splitlines() if line.startswith("ohlcv:"))
    assert btc == [BTC, "2024-01-01", "00:00", *BTC_LAST.split(), BTC_STORED, "180",
                   BTC_MISSING, "2026-01-01", "01:00"]  # fmt: skip
    assert eth == [ETH, "-", "-", "0", "48", "0", "2024-01-04", "06:00"]
    assert "times UTC" in out


def test_list_json(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--dsn", f"duckdb:///{store_file}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["store"] == str(store_file)
    btc, eth = report["nodes"]
    assert btc == {
        "node_id": BTC,
        "interval": 60,
        "first_bar": T0,
        "first_bar_iso": "2024-01-01T00:00:00Z",
        "last_bar": T0 + 2 * YEAR + 3540,
        "last_bar_iso": "2025-12-31T00:59:00Z",
        "stored_bars": 4_380,
        "known_empty_bars": 180,
        "missing_bars": 1_046_700,
        "last_fetched_at": T0 + 2 * YEAR + 3600 + DAY,
        "last_fetched_at_iso": "2026-01-01T01:00:00Z",
    }
    assert (eth["node_id"], eth["interval"], eth["stored_bars"]) == (ETH, 3600, 0)
    assert (eth["first_bar"], eth["first_bar_iso"], eth["known_empty_bars"]) == (None, None, 48)
    assert eth["last_fetched_at_iso"] == "2024-01-04T06:00:01.800Z"


def test_the_store_comes_from_config_unless_dsn_says_otherwise(
    store_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "seamless.yaml"
    config.write_text(f'seamless: {{storage: {{dsn: "duckdb:///{store_file}"}}}}\n')
    assert main(["list", "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["store"] == str(store_file) and len(report["nodes"]) == 2
    other = tmp_path / "other.duckdb"
    asyncio.run(_create_empty(other))
    assert main(["list", "--config", str(config), "--dsn", f"duckdb:///{other}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"store": str(other), "nodes": []}
    assert main(["list", "--config", str(config), "--dsn", f"duckdb:///{other}"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("no nodes stored yet\n", f"store: {other}\n")


async def _create_empty(path: Path) -> None:
    async with open_storage(f"duckdb:///{path}"):
        pass


def test_a_missing_store_file_is_a_mistake_and_stays_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo" / "bars.duckdb"
    for extra in ([], ["--json"]):
        assert main(["list", "--dsn", f"duckdb:///{missing}", *extra]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith(f"qmtl-seamless list: error: no store at {missing}")
        assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no file, no directory


def test_80_columns_keep_every_digit_and_date(
    store_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "_width", 80)
    assert main(["list", "--dsn", f"duckdb:///{store_file}"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    words = out.split()
    for number in (BTC_STORED, "180", BTC_MISSING, "48"):
        assert number in words
    for date in ("2024-01-01", "2025-12-31", "2026-01-01", "2024-01-04"):
        assert date in words
    for time in ("00:00", "00:59", "01:00", "06:00"):
        assert time in words
    assert "…" not in out
    assert node_column(out) == BTC + ETH  # folded, never cut


@pytest.mark.parametrize("width", [40, 60, 80, 100, 160])
def test_no_width_cuts_a_number_date_or_node_id(
    width: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "_width", width)
    hostile = "legacy [bold]red[/bold]\tx" + "y" * 60
    nodes = [
        NodeSummary(node_id=hostile, interval=60, first_bar=T0, last_bar=T0 + 9 * YEAR,
                    stored_bars=123_456_789_012, missing_bars=98_765_432_109,
                    known_empty_bars=5_555_555_555, last_fetched_at=T0 + 9 * YEAR + 0.5),
        NodeSummary(node_id="../x", interval=300, stored_bars=0, known_empty_bars=1),
    ]  # fmt: skip
    console.print(node_table(nodes, width=console.width), crop=False)
    out = capsys.readouterr().out
    words = out.split()
    for number in ("123,456,789,012", "98,765,432,109", "5,555,555,555", "1"):
        assert number in words
    assert "…" not in out
    shown = r"legacy [bold]red[/bold]\tx" + "y" * 60 + " (1m)" + "../x (5m)"
    assert node_column(out).replace(" ", "") == shown.replace(" ", "")
    assert {"2024-01-01", "2032-12-29", "00:00"} <= set(words)
