"""``qmtl-seamless coordinator inspect`` and ``coordinator release`` as an operator runs them,
against a real coordinator: ``coordinator serve`` in a subprocess on SQLite and PostgreSQL for
the runbook "a stuck lease" end to end, an in-process one (real port, real SQLite file) for
the error paths. ``main`` runs in a thread: it runs its own event loop, as the console script
does, while the test's loop serves and claims."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from qmtl.cli.main import main
from qmtl.runtime.io.coordinator_client import DistributedBackfillCoordinator
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.services.coordinator import CoordinatorServer, SQLiteLeaseStore, run_coordinator
from qmtl.testing.cluster import coordinator_process
from tests.cli_rig import dead_url, one_error_line

NODE = "ohlcv:binance:BTC/USDT:1m"
KEY = f"{NODE}:60:0:3600::"
TOKEN = "t0ken"


@pytest.fixture(autouse=True)
def _no_coordinator_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("QMTL_SEAMLESS_COORDINATOR_URL", "QMTL_SEAMLESS_COORDINATOR_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("QMTL_LOG_FORMAT", raising=False)


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, ["coordinator", *argv])


async def post(url: str, action: str, body: dict[str, Any], token: str | None = TOKEN) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(f"{url}/v1/leases/{action}", json=body) as response,
    ):
        return response.status, await response.json()


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[CoordinatorServer]:
    """An in-process coordinator without auth on a SQLite file, holding a lease on KEY."""
    metrics = SeamlessMetrics(CollectorRegistry())
    store = SQLiteLeaseStore(tmp_path / "leases.db")
    async with run_coordinator(store, metrics=metrics, coordinator_id="c1") as server:
        status, _ = await post(server.base_url, "claim", {"key": KEY, "lease_ms": 60_000}, None)
        assert status == 200
        yield server


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_stuck_lease_runbook_end_to_end(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if backend == "sqlite":
        dsn = f"sqlite:///{tmp_path / 'leases.db'}"
    else:
        dsn = request.getfixturevalue("postgres_dsn")
    env = {"QMTL_SEAMLESS_COORDINATOR_TOKEN": TOKEN}
    async with coordinator_process(dsn, env=env) as url:
        status, claimed = await post(url, "claim", {"key": KEY, "lease_ms": 600_000})
        assert status == 200
        stuck = claimed["lease"]
        await post(url, "claim", {"key": f"{NODE}:60:3600:7200::", "lease_ms": 600_000})

        monkeypatch.setenv("QMTL_SEAMLESS_COORDINATOR_TOKEN", TOKEN)
        assert await cli("inspect", "--url", url, "--prefix", KEY, "--json") == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["coordinator"] == url and shown["truncated"] is False
        (lease,) = shown["leases"]
        assert (lease["key"], lease["state"]) == (KEY, "held")
        assert lease["lease_until_ms"] == stuck["lease_until_ms"]
        assert stuck["token"] not in json.dumps(shown)

        assert await cli("inspect", "--url", url) == 0  # the table: both leases, one line each
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["key", "state", "held_by", "lease_until", "updated", "reason"]
        assert table[1].split()[:3] == [KEY, "held", lease["held_by"]]
        assert len(table) == 3 and table[1].split()[3].endswith("Z")

        argv = ["release", KEY, "--held-by", lease["held_by"], "--reason", "stuck", "--url", url]
        assert await cli(*argv) == 0
        out, err = capsys.readouterr()
        assert out == f"released {KEY} (was held by {lease['held_by']})\n" and err == ""

        # A worker claims the window at once; the stuck holder can no longer complete it.
        async with DistributedBackfillCoordinator(url, token=TOKEN) as worker:
            taken = await worker.claim(KEY, 60_000)
        assert taken is not None and taken.token != stuck["token"]
        status, body = await post(url, "complete", {"key": KEY, "token": stuck["token"]})
        assert status == 409 and body["held_by"] != lease["held_by"]

        # Released twice: the operator's view is stale, the new lease is left alone.
        assert await cli(*argv) == 2
        line = one_error_line(capsys.readouterr().err, "coordinator")
        assert f"lease {KEY} is held by {body['held_by']}" in line
        assert await cli("inspect", "--url", url, "--prefix", KEY, "--json") == 0
        (now,) = json.loads(capsys.readouterr().out)["leases"]
        assert (now["state"], now["held_by"]) == ("held", body["held_by"])


async def test_the_url_comes_from_the_config_file_or_the_environment(
    coordinator: CoordinatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = coordinator.base_url
    config = tmp_path / "c.yaml"
    config.write_text(f"environment: {{coordinator_url: '{url}'}}\n")
    assert await cli("inspect", "--config", str(config), "--json") == 0
    assert json.loads(capsys.readouterr().out)["coordinator"] == url

    monkeypatch.setenv("QMTL_SEAMLESS_COORDINATOR_URL", url)
    assert await cli("inspect", "--json") == 0
    assert json.loads(capsys.readouterr().out)["leases"][0]["key"] == KEY

    monkeypatch.setenv("QMTL_SEAMLESS_COORDINATOR_URL", dead_url())
    assert await cli("inspect", "--url", url, "--limit", "1") == 0  # --url wins
    assert KEY in capsys.readouterr().out


async def test_inspect_says_when_more_leases_match(
    coordinator: CoordinatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = coordinator.base_url
    await post(url, "claim", {"key": f"{NODE}:60:3600:7200::", "lease_ms": 1000}, None)
    assert await cli("inspect", "--url", url, "--limit", "1", "--json") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["truncated"] is True and "more match" in err
    assert await cli("inspect", "--url", url, "--prefix", "ohlcv:okx") == 0
    assert capsys.readouterr().out.startswith("no leases under 'ohlcv:okx'")


async def test_no_url_is_a_user_mistake(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("inspect",), ("release", KEY, "--held-by", "0" * 16, "--reason", "x")):
        assert await cli(*argv) == 2
        line = one_error_line(capsys.readouterr().err, "coordinator")
        assert "pass --url" in line and "QMTL_SEAMLESS_COORDINATOR_URL" in line


async def test_an_unreachable_or_failing_coordinator_is_the_environment(
    coordinator: CoordinatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("inspect", "--url", dead_url()) == 3
    assert "unreachable" in one_error_line(capsys.readouterr().err, "coordinator")
    await coordinator.store.close()  # the coordinator answers, its lease store fails: 503
    argv = ["release", KEY, "--held-by", "0" * 16, "--reason", "x", "--url"]
    for command in (["inspect", "--url"], argv):
        assert await cli(*command, coordinator.base_url) == 3
        # The in-process coordinator's own warning shares this stderr; the CLI's is one line.
        err = capsys.readouterr().err.splitlines()
        cli_err = "\n".join(x for x in err if not x.startswith("warning: lease store failed"))
        assert "lease store unavailable" in one_error_line(cli_err, "coordinator")


async def test_a_coordinator_with_a_token_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = SeamlessMetrics(CollectorRegistry())
    store = SQLiteLeaseStore(tmp_path / "leases.db")
    async with run_coordinator(store, metrics=metrics, token=TOKEN) as server:
        assert await cli("inspect", "--url", server.base_url) == 2
        line = one_error_line(capsys.readouterr().err, "coordinator")
        assert line.endswith("the coordinator needs a token: set QMTL_SEAMLESS_COORDINATOR_TOKEN")
        monkeypatch.setenv("QMTL_SEAMLESS_COORDINATOR_TOKEN", "wrong")
        assert await cli("inspect", "--url", server.base_url) == 2
        assert "refused the token" in one_error_line(capsys.readouterr().err, "coordinator")
        monkeypatch.setenv("QMTL_SEAMLESS_COORDINATOR_TOKEN", TOKEN)
        assert await cli("inspect", "--url", server.base_url) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["release", "x:y"], "must look like"),
        (["release", f"{NODE}:60:10:0::"], "after start"),
        (["release", f"{NODE}:60:3600:7200::"], f"no lease {NODE}:60:3600:7200::"),
        (["release", KEY, "--reason", "   "], "reason must be non-blank"),
        (["release", KEY, "--held-by", "nothex"], "held_by must be 16"),
        (["release", KEY, "--held-by", "0123456789abcdef"], "claimed again since you looked"),
        (["inspect", "--limit", "0"], "--limit must be within 1..1000"),
        (["inspect", "--limit", "1001"], "--limit must be within 1..1000"),
        (["inspect", "--url", "ftp://x"], "--url must be http:// or https://"),
        (["inspect", "--url", "{url}/not-here"], "is it the coordinator's URL"),
    ],
)
async def test_user_mistakes_exit_2_with_one_line(
    argv: list[str],
    message: str,
    coordinator: CoordinatorServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = coordinator.base_url
    argv = [a.replace("{url}", url) for a in argv]
    if argv[0] == "release":
        argv += ["--held-by", "0" * 16] if "--held-by" not in argv else []
        argv += ["--reason", "stuck"] if "--reason" not in argv else []
    if "--url" not in argv:
        argv += ["--url", url]
    assert await cli(*argv) == 2
    assert message in one_error_line(capsys.readouterr().err, "coordinator")


async def test_a_lease_not_held_is_not_released(
    coordinator: CoordinatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = coordinator.base_url
    assert await cli("inspect", "--url", url, "--json") == 0
    held_by = json.loads(capsys.readouterr().out)["leases"][0]["held_by"]
    argv = ["release", KEY, "--held-by", held_by, "--reason", "stuck", "--url", url]
    assert await cli(*argv) == 0
    capsys.readouterr()
    assert await cli(*argv) == 2
    line = one_error_line(capsys.readouterr().err, "coordinator")
    assert f"lease {KEY} is not held" in line and held_by in line
    assert await cli("inspect", "--url", url) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split()[1] == "failed" and row.endswith("released by operator: stuck")
