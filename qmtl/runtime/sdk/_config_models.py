"""Section models of the configuration (re-exported by :mod:`qmtl.runtime.sdk.config`).

Each is a frozen, keyword-only dataclass whose ``__post_init__`` checks its own values and
raises ``ValueError("field: problem")``; the loader prefixes the key path. Checks that span
sections live in :mod:`qmtl.runtime.sdk._config_checks`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.conformance import ConformancePipeline
from qmtl.runtime.sdk.fingerprint import FingerprintConfig
from qmtl.runtime.sdk.history_coverage import DEFAULT_STABILIZATION_BARS
from qmtl.runtime.sdk.node_id import NodeId, parse_node_id
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig
from qmtl.runtime.sdk.sla import SLAPolicy

__all__ = [
    "DEFAULT_CACHE_KEY_TEMPLATE",
    "DEFAULT_NODE_ID_FORMAT",
    "DEFAULT_PARTITION_TEMPLATE",
    "DOMAIN_DEFAULTS",
    "DOMAIN_NAMES",
    "ArtifactConfig",
    "CacheConfig",
    "DomainPolicy",
    "DomainSource",
    "EnvironmentConfig",
    "LiveConfig",
    "LiveWsConfig",
    "ObservabilityConfig",
    "SeamlessSettings",
    "StorageConfig",
    "StrategyName",
    "placeholders",
]

StrategyName = Literal["FAIL_FAST", "AUTO_BACKFILL", "PARTIAL_FILL", "SEAMLESS"]
"""``DataAvailabilityStrategy`` member names: what a fetch does about missing bars."""

DomainSource = Literal[
    "artifact_only", "artifact_prefers", "storage_only", "storage_backfill", "storage_backfill_live"
]
"""Where a domain may read bars: ``artifact_only`` (published artifacts, a range without one
fails), ``artifact_prefers`` (artifacts first; fresh reads are published, then served from
them), ``storage_only`` (hot store, no backfill), ``storage_backfill`` (+ exchange backfill),
``storage_backfill_live`` (+ the live feed for the newest bars)."""

DEFAULT_NODE_ID_FORMAT = "ohlcv:{exchange}:{symbol}:{timeframe}"
DEFAULT_PARTITION_TEMPLATE = "exchange={exchange}/symbol={symbol}/timeframe={timeframe}"
DEFAULT_CACHE_KEY_TEMPLATE = (
    "{node_id}:{start}:{end}:{interval}:{conformance_version}:{world_id}:{as_of}"
)
_NODE_FIELDS = frozenset({"exchange", "symbol", "timeframe"})
_CACHE_FIELDS = frozenset(
    {"node_id", "start", "end", "interval", "conformance_version", "world_id", "as_of"}
)
_CACHE_REQUIRED = _CACHE_FIELDS - {"conformance_version"}
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_STORAGE_SCHEMES = "duckdb:///path/file.duckdb, postgresql://..., postgres://..."


def placeholders(template: str) -> set[str]:
    """Field names used by a ``str.format`` template; ``ValueError`` when malformed."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"malformed template {template!r}: {exc}") from None


def _template(name: str, value: str, allowed: frozenset[str], required: frozenset[str]) -> None:
    try:
        used = placeholders(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    unknown = used - allowed
    if unknown:
        raise ValueError(
            f"{name}: unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    missing = required - used
    if missing:
        raise ValueError(f"{name}: missing placeholder(s) {sorted(missing)}")


def _int_at_least(name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")


def _ratio(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be within [0, 1], got {value}")


def _url(name: str, value: str | None, schemes: tuple[str, ...]) -> None:
    if value is None:
        return
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        listed = ", ".join(f"{s}://" for s in schemes)
        raise ValueError(f"{name}: expected a URL starting with {listed}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageConfig:
    """Hot store: ``duckdb:///path`` (relative to the working directory; ``duckdb:///:memory:``
    for tests) or ``postgresql://`` / ``postgres://``."""

    dsn: str = "duckdb:///.qmtl/seamless.duckdb"
    """Where bars and their coverage ledger are kept: ``duckdb:///relative/file.duckdb``
    (relative to the working directory), ``duckdb:////absolute/file.duckdb``,
    ``duckdb:///:memory:`` (nothing kept; for tests) or
    ``postgresql://user:password@host:port/database`` (``postgres://`` also works)."""

    def __post_init__(self) -> None:
        scheme, sep, rest = self.dsn.partition("://")
        if not sep:
            raise ValueError(f"dsn: missing scheme in {self.dsn!r}; supported: {_STORAGE_SCHEMES}")
        if scheme == "duckdb":
            if not rest.startswith("/") or len(rest) < 2:
                raise ValueError(f"dsn: expected duckdb:///path/file.duckdb, got {self.dsn!r}")
        elif scheme in ("postgresql", "postgres"):
            if not rest:
                raise ValueError(f"dsn: {self.dsn!r} names no server or database")
        else:
            raise ValueError(f"dsn: unsupported scheme {scheme!r}; supported: {_STORAGE_SCHEMES}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ArtifactConfig:
    """Artifact publication. ``object_store_uri``: ``file://dir`` (``file://rel`` is
    relative to the working directory, ``file:///abs`` absolute) or ``s3://bucket/prefix``
    (``s3_endpoint_url`` for S3-compatible servers). ``publish_optional`` publishes also where
    publication is optional (live / shadow fetches and fetches without a domain); dryrun
    always publishes and backtest only reads. ``stabilization_bars`` is at least 1."""

    object_store_uri: str = "file://.qmtl/artifacts"
    """Where artifacts are published: ``file://dir`` (relative to the working directory),
    ``file:///absolute/dir`` or ``s3://bucket/prefix``."""
    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible server such as MinIO (``http://`` or ``https://``);
    null: the standard AWS endpoint."""
    format: Literal["parquet"] = "parquet"
    """File format of artifacts; only ``parquet``."""
    compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = "zstd"
    """Compression codec of the Parquet files."""
    stabilization_bars: int = DEFAULT_STABILIZATION_BARS
    """Bars that closed fewer than this many intervals ago are not final (an exchange may
    still publish or correct them): no artifact is sealed over them and an empty answer
    there is not recorded as "no data"; >= 1."""
    partition_template: str = DEFAULT_PARTITION_TEMPLATE
    """Directory of a series' artifacts under ``object_store_uri``: a relative path without
    ``..`` using ``{exchange}``, ``{symbol}`` and ``{timeframe}``."""
    publish_fingerprint: bool = True
    """Publish each artifact's dataset fingerprint; must stay true while a backtest or
    dryrun domain is configured (they serve only fingerprinted artifacts)."""
    early_fingerprint: bool = False
    """Also compute a preview fingerprint before an artifact is sealed (checked against the
    sealed one); needs ``publish_fingerprint: true``."""
    publish_optional: bool = False
    """Also publish where publication is optional: live and shadow fetches and fetches
    without a domain (dryrun always publishes, backtest only reads)."""
    fingerprint: FingerprintConfig = field(default_factory=FingerprintConfig)
    """How the dataset fingerprint of an artifact is computed."""

    def __post_init__(self) -> None:
        scheme, sep, rest = self.object_store_uri.partition("://")
        if scheme == "file" and sep:
            if not rest:
                raise ValueError("object_store_uri: file:// needs a directory")
        elif scheme == "s3" and sep:
            bucket = rest.partition("/")[0]
            if not _S3_BUCKET.fullmatch(bucket):
                raise ValueError(
                    f"object_store_uri: {self.object_store_uri!r} needs a valid bucket "
                    "(s3://bucket/prefix)"
                )
        else:
            raise ValueError(
                f"object_store_uri: unsupported destination {self.object_store_uri!r}; "
                "supported: file://directory, s3://bucket/prefix"
            )
        _url("s3_endpoint_url", self.s3_endpoint_url, ("http", "https"))
        _int_at_least("stabilization_bars", self.stabilization_bars, 1)
        _template("partition_template", self.partition_template, _NODE_FIELDS, frozenset())
        if self.partition_template.startswith("/") or ".." in self.partition_template:
            raise ValueError("partition_template: must be a relative path without '..'")


@dataclass(frozen=True, kw_only=True, slots=True)
class LiveWsConfig:
    """Websocket live feed. ``reconnect_backoff_ms``: successive reconnect delays (the last
    one repeats)."""

    enabled: bool = False
    """Use the exchange's websocket feed for the newest bars."""
    reconnect_backoff_ms: tuple[int, ...] = (500, 1000, 2000, 5000)
    """Delays (ms) before successive reconnect attempts; the last one repeats. Each > 0."""
    dedupe_by: Literal["ts"] = "ts"
    """How a bar the feed repeats is recognised: by its open time ``ts`` (the only choice)."""
    emit_building_candle: bool = False
    """Also deliver the still-forming bar; false: only closed bars."""

    def __post_init__(self) -> None:
        if not self.reconnect_backoff_ms or any(d <= 0 for d in self.reconnect_backoff_ms):
            raise ValueError("reconnect_backoff_ms: must be a non-empty list of delays > 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class LiveConfig:
    """Live feeds (the ``seamless.live`` block)."""

    ws: LiveWsConfig = field(default_factory=LiveWsConfig)
    """The exchange's websocket feed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ObservabilityConfig:
    """Alert thresholds (ratios in [0, 1], durations in ms) and the log format."""

    coverage_ratio_threshold: float = 0.98
    """Alert when a fetch serves less than this share of the bars it asked for; 0 to 1."""
    backfill_completion_ratio_min: float = 0.95
    """Alert when less than this share of backfill batches completes; 0 to 1."""
    storage_wait_warn_ms: float = 300
    """Warn when reading the hot store takes longer than this (ms); >= 0."""
    backfill_wait_warn_ms: float = 5000
    """Warn when waiting for a backfill takes longer than this (ms); >= 0."""
    log_format: Literal["text", "json"] = "text"
    """Log output: ``text`` (one line per warning or error, for people) or ``json`` (one
    JSON object per event, for log collectors)."""

    def __post_init__(self) -> None:
        _ratio("coverage_ratio_threshold", self.coverage_ratio_threshold)
        _ratio("backfill_completion_ratio_min", self.backfill_completion_ratio_min)
        for name in ("storage_wait_warn_ms", "backfill_wait_warn_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SeamlessSettings:
    """The ``seamless:`` section. ``conformance``, ``sla``, ``backfill``, ``rate_limit`` and
    ``artifact.fingerprint`` are the runtime objects themselves (``ConformancePipeline``,
    ``SLAPolicy``, ``BackfillConfig``, ``RateLimiterConfig``, ``FingerprintConfig``)."""

    node_id_format: str = DEFAULT_NODE_ID_FORMAT
    """How series are named (``{exchange}``, ``{symbol}``, ``{timeframe}``); it must
    produce the standard ids ``ohlcv:<exchange>:<symbol>:<timeframe>``."""
    strategy: StrategyName = "SEAMLESS"
    """What a fetch does about missing bars: ``FAIL_FAST`` (read the store only; missing
    bars are an error), ``AUTO_BACKFILL`` (fill every gap first, without a time budget),
    ``PARTIAL_FILL`` (serve what is stored now, fill the rest in the background) or
    ``SEAMLESS`` (fill gaps within the time budgets of ``seamless.sla``, the rest in the
    background)."""
    conformance: ConformancePipeline = field(default_factory=ConformancePipeline)
    """How bars are checked and normalized before they are stored or served."""
    sla: SLAPolicy = field(default_factory=SLAPolicy)
    """Time budgets of a fetch, and what happens when one runs out."""
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    """How missing ranges are cut into batches, fetched concurrently and retried."""
    rate_limit: RateLimiterConfig = field(default_factory=RateLimiterConfig)
    """Request budget of every exchange: a token bucket in the exchange's request-weight
    units, shared by every process using the same key (through Redis when one is set). An
    exchange's own ``rate_limit`` block or ``rate_limit_rps`` overrides it."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """The hot store: bars and the ledger of which ranges are covered."""
    artifact: ArtifactConfig = field(default_factory=ArtifactConfig)
    """Publication of immutable, fingerprinted Parquet artifacts."""
    live: LiveConfig = field(default_factory=LiveConfig)
    """Live feeds for the newest bars."""
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    """Alert thresholds and the log format."""

    def __post_init__(self) -> None:
        _template("node_id_format", self.node_id_format, _NODE_FIELDS, _NODE_FIELDS)
        sample = NodeId(exchange="binance", symbol="BTC/USDT", timeframe="1m")
        rendered = self.node_id_format.format(
            exchange=sample.exchange, symbol=sample.symbol, timeframe=sample.timeframe
        )
        try:
            same = parse_node_id(rendered) == sample
        except ValueError:
            same = False
        if not same:
            raise ValueError(
                f"node_id_format: must render node ids {DEFAULT_NODE_ID_FORMAT!r}, "
                f"got {rendered!r} for binance BTC/USDT 1m"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheConfig:
    """Result cache: LRU of ``max_shards`` entries, each valid ``ttl_ms``. The key
    template must keep ``node_id, start, end, interval, world_id, as_of`` so that entries
    never cross a world or an ``as_of``."""

    enable: bool = True
    """Keep fetch results in memory and answer repeated identical fetches from there."""
    ttl_ms: int = 60_000
    """How long a cached result stays valid (ms); >= 1."""
    max_shards: int = 512
    """Most results kept; the least recently used go first; >= 1."""
    key_template: str = DEFAULT_CACHE_KEY_TEMPLATE
    """Cache key, from ``{node_id}``, ``{start}``, ``{end}``, ``{interval}``,
    ``{conformance_version}``, ``{world_id}`` and ``{as_of}``; all but
    ``{conformance_version}`` are required, so that entries never cross a world or an
    ``as_of``."""

    def __post_init__(self) -> None:
        _int_at_least("ttl_ms", self.ttl_ms, 1)
        _int_at_least("max_shards", self.max_shards, 1)
        _template("key_template", self.key_template, _CACHE_FIELDS, _CACHE_REQUIRED)


@dataclass(frozen=True, kw_only=True, slots=True)
class DomainPolicy:
    """One execution domain's rules. ``max_lag_sec``: staleness beyond it is a HOLD
    (``None``: unchecked); ``min_coverage``: coverage below it is a HOLD (``None``: the SLA
    default). Field defaults are permissive; :data:`DOMAIN_DEFAULTS` holds each domain's."""

    require_as_of: bool = False
    """A fetch must name the ``as_of`` (data version) it reads; true is required for
    backtest and dryrun."""
    source: DomainSource = "storage_backfill_live"
    """Where bars may come from: ``artifact_only`` (published artifacts; a range without
    one fails), ``artifact_prefers`` (artifacts first; fresh reads are published, then
    served from them), ``storage_only`` (the hot store, no backfill), ``storage_backfill``
    (plus backfill from the exchange) or ``storage_backfill_live`` (plus the live feed for
    the newest bars). backtest must be ``artifact_only``, dryrun ``artifact_only`` or
    ``artifact_prefers``."""
    max_lag_sec: float | None = None
    """Data more than this many seconds behind now is served marked HOLD (not to be acted
    on); > 0; null: staleness is not checked."""
    allow_partial: bool = True
    """Serve a result that still misses bars (marked partial); false: missing bars make
    the fetch fail."""
    monotonic_as_of: bool = False
    """The ``as_of`` of successive fetches of a series may never go backwards; a
    regression is served marked HOLD."""
    min_coverage: float | None = None
    """Coverage (share of the requested bars present) below this is served marked HOLD;
    0 to 1; null: ``seamless.sla.min_coverage``."""

    def __post_init__(self) -> None:
        if self.max_lag_sec is not None and self.max_lag_sec <= 0:
            raise ValueError(f"max_lag_sec: must be > 0 or null, got {self.max_lag_sec}")
        _ratio("min_coverage", self.min_coverage)


DOMAIN_NAMES = ("backtest", "dryrun", "live", "shadow")
_LIVE = DomainPolicy(max_lag_sec=120, allow_partial=True, monotonic_as_of=True)
DOMAIN_DEFAULTS: Mapping[str, DomainPolicy] = MappingProxyType(
    {
        "backtest": DomainPolicy(require_as_of=True, source="artifact_only", allow_partial=False),
        "dryrun": DomainPolicy(require_as_of=True, source="artifact_prefers", allow_partial=False),
        "live": _LIVE,
        "shadow": _LIVE,
    }
)
"""Per-domain defaults; keys a ``domains.<name>`` block omits take these values."""


@dataclass(frozen=True, kw_only=True, slots=True)
class EnvironmentConfig:
    """Deployment endpoints. ``None`` means "not used": no coordinator (in-process single
    flight), no Redis (process-local limiter). ``worker_id`` names this worker in logs and
    leases."""

    coordinator_url: str | None = None
    """Backfill coordinator (``http://`` or ``https://``) that hands out windows so that
    two workers never fill the same one; null: backfills are shared within this process
    only."""
    coordinator_token: str | None = field(default=None, repr=False)
    """Credential sent to the coordinator; never printed; null: none."""
    rate_limiter_redis: str | None = None
    """Redis server (``redis://``, ``rediss://`` or ``unix://``) for every rate limit whose
    ``redis_dsn`` is null, so that all processes share one budget per key; null:
    process-local budgets."""
    worker_id: str | None = None
    """Name of this worker in logs and leases: 1-128 printable characters without spaces;
    null: the ``HOSTNAME`` environment variable."""

    def __post_init__(self) -> None:
        _url("coordinator_url", self.coordinator_url, ("http", "https"))
        if self.rate_limiter_redis is not None:
            try:
                RateLimiterConfig(redis_dsn=self.rate_limiter_redis)
            except ValueError as exc:
                raise ValueError(f"rate_limiter_redis: {str(exc).partition(': ')[2]}") from None
        if self.worker_id is not None and (
            not self.worker_id
            or len(self.worker_id) > 128
            or any(ch.isspace() or not ch.isprintable() for ch in self.worker_id)
        ):
            raise ValueError(
                "worker_id: must be 1-128 printable characters without spaces, "
                f"got {self.worker_id!r}"
            )
