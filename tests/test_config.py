"""The YAML configuration (SPEC §13): defaults, interpolation, env precedence, every error."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.config import (
    DOMAIN_DEFAULTS,
    ConfigError,
    DomainPolicy,
    ExchangeConfig,
    QMTLConfig,
    load_config,
)
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.runtime.sdk.sla import SLAPolicy, SLAViolationMode

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "config.example.yaml"

# SPEC §13, verbatim.
SPEC_YAML = """\
seamless:
  node_id_format: "ohlcv:{exchange}:{symbol}:{timeframe}"
  strategy: SEAMLESS
  conformance: {version: v2, dtype_policy: strict, gap_flagging: true}
  sla: {max_wait_storage_ms: 300, max_wait_backfill_ms: 5000, max_wait_live_ms: 800,
        total_deadline_ms: 1500, on_violation: PARTIAL_FILL}
  backfill: {mode: background, max_concurrent_requests: 8, window_bars: 900,
             single_flight_ttl_ms: 60000, distributed_lease_ttl_ms: 120000,
             max_attempts: 5, retry_backoff_ms: 500, jitter_ratio: 0.25}
  rate_limit: {redis_dsn: null, key_template: "ccxt:{exchange}:{account?}",
               tokens_per_interval: 1200, interval_ms: 60000, burst_tokens: 200,
               local_semaphore: 10, min_interval_ms: 0, penalty_backoff_ms: 5000}
  storage: {dsn: "duckdb:///.qmtl/seamless.duckdb"}
  artifact: {object_store_uri: "file://.qmtl/artifacts", format: parquet, compression: zstd,
             stabilization_bars: 2,
             partition_template: "exchange={exchange}/symbol={symbol}/timeframe={timeframe}",
             publish_fingerprint: true, early_fingerprint: false,
             fingerprint: {algo: sha256, include_columns: [ts, open, high, low, close, volume],
                           normalize_nan: zero}}
  live: {ws: {enabled: false, reconnect_backoff_ms: [500, 1000, 2000, 5000], dedupe_by: ts,
              emit_building_candle: false}}
  observability: {coverage_ratio_threshold: 0.98, backfill_completion_ratio_min: 0.95,
                  storage_wait_warn_ms: 300, backfill_wait_warn_ms: 5000}
cache: {enable: true, ttl_ms: 60000, max_shards: 512,
        key_template: "{node_id}:{start}:{end}:{interval}:{conformance_version}:{world_id}:{as_of}"}
domains:
  backtest: {require_as_of: true, source: artifact_only}
  dryrun: {require_as_of: true, source: artifact_prefers}
  live: {max_lag_sec: 120, allow_partial: true, monotonic_as_of: true}
exchanges:
  binance: {sandbox: false, symbols: ["BTC/USDT", "ETH/USDT"], timeframes: ["1m"],
            rate_limit_rps: 20, urls: null}    # urls: {rest: "http://127.0.0.1:8080", ws: ...}
environment:
  coordinator_url: ${QMTL_SEAMLESS_COORDINATOR_URL}
  rate_limiter_redis: ${QMTL_CCXT_RATE_LIMITER_REDIS}
"""


def errors_of(
    source: str | Path | Mapping[str, object],
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(source, env=env or {}, overrides=overrides)
    assert isinstance(info.value, ValueError)
    return info.value.errors


def only_error(source: Mapping[str, object] | str, env: Mapping[str, str] | None = None) -> str:
    errors = errors_of(source, env)
    assert len(errors) == 1, errors
    return errors[0]


# --- defaults -------------------------------------------------------------------------------


def test_defaults_equal_spec() -> None:
    c = QMTLConfig()
    s = c.seamless
    assert s.node_id_format == "ohlcv:{exchange}:{symbol}:{timeframe}"
    assert s.strategy == "SEAMLESS"
    conformance = s.conformance
    assert (conformance.version, conformance.dtype_policy, conformance.gap_flagging) == (
        "v2",
        "strict",
        True,
    )
    assert s.sla == SLAPolicy(
        max_wait_storage_ms=300,
        max_wait_backfill_ms=5000,
        max_wait_live_ms=800,
        total_deadline_ms=1500,
        on_violation=SLAViolationMode.PARTIAL_FILL,
    )
    assert s.backfill == BackfillConfig(
        mode="background",
        max_concurrent_requests=8,
        window_bars=900,
        single_flight_ttl_ms=60000,
        distributed_lease_ttl_ms=120000,
        max_attempts=5,
        retry_backoff_ms=500,
        jitter_ratio=0.25,
    )
    assert s.rate_limit == RateLimiterConfig(
        redis_dsn=None,
        key_template="ccxt:{exchange}:{account?}",
        tokens_per_interval=1200,
        interval_ms=60000,
        burst_tokens=200,
        local_semaphore=10,
        min_interval_ms=0,
        penalty_backoff_ms=5000,
    )
    assert s.storage.dsn == "duckdb:///.qmtl/seamless.duckdb"
    a = s.artifact
    assert (a.object_store_uri, a.format, a.compression, a.stabilization_bars) == (
        "file://.qmtl/artifacts",
        "parquet",
        "zstd",
        2,
    )
    assert a.partition_template == "exchange={exchange}/symbol={symbol}/timeframe={timeframe}"
    assert (a.publish_fingerprint, a.early_fingerprint, a.publish_optional) == (True, False, False)
    assert a.fingerprint.algo == "sha256"
    assert a.fingerprint.include_columns == ("ts", "open", "high", "low", "close", "volume")
    assert a.fingerprint.normalize_nan == "zero"
    ws = s.live.ws
    assert (ws.enabled, ws.reconnect_backoff_ms, ws.dedupe_by, ws.emit_building_candle) == (
        False,
        (500, 1000, 2000, 5000),
        "ts",
        False,
    )
    o = s.observability
    assert (o.coverage_ratio_threshold, o.backfill_completion_ratio_min) == (0.98, 0.95)
    assert (o.storage_wait_warn_ms, o.backfill_wait_warn_ms, o.log_format) == (300, 5000, "text")
    assert (c.cache.enable, c.cache.ttl_ms, c.cache.max_shards) == (True, 60000, 512)
    assert c.cache.key_template == (
        "{node_id}:{start}:{end}:{interval}:{conformance_version}:{world_id}:{as_of}"
    )
    assert list(c.domains) == ["backtest", "dryrun", "live"]
    assert c.domains["backtest"] == DomainPolicy(
        require_as_of=True, source="artifact_only", allow_partial=False
    )
    assert c.domains["dryrun"] == DomainPolicy(
        require_as_of=True, source="artifact_prefers", allow_partial=False
    )
    live = c.domains["live"]
    assert (live.max_lag_sec, live.allow_partial, live.monotonic_as_of) == (120, True, True)
    assert DOMAIN_DEFAULTS["shadow"] == live
    assert dict(c.exchanges) == {}
    env = c.environment
    assert (env.coordinator_url, env.rate_limiter_redis, env.worker_id) == (None, None, None)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "null\n"])
def test_empty_document_means_all_defaults(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert load_config(path, env={}) == QMTLConfig()
    assert load_config({}, env={}) == QMTLConfig()


def test_spec_yaml_is_the_defaults_plus_its_example_exchange() -> None:
    c = load_config(SPEC_YAML, env={})
    assert dataclasses.replace(c, exchanges={}) == QMTLConfig()
    assert c.node_ids() == ("ohlcv:binance:BTC/USDT:1m", "ohlcv:binance:ETH/USDT:1m")
    assert c.exchanges["binance"].urls is None


def test_example_file_passes() -> None:
    c = load_config(EXAMPLE, env={})
    assert dataclasses.replace(c, exchanges={}) == QMTLConfig()
    assert c.node_ids() == load_config(SPEC_YAML, env={}).node_ids()


def test_config_is_frozen_and_read_only() -> None:
    c = load_config(SPEC_YAML, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.cache = c.cache  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.exchanges["kraken"] = ExchangeConfig()  # type: ignore[index]
    with pytest.raises(TypeError):
        c.exchanges["binance"].ccxt_options["x"] = 1  # type: ignore[index]


def test_mapping_source_is_not_mutated() -> None:
    raw: dict[str, object] = {"environment": {"coordinator_url": "${URL}"}}
    c = load_config(raw, env={"URL": "http://coord:9000", "QMTL_SEAMLESS_PUBLISH_FP": "1"})
    assert c.environment.coordinator_url == "http://coord:9000"
    assert raw == {"environment": {"coordinator_url": "${URL}"}}


def test_yaml_text_and_path_sources_agree(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(SPEC_YAML)
    assert (
        load_config(str(path), env={})
        == load_config(SPEC_YAML, env={})
        == load_config(path, env={})
    )


# --- unknown keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("retry_max", "max_attempts"),
        ("retry_base_backoff_ms", "retry_backoff_ms"),
        ("retry_jitter", "jitter_ratio"),
    ],
)
def test_old_backfill_keys_name_the_right_key(old: str, new: str) -> None:
    assert only_error({"seamless": {"backfill": {old: 3}}}) == (
        f"seamless.backfill.{old}: unknown key; did you mean {new!r}? (renamed)"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"seamless": {"backfill": {"max_atempts": 3}}},
            "seamless.backfill.max_atempts: unknown key; did you mean 'max_attempts'?",
        ),
        (
            {"seamless": {"rate_limit": {"burst_token": 3}}},
            "seamless.rate_limit.burst_token: unknown key; did you mean 'burst_tokens'?",
        ),
        ({"cahce": {}}, "cahce: unknown section; did you mean 'cache'?"),
        ({"SEAMLESS": {}}, "SEAMLESS: unknown section; did you mean 'seamless'?"),
        (
            {"zzz": 1},
            "zzz: unknown section; valid sections: cache, domains, environment, exchanges, "
            "seamless",
        ),
        (
            {"cache": {"enabled": False}},
            "cache.enabled: unknown key; did you mean 'enable'? (renamed)",
        ),
        (
            {"domains": {"paper": {}}},
            "domains.paper: unknown domain; did you mean 'dryrun'? (an alias)",
        ),
        (
            {"domains": {"live": {"max_lag_seconds": 5}}},
            "domains.live.max_lag_seconds: unknown key; did you mean 'max_lag_sec'? (renamed)",
        ),
        (
            {"exchanges": {"binance": {"symbol": ["BTC/USDT"]}}},
            "exchanges.binance.symbol: unknown key; did you mean 'symbols'?",
        ),
        (
            {"exchanges": {"binance": {"rate_limit": {"qqq": 5}}}},
            "exchanges.binance.rate_limit.qqq: unknown key; valid keys: burst_tokens, "
            "expected_workers, interval_ms, key_template, local_semaphore, min_interval_ms, "
            "penalty_backoff_ms, redis_dsn, tokens_per_interval",
        ),
        (
            {"seamless": {"artifact": {"fingerprint": {"algorithm": "sha256"}}}},
            "seamless.artifact.fingerprint.algorithm: unknown key; did you mean 'algo'?",
        ),
        (
            {"seamless": {"live": {"ws": {"enable": True}}}},
            "seamless.live.ws.enable: unknown key; did you mean 'enabled'?",
        ),
    ],
)
def test_unknown_keys_suggest_the_nearest(raw: dict[str, object], message: str) -> None:
    assert only_error(raw) == message


# --- types and enums -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"seamless": {"backfill": {"window_bars": "abc"}}},
            "seamless.backfill.window_bars: expected integer, got string 'abc'",
        ),
        (
            {"seamless": {"backfill": {"window_bars": True}}},
            "seamless.backfill.window_bars: expected integer, got boolean true",
        ),
        (
            {"seamless": {"backfill": {"window_bars": 9.5}}},
            "seamless.backfill.window_bars: expected integer, got number 9.5",
        ),
        (
            {"seamless": {"backfill": {"jitter_ratio": "high"}}},
            "seamless.backfill.jitter_ratio: expected number, got string 'high'",
        ),
        (
            {"seamless": {"sla": {"total_deadline_ms": float("inf")}}},
            "seamless.sla.total_deadline_ms: expected a finite number, got number inf",
        ),
        (
            {"cache": {"enable": "yes"}},
            "cache.enable: expected boolean, got string 'yes'",
        ),
        ({"cache": {"enable": 1}}, "cache.enable: expected boolean, got integer 1"),
        ({"cache": {"ttl_ms": None}}, "cache.ttl_ms: expected integer, got null"),
        (
            {"cache": {"ttl_ms": 2**63}},
            "cache.ttl_ms: expected a 64-bit integer, got integer 9223372036854775808",
        ),
        ({"cache": [1, 2]}, "cache: expected a mapping, got a list"),
        ({"seamless": "fast"}, "seamless: expected a mapping, got string 'fast'"),
        (
            {"exchanges": {"binance": {"symbols": "BTC/USDT"}}},
            "exchanges.binance.symbols: expected a list, got string 'BTC/USDT'",
        ),
        (
            {"exchanges": {"binance": {"symbols": ["BTC/USDT", 5]}}},
            "exchanges.binance.symbols[1]: expected string, got integer 5",
        ),
        ({"exchanges": ["binance"]}, "exchanges: expected a mapping of ccxt ids, got a list"),
        (
            {"exchanges": {"binance": {"ccxt_options": [1]}}},
            "exchanges.binance.ccxt_options: expected a mapping, got a list",
        ),
        (
            {"seamless": {"strategy": "FAST"}},
            "seamless.strategy: expected one of 'FAIL_FAST', 'AUTO_BACKFILL', 'PARTIAL_FILL', "
            "'SEAMLESS', got string 'FAST'",
        ),
        (
            {"seamless": {"sla": {"on_violation": "IGNORE"}}},
            "seamless.sla.on_violation: expected one of 'FAIL_FAST', 'PARTIAL_FILL', 'HOLD', "
            "got string 'IGNORE'",
        ),
        (
            {"seamless": {"backfill": {"mode": "eager"}}},
            "seamless.backfill.mode: expected one of 'background', 'sync', got string 'eager'",
        ),
        (
            {"domains": {"live": {"source": "anything"}}},
            "domains.live.source: expected one of 'artifact_only', 'artifact_prefers', "
            "'storage_only', 'storage_backfill', 'storage_backfill_live', got string 'anything'",
        ),
        (
            {"seamless": {"observability": {"log_format": "xml"}}},
            "seamless.observability.log_format: expected one of 'text', 'json', got string 'xml'",
        ),
        (
            {"exchanges": {"binance": {"market_type": "perp"}}},
            "exchanges.binance.market_type: expected one of 'spot', 'margin', 'swap', 'future', "
            "'option', got string 'perp'",
        ),
    ],
)
def test_type_and_enum_errors(raw: dict[str, object], message: str) -> None:
    assert only_error(raw) == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"seamless": {"rate_limit": {"burst_tokens": 0}}},
            "seamless.rate_limit.burst_tokens: must be an integer > 0, got 0",
        ),
        (
            {"seamless": {"rate_limit": {"expected_workers": 0}}},
            "seamless.rate_limit.expected_workers: must be an integer > 0, got 0",
        ),
        (
            {"seamless": {"backfill": {"max_attempts": 0}}},
            "seamless.backfill.max_attempts: must be > 0, got 0",
        ),
        (
            {"seamless": {"sla": {"min_coverage": 1.5}}},
            "seamless.sla.min_coverage: must be within [0, 1], got 1.5",
        ),
        (
            {"seamless": {"artifact": {"stabilization_bars": 0}}},
            "seamless.artifact.stabilization_bars: must be >= 1, got 0",
        ),
        ({"cache": {"max_shards": 0}}, "cache.max_shards: must be >= 1, got 0"),
        (
            {"domains": {"live": {"min_coverage": -0.1}}},
            "domains.live.min_coverage: must be within [0, 1], got -0.1",
        ),
        (
            {"seamless": {"live": {"ws": {"reconnect_backoff_ms": []}}}},
            "seamless.live.ws.reconnect_backoff_ms: must be a non-empty list of delays > 0",
        ),
        (
            {"exchanges": {"binance": {"rate_limit_rps": 0}}},
            "exchanges.binance.rate_limit_rps: must be >= 1, got 0",
        ),
        (
            {"exchanges": {"binance": {"urls": {"rest": "127.0.0.1:8080"}}}},
            "exchanges.binance.urls.rest: expected a URL starting with http://, https://, "
            "got '127.0.0.1:8080'",
        ),
        (
            {"exchanges": {"binance": {"urls": {}}}},
            "exchanges.binance.urls: give rest and/or ws, or write urls: null",
        ),
        (
            {"environment": {"coordinator_url": "coord:9000"}},
            "environment.coordinator_url: expected a URL starting with http://, https://, "
            "got 'coord:9000'",
        ),
        (
            {"environment": {"rate_limiter_redis": "memcached://x"}},
            "environment.rate_limiter_redis: unsupported scheme in 'memcached://x'; "
            "use redis://, rediss:// or unix://",
        ),
    ],
)
def test_range_errors_carry_the_key_path(raw: dict[str, object], message: str) -> None:
    assert only_error(raw) == message


def test_every_error_is_collected() -> None:
    errors = errors_of(
        {
            "seamless": {
                "backfill": {"retry_max": 3, "window_bars": "abc"},
                "rate_limit": {"burst_tokens": 0, "interval_ms": -1, "min_interval_ms": True},
                "artifact": {"object_store_uri": "gs://bucket"},
            },
            "cache": {"ttl_ms": "soon"},
            "exchanges": {"binance": {"timeframes": ["7m"]}},
        }
    )
    assert errors == [
        "seamless.backfill.retry_max: unknown key; did you mean 'max_attempts'? (renamed)",
        "seamless.backfill.window_bars: expected integer, got string 'abc'",
        "seamless.rate_limit.min_interval_ms: expected integer, got boolean true",
        "seamless.rate_limit.burst_tokens: must be an integer > 0, got 0",
        "seamless.rate_limit.interval_ms: must be an integer > 0, got -1",
        "seamless.artifact.object_store_uri: unsupported destination 'gs://bucket'; "
        "supported: file://directory, s3://bucket/prefix",
        "cache.ttl_ms: expected integer, got string 'soon'",
        "exchanges.binance.timeframes[0]: unknown timeframe '7m'; expected one of 1s, 1m, 3m, "
        "5m, 15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h, 1d, 1w",
    ]


# --- cross-checks ----------------------------------------------------------------------------


def test_publish_fingerprint_false_is_refused_with_backtest_or_dryrun() -> None:
    assert only_error({"seamless": {"artifact": {"publish_fingerprint": False}}}) == (
        "seamless.artifact.publish_fingerprint: false is not allowed while the backtest and "
        "dryrun domains are configured (they serve only published, fingerprinted artifacts); "
        "set it to true or remove domains.backtest and domains.dryrun"
    )
    raw: dict[str, object] = {
        "seamless": {"artifact": {"publish_fingerprint": False}},
        "domains": {"dryrun": {}, "live": {}},
    }
    assert "the dryrun domain is configured" in only_error(raw)
    live_only = load_config(
        {"seamless": {"artifact": {"publish_fingerprint": False}}, "domains": {"live": None}},
        env={},
    )
    assert list(live_only.domains) == ["live"]
    assert live_only.domains["live"] == DOMAIN_DEFAULTS["live"]


def test_programmatic_construction_runs_the_cross_checks() -> None:
    settings_ = dataclasses.replace(
        QMTLConfig().seamless,
        artifact=dataclasses.replace(QMTLConfig().seamless.artifact, publish_fingerprint=False),
    )
    with pytest.raises(ConfigError, match="publish_fingerprint: false is not allowed"):
        QMTLConfig(seamless=settings_)
    assert QMTLConfig(seamless=settings_, domains={}).domains == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {
                "seamless": {"artifact": {"early_fingerprint": True, "publish_fingerprint": False}},
                "domains": {},
            },
            "seamless.artifact.early_fingerprint: requires publish_fingerprint: true "
            "(a preview fingerprint is checked against the sealed one)",
        ),
        (
            {"domains": {"backtest": {"source": "storage_backfill"}}},
            "domains.backtest.source: must be 'artifact_only' (a backtest serves only published "
            "artifacts), got 'storage_backfill'",
        ),
        (
            {"domains": {"dryrun": {"source": "storage_only"}}},
            "domains.dryrun.source: must be 'artifact_only' or 'artifact_prefers' (dryrun serves "
            "published artifacts), got 'storage_only'",
        ),
        (
            {"domains": {"backtest": {"require_as_of": False}}},
            "domains.backtest.require_as_of: must be true (backtest requires an as_of)",
        ),
        (
            {"seamless": {"rate_limit": {"min_interval_ms": 60000}}},
            "seamless.rate_limit.min_interval_ms: must be < interval_ms (60000 ms), got 60000",
        ),
        (
            {
                "exchanges": {
                    "binance": {
                        "symbols": ["BTC/USDT"],
                        "rate_limit_rps": 5,
                        "rate_limit": {"min_interval_ms": 1500},
                    }
                }
            },
            "exchanges.binance.rate_limit.min_interval_ms: must be < interval_ms "
            "(1000 ms from rate_limit_rps), got 1500",
        ),
        (
            {
                "exchanges": {
                    "binance": {"rate_limit_rps": 5, "rate_limit": {"tokens_per_interval": 10}}
                }
            },
            "exchanges.binance.rate_limit_rps: conflicts with "
            "exchanges.binance.rate_limit.tokens_per_interval; rate_limit_rps is shorthand for "
            "tokens_per_interval=rps, interval_ms=1000 (set one or the other)",
        ),
        (
            {"seamless": {"artifact": {"object_store_uri": "gs://bucket/x"}}},
            "seamless.artifact.object_store_uri: unsupported destination 'gs://bucket/x'; "
            "supported: file://directory, s3://bucket/prefix",
        ),
        (
            {"seamless": {"artifact": {"object_store_uri": "s3://"}}},
            "seamless.artifact.object_store_uri: 's3://' needs a valid bucket (s3://bucket/prefix)",
        ),
        (
            {"seamless": {"artifact": {"object_store_uri": "/var/artifacts"}}},
            "seamless.artifact.object_store_uri: unsupported destination '/var/artifacts'; "
            "supported: file://directory, s3://bucket/prefix",
        ),
        (
            {"seamless": {"storage": {"dsn": "mysql://db/x"}}},
            "seamless.storage.dsn: unsupported scheme 'mysql'; supported: "
            "duckdb:///path/file.duckdb, postgresql://..., postgres://...",
        ),
        (
            {"seamless": {"storage": {"dsn": "data.duckdb"}}},
            "seamless.storage.dsn: missing scheme in 'data.duckdb'; supported: "
            "duckdb:///path/file.duckdb, postgresql://..., postgres://...",
        ),
        (
            {"seamless": {"storage": {"dsn": "duckdb://x.duckdb"}}},
            "seamless.storage.dsn: expected duckdb:///path/file.duckdb, got 'duckdb://x.duckdb'",
        ),
        (
            {"exchanges": {"Binance!": {"symbols": ["BTC/USDT"]}}},
            "exchanges.Binance!: invalid ccxt id 'Binance!' (expected a ccxt id like 'binance')",
        ),
        (
            {"exchanges": {"binance": {"symbols": ["BTC/USDT", "BTCUSDT"]}}},
            "exchanges.binance.symbols[1]: invalid symbol 'BTCUSDT' (expected a ccxt unified "
            "symbol like 'BTC/USDT' or 'BTC/USDT:USDT')",
        ),
        (
            {"exchanges": {"binance": {"symbols": ["BTC/USDT", "BTC/USDT"]}}},
            "exchanges.binance.symbols[1]: duplicate symbol 'BTC/USDT'",
        ),
        (
            {"exchanges": {"binance": {"symbols": ["BTC/USDT"], "timeframes": ["1m", "1m"]}}},
            "exchanges.binance.timeframes[1]: duplicate timeframe '1m'",
        ),
        (
            {"exchanges": {"binance": {"symbols": ["A" * 200 + "/USDT"]}}},
            "exchanges.binance.symbols[0]: node id is 222 characters long (max 200)",
        ),
        (
            {"seamless": {"node_id_format": "{exchange}-{symbol}"}},
            "seamless.node_id_format: missing placeholder(s) ['timeframe']",
        ),
        (
            {"seamless": {"node_id_format": "bars:{exchange}:{symbol}:{timeframe}"}},
            "seamless.node_id_format: must render node ids 'ohlcv:{exchange}:{symbol}:{timeframe}'"
            ", got 'bars:binance:BTC/USDT:1m' for binance BTC/USDT 1m",
        ),
        (
            {"seamless": {"node_id_format": "ohlcv:{exchange}:{symbol}:{timeframe}:{world}"}},
            "seamless.node_id_format: unknown placeholder(s) ['world']; allowed: "
            "['exchange', 'symbol', 'timeframe']",
        ),
        (
            {"cache": {"key_template": "{node_id}:{start}:{end}:{interval}"}},
            "cache.key_template: missing placeholder(s) ['as_of', 'world_id']",
        ),
        (
            {
                "cache": {
                    "key_template": "{node_id}:{start}:{end}:{interval}:{world_id}:{as_of}:{x}"
                }
            },
            "cache.key_template: unknown placeholder(s) ['x']; allowed: ['as_of', "
            "'conformance_version', 'end', 'interval', 'node_id', 'start', 'world_id']",
        ),
        (
            {"cache": {"key_template": "{node_id"}},
            "cache.key_template: malformed template '{node_id': expected '}' before end of string",
        ),
        (
            {"seamless": {"artifact": {"partition_template": "../{exchange}"}}},
            "seamless.artifact.partition_template: must be a relative path without '..'",
        ),
        (
            {"seamless": {"rate_limit": {"key_template": "ccxt:{venue}"}}},
            "seamless.rate_limit.key_template: unknown placeholder(s) ['venue']; use "
            "['account', 'exchange', 'exchange_id']",
        ),
    ],
)
def test_cross_checks(raw: dict[str, object], message: str) -> None:
    assert only_error(raw) == message


def test_accepted_destinations() -> None:
    for uri in ("file:///abs/dir", "file://rel/dir", "s3://my-bucket", "s3://my-bucket/a/b"):
        assert (
            load_config(
                {"seamless": {"artifact": {"object_store_uri": uri}}}, env={}
            ).seamless.artifact.object_store_uri
            == uri
        )
    for dsn in (
        "duckdb:///:memory:",
        "duckdb:////abs/x.duckdb",
        "postgresql://u@h/db",
        "postgres://h:5432/db",
    ):
        assert (
            load_config({"seamless": {"storage": {"dsn": dsn}}}, env={}).seamless.storage.dsn == dsn
        )


# --- rate limits per exchange ----------------------------------------------------------------


def test_rate_limit_rps_shorthand_inherits_the_other_keys() -> None:
    c = load_config(
        {
            "seamless": {"rate_limit": {"burst_tokens": 30, "penalty_backoff_ms": 9000}},
            "exchanges": {"binance": {"symbols": ["BTC/USDT"], "rate_limit_rps": 20}},
        },
        env={},
    )
    limiter = c.rate_limiter_for("binance")
    assert (limiter.tokens_per_interval, limiter.interval_ms) == (20, 1000)
    assert (limiter.burst_tokens, limiter.penalty_backoff_ms) == (30, 9000)
    assert c.rate_limiter_for("kraken") == c.seamless.rate_limit


def test_exchange_rate_limit_block_overrides_seamless_rate_limit() -> None:
    c = load_config(
        {
            "seamless": {"rate_limit": {"burst_tokens": 30, "local_semaphore": 4}},
            "exchanges": {
                "okx": {"symbols": ["BTC/USDT"], "rate_limit": {"tokens_per_interval": 600}},
                "bybit": {"rate_limit_rps": 10, "rate_limit": {"burst_tokens": 5}},
            },
        },
        env={},
    )
    okx = c.rate_limiter_for("okx")
    assert (okx.tokens_per_interval, okx.interval_ms, okx.burst_tokens) == (600, 60000, 30)
    assert okx.local_semaphore == 4
    bybit = c.rate_limiter_for("bybit")
    assert (bybit.tokens_per_interval, bybit.interval_ms, bybit.burst_tokens) == (10, 1000, 5)
    assert c.node_ids("bybit") == ()


def test_redis_environment_fills_and_env_var_overrides_redis_dsn() -> None:
    raw: dict[str, object] = {
        "environment": {"rate_limiter_redis": "redis://file-redis:6379/0"},
        "exchanges": {"okx": {"rate_limit": {"redis_dsn": "redis://okx-only:6379"}}},
    }
    c = load_config(raw, env={})
    assert c.seamless.rate_limit.redis_dsn is None
    assert c.rate_limiter_for("binance").redis_dsn == "redis://file-redis:6379/0"
    assert c.rate_limiter_for("okx").redis_dsn == "redis://okx-only:6379"
    c = load_config(raw, env={"QMTL_CCXT_RATE_LIMITER_REDIS": "redis://cluster:6379"})
    assert c.environment.rate_limiter_redis == "redis://cluster:6379"
    assert c.seamless.rate_limit.redis_dsn == "redis://cluster:6379"
    assert c.rate_limiter_for("okx").redis_dsn == "redis://cluster:6379"


def test_node_ids_in_file_order() -> None:
    c = load_config(
        {
            "exchanges": {
                "binance": {"symbols": ["BTC/USDT", "ETH/USDT"], "timeframes": ["1m", "1h"]},
                "binanceusdm": {"symbols": ["BTC/USDT:USDT"], "market_type": "future"},
            }
        },
        env={},
    )
    assert c.node_ids() == (
        "ohlcv:binance:BTC/USDT:1m",
        "ohlcv:binance:BTC/USDT:1h",
        "ohlcv:binance:ETH/USDT:1m",
        "ohlcv:binance:ETH/USDT:1h",
        "ohlcv:binanceusdm:BTC/USDT:USDT:1m",
    )
    assert c.node_ids("binanceusdm") == ("ohlcv:binanceusdm:BTC/USDT:USDT:1m",)


def test_exchange_entry_keys() -> None:
    c = load_config(
        {
            "exchanges": {
                "binance": {
                    "sandbox": True,
                    "symbols": ["BTC/USDT"],
                    "urls": {"rest": "http://127.0.0.1:8080", "ws": "ws://127.0.0.1:8080"},
                    "page_limit": 1000,
                    "account": "main",
                    "ccxt_options": {"options": {"adjustForTimeDifference": True}},
                }
            }
        },
        env={},
    )
    entry = c.exchanges["binance"]
    assert entry.sandbox is True
    assert entry.urls is not None
    assert (entry.urls.rest, entry.urls.ws) == ("http://127.0.0.1:8080", "ws://127.0.0.1:8080")
    assert (entry.page_limit, entry.account) == (1000, "main")
    assert entry.ccxt_options == {"options": {"adjustForTimeDifference": True}}


# --- interpolation ---------------------------------------------------------------------------


def test_interpolation_set_unset_and_default() -> None:
    raw = {
        "environment": {"coordinator_url": "${COORD}"},
        "seamless": {"storage": {"dsn": "${DSN:-duckdb:///fallback.duckdb}"}},
    }
    c = load_config(raw, env={"COORD": "http://coord:9000"})
    assert c.environment.coordinator_url == "http://coord:9000"
    assert c.seamless.storage.dsn == "duckdb:///fallback.duckdb"
    c = load_config(raw, env={"DSN": "postgresql://db/x"})
    assert c.environment.coordinator_url is None  # unset -> null for an optional key
    assert c.seamless.storage.dsn == "postgresql://db/x"
    c = load_config(raw, env={"COORD": "", "DSN": ""})  # empty counts as unset
    assert c.environment.coordinator_url is None
    assert c.seamless.storage.dsn == "duckdb:///fallback.duckdb"


def test_spec_environment_references_may_be_unset() -> None:
    c = load_config(SPEC_YAML, env={})
    assert (c.environment.coordinator_url, c.environment.rate_limiter_redis) == (None, None)
    c = load_config(SPEC_YAML, env={"QMTL_SEAMLESS_COORDINATOR_URL": "https://coord.example"})
    assert c.environment.coordinator_url == "https://coord.example"


def test_interpolated_values_take_the_key_type() -> None:
    raw = {
        "exchanges": {"binance": {"rate_limit_rps": "${RPS:-20}", "sandbox": "${SANDBOX:-no}"}},
        "seamless": {"sla": {"max_wait_storage_ms": "${WAIT}"}},
    }
    c = load_config(raw, env={"RPS": "7", "WAIT": "12.5"})
    assert c.exchanges["binance"].rate_limit_rps == 7
    assert c.exchanges["binance"].sandbox is False
    assert c.seamless.sla.max_wait_storage_ms == 12.5
    assert load_config(raw, env={}).seamless.sla.max_wait_storage_ms is None
    assert errors_of(raw, {"RPS": "fast"}) == [
        "exchanges.binance.rate_limit_rps: expected integer, got string 'fast' (from ${RPS})"
    ]


def test_interpolation_errors() -> None:
    assert only_error({"seamless": {"storage": {"dsn": "${DSN}"}}}) == (
        "seamless.storage.dsn: environment variable DSN is not set and this key needs a value "
        "(write ${DSN:-default} to give a default)"
    )
    assert only_error({"seamless": {"storage": {"dsn": "postgresql://${HOST}/db"}}}) == (
        "seamless.storage.dsn: environment variable HOST is not set (it is part of "
        "'postgresql://${HOST}/db'; write ${HOST:-default} to give a default)"
    )
    assert only_error({"environment": {"worker_id": "${1BAD}"}}) == (
        "environment.worker_id: invalid reference '${1BAD}'; use ${NAME} or ${NAME:-default}"
    )
    assert only_error({"environment": {"worker_id": "w-${OPEN"}}) == (
        "environment.worker_id: unterminated '${' in 'w-${OPEN'"
    )


def test_interpolation_inside_strings_escape_and_keys() -> None:
    raw = {
        "seamless": {"storage": {"dsn": "postgresql://${HOST}:${PORT:-5432}/db"}},
        "environment": {"worker_id": "$${literal}"},
        "exchanges": {"binance": {"ccxt_options": {"${KEY}": "${VALUE:-v}"}}},
    }
    c = load_config(raw, env={"HOST": "db", "KEY": "ignored"})
    assert c.seamless.storage.dsn == "postgresql://db:5432/db"
    assert c.environment.worker_id == "${literal}"
    assert c.exchanges["binance"].ccxt_options == {"${KEY}": "v"}


# --- environment overrides -------------------------------------------------------------------


def test_environment_beats_file_and_overrides_beat_environment() -> None:
    raw = {
        "environment": {"coordinator_url": "http://file:1", "worker_id": "file-worker"},
        "seamless": {"artifact": {"publish_fingerprint": True, "object_store_uri": "s3://b/p"}},
        "domains": {"live": {}},
    }
    env = {
        "QMTL_SEAMLESS_COORDINATOR_URL": "http://env:2",
        "QMTL_SEAMLESS_COORDINATOR_TOKEN": "secret-token",
        "QMTL_SEAMLESS_PUBLISH_FP": "0",
        "QMTL_SEAMLESS_EARLY_FP": "no",
        "QMTL_SEAMLESS_ARTIFACTS": "1",
        "QMTL_SEAMLESS_ARTIFACT_DIR": "/data/artifacts",
        "QMTL_SEAMLESS_WORKER": "env-worker",
        "QMTL_LOG_FORMAT": "json",
    }
    c = load_config(raw, env=env)
    assert c.environment.coordinator_url == "http://env:2"
    assert c.environment.coordinator_token == "secret-token"
    assert "secret-token" not in repr(c)
    assert c.environment.worker_id == "env-worker"
    artifact = c.seamless.artifact
    assert (artifact.publish_fingerprint, artifact.early_fingerprint) == (False, False)
    assert artifact.publish_optional is True
    assert artifact.object_store_uri == "file:///data/artifacts"
    assert c.seamless.observability.log_format == "json"
    c = load_config(
        raw,
        env=env,
        overrides={
            "environment.coordinator_url": "http://arg:3",
            "seamless.storage.dsn": "duckdb:///a.db",
        },
    )
    assert c.environment.coordinator_url == "http://arg:3"
    assert c.seamless.storage.dsn == "duckdb:///a.db"


def test_artifact_dir_keeps_a_uri_and_accepts_relative_paths() -> None:
    uri = load_config({}, env={"QMTL_SEAMLESS_ARTIFACT_DIR": "s3://bkt/prefix"})
    assert uri.seamless.artifact.object_store_uri == "s3://bkt/prefix"
    rel = load_config({}, env={"QMTL_SEAMLESS_ARTIFACT_DIR": "out/art"})
    assert rel.seamless.artifact.object_store_uri == "file://out/art"


def test_worker_falls_back_to_hostname() -> None:
    assert load_config({}, env={"HOSTNAME": "host-1"}).environment.worker_id == "host-1"
    in_file = {"environment": {"worker_id": "w-7"}}
    assert load_config(in_file, env={"HOSTNAME": "host-1"}).environment.worker_id == "w-7"
    both = {"QMTL_SEAMLESS_WORKER": "w-9", "HOSTNAME": "host-1"}
    assert load_config(in_file, env=both).environment.worker_id == "w-9"


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("1", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_boolean_env_words(word: str, value: bool) -> None:
    c = load_config({"domains": {}}, env={"QMTL_SEAMLESS_PUBLISH_FP": word})
    assert c.seamless.artifact.publish_fingerprint is value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"QMTL_SEAMLESS_PUBLISH_FP": "maybe"},
            "seamless.artifact.publish_fingerprint: expected boolean "
            "(1/0/true/false/yes/no/on/off), got string 'maybe' (from QMTL_SEAMLESS_PUBLISH_FP)",
        ),
        (
            {"QMTL_SEAMLESS_EARLY_FP": "2"},
            "seamless.artifact.early_fingerprint: expected boolean "
            "(1/0/true/false/yes/no/on/off), got string '2' (from QMTL_SEAMLESS_EARLY_FP)",
        ),
        (
            {"QMTL_SEAMLESS_ARTIFACTS": "enable"},
            "seamless.artifact.publish_optional: expected boolean "
            "(1/0/true/false/yes/no/on/off), got string 'enable' (from QMTL_SEAMLESS_ARTIFACTS)",
        ),
        (
            {"QMTL_LOG_FORMAT": "yaml"},
            "seamless.observability.log_format: expected one of 'text', 'json', got string "
            "'yaml' (from QMTL_LOG_FORMAT)",
        ),
        (
            {"QMTL_SEAMLESS_COORDINATOR_URL": "coord:80"},
            "environment.coordinator_url: expected a URL starting with http://, https://, got "
            "'coord:80' (from QMTL_SEAMLESS_COORDINATOR_URL)",
        ),
        (
            {"QMTL_CCXT_RATE_LIMITER_REDIS": "localhost:6379"},
            "environment.rate_limiter_redis: unsupported scheme in 'localhost:6379'; use "
            "redis://, rediss:// or unix:// (from QMTL_CCXT_RATE_LIMITER_REDIS)",
        ),
        (
            {"QMTL_SEAMLESS_WORKER": "two words"},
            "environment.worker_id: must be 1-128 printable characters without spaces, got "
            "'two words' (from QMTL_SEAMLESS_WORKER)",
        ),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    assert message in errors_of({}, env)


def test_bad_override_paths() -> None:
    assert errors_of({"cache": 5}, overrides={"cache.ttl_ms": 1}) == [
        "cache.ttl_ms: cache is integer 5, not a mapping"
    ]
    assert errors_of({}, overrides={"cache..ttl_ms": 1}) == ["cache..ttl_ms: empty key in the path"]
    assert errors_of({}, overrides={"cache.ttl": 1}) == [
        "cache.ttl: unknown key; did you mean 'ttl_ms'?"
    ]


# --- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- a\n- b\n",
            "(root): expected a mapping of sections (seamless, cache, domains, "
            "exchanges, environment), got a list",
        ),
        (
            "just text\n",
            "(root): expected a mapping of sections (seamless, cache, domains, "
            "exchanges, environment), got string 'just text'",
        ),
        (
            "cache:\n\tttl_ms: 5\n",
            "<yaml text>: invalid YAML at line 2, column 1: while "
            "scanning for the next token, found character '\\t' that cannot start any token "
            "(YAML indentation must use spaces, not tabs)",
        ),
        (
            "cache: [1\n",
            "<yaml text>: invalid YAML at line 2, column 1: while parsing a flow "
            "sequence, expected ',' or ']', but got '<stream end>'",
        ),
        (
            "cache: {ttl_ms: 1}\ncache: {ttl_ms: 2}\n",
            "<yaml text>: invalid YAML at line 2, "
            "column 1: while reading a mapping, found duplicate key 'cache'",
        ),
        (
            "a: 1\n---\nb: 2\n",
            "<yaml text>: invalid YAML at line 2, column 1: expected a "
            "single document in the stream, but found another document",
        ),
        (
            "x: !!python/object/apply:os.system ['true']\n",
            "<yaml text>: invalid YAML at line 1, "
            "column 4: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        ("x: 2020-13-45\n", "<yaml text>: invalid YAML value: month must be in 1..12"),
        ("a: &a [*a]\n", "<yaml text>: document refers to itself (a recursive alias)"),
        ("x: " + "[" * 80 + "]" * 80 + "\n", "<yaml text>: document nests deeper than 64 levels"),
        ("x: " + "[" * 20000 + "\n", "<yaml text>: invalid YAML: nested too deeply"),
        ("1: a\n", "(root): keys must be strings, got integer 1"),
        ("cache: {ttl_ms: 1, 5: 2}\n", "cache: keys must be strings, got integer 5"),
        (
            "exchanges: {binance: {symbols: [!!binary aGk=]}}\n",
            "exchanges.binance.symbols[0]: expected string, got a value of type bytes",
        ),
    ],
)
def test_hostile_documents_are_config_errors(text: str, message: str) -> None:
    assert errors_of(text) == [message]


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    started = time.monotonic()
    errors = errors_of("\n".join(lines) + "\n")
    assert time.monotonic() - started < 2
    assert errors == [
        "<yaml text>: document expands to more than 100000 values (aliases multiply what they "
        "repeat)"
    ]


def test_merge_key_bomb_stays_cheap() -> None:
    # Recent PyYAML dedupes merged keys; the loader also caps a merge at 100000 entries.
    lines = ["a: &a {x: 1, y: 2}"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} {{<<: [" + ", ".join([f"*{prev}"] * 9) + "]}")
    started = time.monotonic()
    errors = errors_of("seamless:\n" + "".join(f"  {line}\n" for line in lines))
    assert time.monotonic() - started < 2
    assert errors[0] == "seamless.a: unknown key; valid keys: " + ", ".join(
        sorted(f.name for f in dataclasses.fields(QMTLConfig().seamless))
    )


def test_aliases_and_merge_keys_work_for_ordinary_documents() -> None:
    text = (
        "exchanges:\n"
        "  binance: &common {symbols: [BTC/USDT], timeframes: [1m, 1h]}\n"
        "  okx: {<<: *common, sandbox: true}\n"
    )
    c = load_config(text, env={})
    assert c.node_ids("okx") == ("ohlcv:okx:BTC/USDT:1m", "ohlcv:okx:BTC/USDT:1h")
    assert c.exchanges["okx"].sandbox is True


def test_unreadable_sources(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert errors_of(missing) == [f"{missing}: cannot read the file: No such file or directory"]
    assert errors_of(tmp_path) == [f"{tmp_path}: cannot read the file: Is a directory"]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"cache: {ttl_ms: 1}\n\xff\xfe\x00")
    assert errors_of(binary) == [f"{binary}: file is not UTF-8 text (byte 19)"]
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (1 << 20) + b"\n")
    assert errors_of(huge) == [f"{huge}: file is larger than 1048576 bytes; refusing to parse it"]
    assert errors_of("#" * (1 << 20) + "\n") == [
        "<yaml text>: document is larger than 1048576 characters"
    ]


def test_recursive_mapping_source() -> None:
    raw: dict[str, object] = {}
    raw["cache"] = raw
    assert errors_of(raw) == ["(root): document refers to itself (a recursive alias)"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#%@ \t\n$0.,?")), max_size=80))
def test_arbitrary_text_never_escapes_as_another_exception(text: str) -> None:
    errors = ["(none)"]
    try:
        load_config(text + "\n", env={})
    except ConfigError as exc:
        errors = exc.errors
    assert errors
    assert all(isinstance(line, str) and line for line in errors)
