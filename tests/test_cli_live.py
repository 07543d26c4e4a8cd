"""``qmtl-seamless live NODE_ID`` as a user runs it, against the simulator in a subprocess:
closed bars printed as they arrive with their staleness, stored as they come (the next
``fetch`` serves them from the store), and the user's mistakes as one line and exit 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.history_coverage import compute_missing_ranges
from qmtl.testing.cluster import CLI
from tests.cli_rig import one_error_line, simulator

NODE = "ohlcv:binance:BTC/USDT:1s"


def _live(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "live", NODE, *args], capture_output=True, text=True, timeout=timeout
    )


def _events(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def _assert_stored(dsn: str, bars: list[dict[str, object]]) -> None:
    first, last = int(bars[0]["ts"]), int(bars[-1]["ts"])  # type: ignore[call-overload]
    async with open_storage(dsn) as store:
        assert compute_missing_ranges(await store.read_ledger(NODE, 1), first, last + 1, 1) == []
        frame = await store.read_range(NODE, first, last + 1)
    assert frame["ts"].tolist() == [b["ts"] for b in bars]
    assert frame["close"].tolist() == [b["close"] for b in bars]


@pytest.mark.parametrize("feed", ["polling", "websocket"])
async def test_live_prints_and_stores_closed_bars_in_order(tmp_path: Path, feed: str) -> None:
    dsn = f"duckdb:///{tmp_path / 'live.duckdb'}"
    with simulator(tmp_path, "seed: 3\nsymbols: [BTC/USDT]\nws_push_interval_ms: 50\n") as url:
        extra = (
            ["--ws-url", url.replace("http://", "ws://") + "/stream/ws"]
            if feed == "websocket"
            else []
        )
        done = _live("--exchange-url", url, "--dsn", dsn, "--bars", "4", "--json", *extra)
    assert done.returncode == 0, done.stderr
    events = _events(done.stdout)
    bars = [e for e in events if e["event"] == "bar"]
    assert [e["event"] for e in events][-1] == "stopped"
    assert events[-1] == {"event": "stopped", "bars": 4, "reason": "bars"}
    ts = [int(b["ts"]) for b in bars]  # type: ignore[call-overload]
    assert len(ts) == 4 and ts == list(range(ts[0], ts[0] + 4))  # closed, once, in order
    assert all(0 <= float(b["staleness_s"]) < 2 for b in bars), bars  # type: ignore[arg-type]
    assert f"live: {NODE} (" in done.stderr and "store: " in done.stderr
    await _assert_stored(dsn, bars)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bars", "0"], "--bars must be >= 1"),
        (["--seconds", "nan"], "--seconds must be a finite number > 0"),
        (["--ws-url", "http://127.0.0.1:1/stream/ws"], "--ws-url must be ws:// or wss://"),
    ],
)
def test_live_user_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    done = _live("--dsn", f"duckdb:///{tmp_path / 'x.duckdb'}", *args)
    assert done.returncode == 2, done.stderr
    assert needle in one_error_line(done.stderr, "live")


def test_live_stops_after_seconds_with_exit_0(tmp_path: Path) -> None:
    with simulator(tmp_path) as url:
        done = _live(
            "--exchange-url", url, "--dsn", f"duckdb:///{tmp_path / 'l.duckdb'}",
            "--seconds", "2.5",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("stopped (seconds): ") and "closed bars" in last
