"""Fetches publish what they served and time-travel to any ``as_of`` (real simulator, real
ccxt, real DuckDB, real Parquet files read back by plain DuckDB)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pytest
from prometheus_client import CollectorRegistry

from qmtl.runtime.io import EnhancedQuestDBProvider
from qmtl.runtime.sdk import Range, SeamlessCoverageError, SeamlessDomainPolicyError
from qmtl.runtime.sdk.config import load_config
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.testing.servers import free_port
from tests.cli_rig import simulator

NODE = "ohlcv:binance:BTC/USDT:1m"
JAN1, JAN2, JAN3 = 1_704_067_200, 1_704_153_600, 1_704_240_000


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with simulator(tmp_path_factory.mktemp("sim")) as url:
        yield url


def provider_for(
    sim_url: str,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    metrics: SeamlessMetrics | None = None,
    domains: dict[str, Any] | None = None,
    **artifact: Any,
) -> EnhancedQuestDBProvider:
    config = load_config(
        {
            "seamless": {
                "storage": {"dsn": f"duckdb:///{tmp_path / 'hot.duckdb'}"},
                "artifact": {"object_store_uri": f"file://{tmp_path / 'art'}"} | artifact,
            },
            "exchanges": {"binance": {"symbols": ["BTC/USDT"], "urls": {"rest": sim_url}}},
            **({} if domains is None else {"domains": domains}),
        },
        env=env or {},
    )
    return EnhancedQuestDBProvider.from_config(config, strategy="AUTO_BACKFILL", metrics=metrics)


async def test_fetches_publish_and_an_as_of_fetch_never_sees_later_publications(
    sim_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    metrics = SeamlessMetrics(registry)
    async with provider_for(sim_url, tmp_path, publish_optional=True, metrics=metrics) as provider:
        with caplog.at_level(logging.INFO, logger="qmtl"):
            day1 = await provider.fetch(JAN1, JAN2, node_id=NODE)
        first = day1.metadata
        assert first.as_of is not None and first.manifest_uri and len(first.artifacts) == 1
        (published,) = [
            r for r in caplog.records if r.getMessage() == "seamless.artifact.published"
        ]
        assert published.node_id == NODE and published.rows == 1440  # type: ignore[attr-defined]
        assert published.dataset_fingerprint == first.dataset_fingerprint  # type: ignore[attr-defined]
        assert (
            registry.get_sample_value(
                "as_of_advancement_events_total", {"node_id": NODE, "world_id": ""}
            )
            == 1.0
        )
        assert (
            registry.get_sample_value("artifact_bytes_written_total", {"node_id": NODE}) or 0
        ) > 0

        both = await provider.fetch(JAN1, JAN3, node_id=NODE)  # publishes day 2 only
        assert both.metadata.as_of is not None and both.metadata.as_of > first.as_of
        assert len(both.metadata.artifacts) == 2

        pinned = await provider.fetch(JAN1, JAN3, node_id=NODE, as_of=first.as_of)
        assert pinned.metadata.rows == 1440 and pinned.metadata.as_of == first.as_of
        assert pinned.metadata.missing_ranges == (Range(JAN2, JAN3),)
        assert pinned.metadata.requested_as_of == first.as_of
        assert pinned.frame.equals(day1.frame)
        later = await provider.fetch(JAN1, JAN3, node_id=NODE, as_of=both.metadata.as_of)
        assert later.metadata.dataset_fingerprint == both.metadata.dataset_fingerprint
        assert later.frame.equals(both.frame)
        before = await provider.fetch(JAN1, JAN3, node_id=NODE, as_of="2020-01-01")
        assert before.metadata.rows == 0 and before.metadata.as_of is None

    # plain DuckDB over the store: exactly the bars fetch served
    files = f"{tmp_path / 'art'}/exchange=*/**/*.parquet"
    rows = duckdb.sql(
        f"SELECT ts, open, high, low, close, volume, symbol FROM read_parquet('{files}', "
        "hive_partitioning = true) ORDER BY ts"
    ).df()
    assert set(rows.pop("symbol")) == {"BTC/USDT"}
    assert rows.reset_index(drop=True).equals(both.frame)
    # and a pyarrow dataset over the same files (Hive partitions decoded)
    dataset = ds.dataset(tmp_path / "art", format="parquet", partitioning="hive",
                         exclude_invalid_files=True)  # fmt: skip
    table = dataset.to_table(filter=ds.field("symbol") == "BTC/USDT").sort_by("ts")
    assert table.num_rows == 2880 and table.column("ts").to_pylist() == both.frame["ts"].tolist()


async def test_a_backtest_only_reads_and_publication_can_be_switched_off(
    sim_url: str, tmp_path: Path
) -> None:
    async with provider_for(sim_url, tmp_path, publish_optional=True) as provider:
        with pytest.raises(SeamlessDomainPolicyError, match="missing_as_of"):
            await provider.fetch(JAN1, JAN2, node_id=NODE, execution_domain="backtest")
        with pytest.raises(SeamlessDomainPolicyError, match="missing_artifact"):
            await provider.fetch(
                JAN1, JAN2, node_id=NODE, execution_domain="backtest", as_of="2026-01-01"
            )
        assert not (tmp_path / "art").exists()  # a backtest only reads
    off = {"QMTL_SEAMLESS_PUBLISH_FP": "0", "QMTL_SEAMLESS_ARTIFACTS": "1"}
    live_only = {"live": {}}  # no fingerprint switch-off while backtests are configured
    async with provider_for(sim_url, tmp_path, env=off, domains=live_only) as provider:
        result = await provider.fetch(JAN1, JAN2, node_id=NODE, execution_domain="live")
        assert result.metadata.as_of is None and result.metadata.dataset_fingerprint
        assert not (tmp_path / "art").exists()
    async with provider_for(sim_url, tmp_path) as provider:  # optional publication off
        result = await provider.fetch(JAN1, JAN2, node_id=NODE)
        assert result.metadata.as_of is None and not (tmp_path / "art").exists()
        dryrun = await provider.fetch(
            JAN1, JAN2, node_id=NODE, execution_domain="dryrun", as_of="2026-01-01"
        )
        assert dryrun.metadata.as_of is not None  # dryrun always publishes, serves from there
        assert dryrun.metadata.as_of > dryrun.metadata.requested_as_of  # a floor, not a cap
        assert dryrun.metadata.dataset_fingerprint == result.metadata.dataset_fingerprint
        replay = await provider.fetch(
            JAN1, JAN2, node_id=NODE, execution_domain="backtest", as_of=dryrun.metadata.as_of
        )
        assert replay.frame.equals(dryrun.frame)  # a backtest at its as_of replays it


async def test_an_as_of_fetch_that_must_be_complete_says_what_is_missing(
    sim_url: str, tmp_path: Path
) -> None:
    async with provider_for(sim_url, tmp_path, publish_optional=True) as provider:
        first = (await provider.fetch(JAN1, JAN2, node_id=NODE)).metadata
        provider.partial_ok = False
        with pytest.raises(SeamlessCoverageError) as caught:
            await provider.fetch(JAN1, JAN3, node_id=NODE, as_of=first.as_of)
    assert caught.value.missing_ranges == [Range(JAN2, JAN3)]


async def test_an_unreachable_artifact_store_costs_the_fetch_nothing(
    sim_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "t"), ("AWS_SECRET_ACCESS_KEY", "t")):
        monkeypatch.setenv(name, value)
    dead = f"http://127.0.0.1:{free_port()}"
    provider = provider_for(
        sim_url, tmp_path, publish_optional=True,
        object_store_uri="s3://qmtl-art/x", s3_endpoint_url=dead,
    )  # fmt: skip
    async with provider:
        with caplog.at_level(logging.WARNING, logger="qmtl"):
            result = await provider.fetch(JAN1, JAN2, node_id=NODE)
    assert result.metadata.rows == 1440 and result.metadata.missing_ranges == ()
    assert result.metadata.as_of is None
    assert any("artifact publication" in r.getMessage() for r in caplog.records)
