"""The README's quick start, run exactly as written (its commands read from the README) in a
fresh directory against the simulator: fetch → list → coverage → export."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from qmtl.cli.main import main
from tests.cli_rig import simulator

README = Path(__file__).resolve().parent.parent / "README.md"
PROGRAM = ".venv/bin/qmtl-seamless"
README_URL = "http://127.0.0.1:8080"


def quick_start() -> list[list[str]]:
    """The commands of the README's quick-start block, as argv lists."""
    text = README.read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S)
    assert block is not None, "README has no quick-start block"
    commands = [
        shlex.split(line.rstrip("&").strip())
        for line in block.group(1).splitlines()
        if line.startswith(PROGRAM)
    ]
    return [argv[1:] for argv in commands]


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with simulator(tmp_path_factory.mktemp("sim")) as url:
        yield url


def test_the_quick_start_runs_as_written_in_a_fresh_directory(
    sim_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = quick_start()
    assert [argv[0] for argv in commands] == ["simulator", "fetch", "list", "coverage", "fetch"]
    monkeypatch.chdir(tmp_path)  # a fresh directory: the default store lands here
    outputs = []
    for argv in commands[1:]:  # the simulator is already serving (sim_url)
        argv = [sim_url if arg == README_URL else arg for arg in argv]
        assert main(argv) == 0, argv
        outputs.append(capsys.readouterr())
    fetched, listed, covered, exported = outputs
    store = tmp_path / ".qmtl" / "seamless.duckdb"
    assert f"store: {store}" in fetched.err and "44,640" in fetched.out
    assert "ohlcv:binance:BTC/USDT:1m" in listed.out and "44,640" in listed.out
    assert "100.00%" in covered.out and "MISSING" not in covered.out
    provenance = pq.read_schema(tmp_path / "btc.parquet").metadata
    assert provenance[b"node_id"] == b"ohlcv:binance:BTC/USDT:1m"
    assert json.loads(provenance[b"missing_ranges"]) == []
    assert provenance[b"dataset_fingerprint"].decode() in exported.out
