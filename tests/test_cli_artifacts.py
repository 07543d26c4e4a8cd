"""``qmtl-seamless artifacts`` and the demo's artifacts as a user runs them: the demo into a
temporary directory (its in-process simulator), ``fetch`` against the simulator in a
subprocess, the same files on a real S3-compatible server, and plain DuckDB reading the
Parquet files without qmtl."""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import duckdb
import pytest

from qmtl.cli._common import console
from qmtl.cli.main import main
from qmtl.runtime.io import EnhancedQuestDBProvider
from qmtl.runtime.sdk.timestamps import parse_as_of
from tests.cli_rig import one_error_line, simulator
from tests.conftest import S3Bucket

BTC = "ohlcv:binance:BTC/USDT:1m"
NODES = {BTC, "ohlcv:binance:ETH/USDT:1m", "ohlcv:binance:SOL/USDT:1m"}
#: What a listing must keep of each artifact the demo reported.
KEYS = ("node_id", "dataset_fingerprint", "as_of", "rows", "data_uri", "manifest_uri")


def run_json(argv: list[str], code: int = 0) -> Any:
    """``main(argv)`` with its stdout parsed as JSON (module fixtures have no capsys)."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(argv) == code
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The demo run once into a directory of its own; its JSON report."""
    directory = tmp_path_factory.mktemp("demo")
    return directory, run_json(["demo", "--days", "1", "--dir", str(directory), "--json"])


def duckdb_count(command: str) -> int:
    """Run the SQL of a printed ``duckdb -c "..."`` one-liner with the duckdb module."""
    program, flag, sql = shlex.split(command)
    assert (program, flag) == ("duckdb", "-c")
    row = duckdb.sql(sql).fetchone()
    assert row is not None
    return int(row[0])


def doc_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of docs/artifacts.md."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "artifacts.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def manifests(root: Path) -> list[Path]:
    return sorted(root.glob("_manifests/*/*.json"))


def unshortened(out: str) -> str:
    """``out`` without the short fingerprints (``sha256:abcd1234…``): any other ``…`` would
    be a cut cell."""
    return re.sub(r"sha256:[0-9a-f]{8}…", "", out)


# -- the demo ---------------------------------------------------------------------------------


def test_the_demo_publishes_what_it_served_once_and_duckdb_reads_it(
    demo: tuple[Path, dict[str, Any]],
) -> None:
    directory, report = demo
    assert report["artifact_store"] == f"file://{directory / 'artifacts'}"
    artifacts = report["artifacts"]
    assert {a["node_id"] for a in artifacts} == NODES
    # the second pass made no request and published nothing: every manifest is listed
    assert report["klines_requests_second_pass"] == 0
    assert report["artifacts_published_second_pass"] == 0
    assert len(manifests(directory / "artifacts")) == len(artifacts)
    nodes = {n["node_id"]: n for n in report["nodes"]}
    for node_id, node in nodes.items():
        mine = [a for a in artifacts if a["node_id"] == node_id]
        # the window ends before the stabilization cut: every served bar is published
        assert sum(a["rows"] for a in mine) == node["data_bars"] == node["rows_served"]
        (only,) = mine  # one contiguous, vouched-for run per node
        assert only["dataset_fingerprint"] == node["dataset_fingerprint"]
        assert Path(only["data_uri"].removeprefix("file://")).is_file()
    stored = sum(n["data_bars"] for n in report["nodes"])
    assert stored > 0
    assert duckdb_count(report["duckdb_command"]) == sum(a["rows"] for a in artifacts) == stored


def test_the_human_demo_report_lists_the_artifacts_and_a_working_duckdb_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "_width", 80)
    assert main(["demo", "--days", "1", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "second pass: 0 exchange requests, 0 new artifacts, fingerprints identical" in out
    assert "artifacts (times UTC)" in out
    words = out.split()
    for path in manifests(tmp_path / "artifacts"):
        manifest = json.loads(path.read_text())
        assert manifest["as_of"] in words
        assert f"{manifest['row_count']:,}" in words
        assert manifest["dataset_fingerprint"][:15] + "…" in words
    assert "…" not in unshortened(out)
    assert f"qmtl-seamless artifacts list --store file://{tmp_path / 'artifacts'}" in out
    (line,) = [line.strip() for line in out.splitlines() if line.strip().startswith("duckdb -c")]
    assert duckdb_count(line) == sum(
        json.loads(p.read_text())["row_count"] for p in manifests(tmp_path / "artifacts")
    )


# -- list, show, verify -------------------------------------------------------------------------


def test_list_at_80_columns_keeps_every_number_and_instant(
    demo: tuple[Path, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory, report = demo
    monkeypatch.setattr(console, "_width", 80)
    assert main(["artifacts", "list", "--store", f"file://{directory}/artifacts"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == f"store: file://{directory}/artifacts"
    out = captured.out
    assert max(len(line) for line in out.splitlines()) <= 80
    words = out.split()
    for artifact in report["artifacts"]:
        assert artifact["as_of"] in words
        assert f"{artifact['rows']:,}" in words
        assert artifact["dataset_fingerprint"][:15] + "…" in words
        day, minute = artifact["start_iso"][:10], artifact["start_iso"][11:16]
        assert day in words and minute in words
    assert "publication" in words
    assert "…" not in unshortened(out)


def test_list_json_as_of_and_one_node(
    demo: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, report = demo
    store = ["--store", str(directory / "artifacts")]  # a plain path works too
    listed = run_json(["artifacts", "list", *store, "--json"])
    assert listed["store"] == f"file://{directory}/artifacts" and listed["as_of"] is None

    def project(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(tuple(a[k] for k in KEYS) for a in items)

    assert project(listed["artifacts"]) == project(report["artifacts"])
    assert all(a["dataset_fingerprint"].startswith("sha256:") for a in listed["artifacts"])
    assert len(listed["artifacts"][0]["dataset_fingerprint"]) == 71  # whole in JSON

    one = run_json(["artifacts", "list", BTC, *store, "--json"])
    assert {a["node_id"] for a in one["artifacts"]} == {BTC}

    first = min(a["as_of"] for a in report["artifacts"])
    millis = parse_as_of(first)
    for written in (first, str(millis)):  # as printed, or epoch milliseconds
        pinned = run_json(["artifacts", "list", *store, "--as-of", written, "--json"])
        assert pinned["as_of"] == first
        assert [a["as_of"] for a in pinned["artifacts"]] == [first]
    assert main(["artifacts", "list", *store, "--as-of", str(millis - 1)]) == 0
    assert "no artifacts as of" in capsys.readouterr().out


def test_show_prints_the_manifests(
    demo: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, report = demo
    store = ["--store", f"file://{directory}/artifacts"]
    (artifact,) = [a for a in report["artifacts"] if a["node_id"] == BTC]
    assert main(["artifacts", "show", BTC, *store]) == 0
    out = capsys.readouterr().out
    for fact in (artifact["as_of"], artifact["dataset_fingerprint"], artifact["data_uri"]):
        assert fact in out.split()
    assert f"rows {artifact['rows']:,} (of 1,440 bars in the range)" in " ".join(out.split())

    shown = run_json(["artifacts", "show", BTC, *store, "--json"])
    (manifest,) = shown["manifests"]
    assert manifest["dataset_fingerprint"] == artifact["dataset_fingerprint"]
    assert manifest["storage"]["data_uri"] == artifact["data_uri"]

    by_uri = run_json(["artifacts", "show", "--manifest", artifact["manifest_uri"], "--json"])
    assert by_uri["manifests"] == [manifest]  # a URI names its own store
    key = manifest["storage"]["manifest_uri"].split("/artifacts/", 1)[1]
    by_key = run_json(["artifacts", "show", "--manifest", key, *store, "--json"])
    assert by_key["manifests"] == [manifest]

    early = run_json(["artifacts", "show", BTC, *store, "--as-of", "2020-01-01", "--json"])
    assert early["manifests"] == []


def test_verify_passes_then_names_the_artifact_with_a_flipped_byte(
    demo: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, report = demo
    assert main(["artifacts", "verify", "--store", f"file://{directory}/artifacts"]) == 0
    assert capsys.readouterr().out.strip() == "verified 3 artifacts of 3 nodes: ok"

    copy = tmp_path / "artifacts"
    shutil.copytree(directory / "artifacts", copy)
    (victim,) = [a for a in report["artifacts"] if a["node_id"] == BTC]
    data = copy / victim["data_uri"].split("/artifacts/", 1)[1]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))

    assert main(["artifacts", "verify", "--store", str(copy)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("verified 3 artifacts of 3 nodes: 1 bad")
    assert lines[:-1] and all(line.startswith(f"BAD {BTC} file://{data}: ") for line in lines[:-1])
    assert any("sha256" in line for line in lines[:-1])

    result = run_json(["artifacts", "verify", "--store", str(copy), "--json"], code=1)
    assert result["ok"] is False and result["artifacts"] == 3 and result["nodes"] == 3
    assert {p["data_uri"] for p in result["problems"]} == {f"file://{data}"}
    clean = run_json(
        ["artifacts", "verify", BTC, "--store", str(directory / "artifacts"), "--json"]
    )
    assert clean["ok"] is True and clean["artifacts"] == 1 and clean["problems"] == []


# -- compaction, through the user's fetch commands ----------------------------------------------


def test_compaction_publishes_once_and_reads_serve_the_same_bars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with simulator(tmp_path) as url:
        config = tmp_path / "seamless.yaml"
        config.write_text(
            "seamless:\n"
            f"  storage: {{dsn: 'duckdb:///{tmp_path / 'hot.duckdb'}'}}\n"
            f"  artifact: {{object_store_uri: 'file://{tmp_path / 'art'}', "
            "publish_optional: true}\n"
            "exchanges:\n"
            f"  binance: {{symbols: [BTC/USDT], timeframes: [1m], urls: {{rest: '{url}'}}}}\n"
        )
        with_config = ["--config", str(config)]
        for start, end in (("2024-01-01", "2024-01-02"), ("2024-01-02", "2024-01-03")):
            fetched = run_json(
                ["fetch", BTC, "--start", start, "--end", end, *with_config, "--json"]
            )
            assert fetched["rows"] == 1440 and fetched["as_of"] is not None

    small = run_json(["artifacts", "list", BTC, *with_config, "--json"])["artifacts"]
    assert [a["kind"] for a in small] == ["publication", "publication"]
    newest = small[-1]["as_of"]
    provider = EnhancedQuestDBProvider.from_config(str(config))
    with provider:
        before = provider.fetch_sync("2024-01-01", "2024-01-03", node_id=BTC, as_of=newest)
    assert len(before.frame) == 2880 and len(before.metadata.artifacts) == 2

    assert main(["artifacts", "compact", BTC, *with_config]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compacted 2024-01: [2024-01-01T00:00:00Z, 2024-01-03T00:00:00Z) 2,880")
    assert main(["artifacts", "compact", BTC, *with_config]) == 0
    assert capsys.readouterr().out.strip() == f"{BTC}: already compact (3 artifacts)"
    again = run_json(["artifacts", "compact", BTC, *with_config, "--json"])
    assert again["published"] == [] and again["artifacts_before"] == 3

    listed = run_json(["artifacts", "list", BTC, *with_config, "--json"])["artifacts"]
    compaction = listed[-1]
    assert compaction["kind"] == "compaction" and compaction["rows"] == 2880
    assert "/compacted/" in compaction["data_uri"]
    assert main(["artifacts", "verify", *with_config]) == 0
    assert capsys.readouterr().out.strip() == "verified 3 artifacts of 1 nodes: ok"

    provider = EnhancedQuestDBProvider.from_config(str(config))
    with provider:
        after = provider.fetch_sync(
            "2024-01-01", "2024-01-03", node_id=BTC, as_of=compaction["as_of"]
        )
        old = provider.fetch_sync("2024-01-01", "2024-01-03", node_id=BTC, as_of=newest)
    assert after.frame.equals(before.frame)
    assert after.metadata.dataset_fingerprint == before.metadata.dataset_fingerprint
    assert after.metadata.artifacts == (compaction["data_uri"],)
    assert old.metadata.artifacts == before.metadata.artifacts  # the past stays as it was

    # the documented DuckDB and pyarrow reads count each bar once, compacted copies aside
    (sql,) = doc_blocks("sql")
    count, per_series = (s for s in sql.split(";") if s.strip())
    here = str(tmp_path / "art")
    assert duckdb.sql(count.replace(".qmtl/artifacts", here)).fetchone() == (2880,)
    assert duckdb.sql(per_series.replace(".qmtl/artifacts", here)).fetchall()[0][:3] == (
        "BTC/USDT", "1m", 2880,
    )  # fmt: skip
    (arrow,) = [code for code in doc_blocks("python") if "pyarrow" in code]
    scope: dict[str, Any] = {}
    exec(arrow.replace(".qmtl/artifacts", here), scope)
    assert sorted(scope["btc"]["ts"]) == after.frame["ts"].tolist()


# -- S3 -------------------------------------------------------------------------------------------


def test_the_same_artifacts_on_s3(
    demo: tuple[Path, dict[str, Any]],
    s3_bucket: S3Bucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    directory, report = demo
    client = boto3.client(
        "s3",
        endpoint_url=s3_bucket.endpoint_url,
        region_name=s3_bucket.region,
        aws_access_key_id=s3_bucket.access_key,
        aws_secret_access_key=s3_bucket.secret_key,
    )
    root = directory / "artifacts"
    for path in root.rglob("*"):
        if path.is_file():
            key = f"lake/{path.relative_to(root).as_posix()}"
            client.put_object(Bucket=s3_bucket.bucket, Key=key, Body=path.read_bytes())
    client.close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.secret_key)
    monkeypatch.setenv("AWS_REGION", s3_bucket.region)
    config = tmp_path / "seamless.yaml"  # the endpoint from the file, the store from --store
    config.write_text(f"seamless:\n  artifact: {{s3_endpoint_url: '{s3_bucket.endpoint_url}'}}\n")
    store = ["--config", str(config), "--store", f"{s3_bucket.uri}/lake"]
    listed = run_json(["artifacts", "list", *store, "--json"])
    assert listed["store"] == f"{s3_bucket.uri}/lake"
    fingerprints = sorted(a["dataset_fingerprint"] for a in listed["artifacts"])
    assert fingerprints == sorted(a["dataset_fingerprint"] for a in report["artifacts"])
    verified = run_json(["artifacts", "verify", *store, "--json"])
    assert verified["ok"] is True and verified["artifacts"] == 3


# -- mistakes and empty stores --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "--as-of", "yesterday"], "--as-of: 'yesterday' is not a date or time"),
        (["list", "--store", "ftp://x"], "--store: unsupported store 'ftp://x'"),
        (["list", "--store", "s3://x"], "--store: 's3://x' needs a valid bucket"),
        (["list", "ohlcv:binance"], "ohlcv:binance"),
        (["show"], "give NODE_ID or --manifest"),
        (["show", "--manifest", "nope.json"], "--manifest: 'nope.json' is neither"),
        (["show", "--manifest", "_manifests/x/y.json"], "--manifest: no manifest"),
        (["compact", BTC, "--period", "week"], "invalid choice: 'week'"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = [] if "--store" in argv else ["--store", str(tmp_path / "none")]
    assert main(["artifacts", *argv, *store]) == 2
    line = one_error_line(capsys.readouterr().err, f"artifacts {argv[0]}")
    assert message in line
    assert not (tmp_path / "none").exists()


def test_the_demo_checks_its_artifact_store_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--artifacts", "ftp://x"]) == 2
    assert "--artifacts: unsupported store 'ftp://x'" in one_error_line(
        capsys.readouterr().err, "demo"
    )


def test_reading_a_store_that_does_not_exist_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing" / "here"
    store = ["--store", f"file://{missing}"]
    assert main(["artifacts", "list", *store]) == 0
    assert capsys.readouterr().out.strip() == "no artifacts yet"
    assert main(["artifacts", "show", BTC, *store]) == 0
    assert capsys.readouterr().out.strip() == f"{BTC}: no artifacts yet"
    assert main(["artifacts", "verify", *store]) == 0
    assert capsys.readouterr().out.strip() == "no artifacts yet: nothing to verify"
    assert main(["artifacts", "compact", BTC, *store]) == 0
    assert capsys.readouterr().out.strip() == f"{BTC}: no artifacts yet"
    assert not (tmp_path / "nothing").exists()
    assert main(["artifacts"]) == 2  # a group without its sub-command: help, exit 2
