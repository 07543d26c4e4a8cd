"""The composition root: the one place that turns settings into runtime objects.

Settings are read once — :func:`~qmtl.runtime.sdk.config.load_config` is the only reader of
files and environment variables — and everything else is built here from the resulting
:class:`~qmtl.runtime.sdk.config.QMTLConfig`: one :class:`CcxtOHLCVFetcher` per configured
exchange (its :class:`CcxtBackfillConfig` derived from the exchange's entry), their limiter
settings, and the provider (which opens the store and wires the backfiller and the engine).

Explicit arguments override the file and the environment: :func:`with_overrides`
applies a ``--dsn`` and an ``--exchange-url`` to a loaded config; :func:`config_for_nodes`
makes the config of a command run without a file. :func:`check_runtime` reports, without
connecting anything, every problem building the runtime would raise — what ``config check``
runs, so that it accepts exactly what ``backfill`` accepts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields, replace
from typing import TYPE_CHECKING

from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.sdk._config_exchange import (
    DEFAULT_ARCHIVE_BASE_URL,
    ArchiveConfig,
    ExchangeAccess,
    ExchangeConfig,
    ExchangeUrls,
)
from qmtl.runtime.sdk.config import QMTLConfig, StorageConfig
from qmtl.runtime.sdk.node_id import parse_node_id

if TYPE_CHECKING:
    from qmtl.runtime.io.artifact import ArtifactRegistrar
    from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
    from qmtl.runtime.sdk.clock import Clock
    from qmtl.runtime.sdk.config import ArtifactConfig
    from qmtl.runtime.sdk.history_coverage import Range
    from qmtl.runtime.sdk.live_feed import HealGap, LiveDataFeed
    from qmtl.runtime.sdk.metrics import SeamlessMetrics

__all__ = [
    "build_fetchers",
    "build_live_feed",
    "build_provider",
    "build_registrar",
    "check_runtime",
    "config_for_nodes",
    "fetcher_config",
    "with_overrides",
]


def fetcher_config(config: QMTLConfig, exchange_id: str) -> CcxtBackfillConfig:
    """The fetcher settings of one configured exchange: its access fields as written, its
    URLs, its first timeframe and its effective limiter (:meth:`QMTLConfig.rate_limiter_for`)."""
    entry = config.exchanges[exchange_id]
    access = {f.name: getattr(entry, f.name) for f in fields(ExchangeAccess)}
    return CcxtBackfillConfig(
        exchange_id=exchange_id,
        timeframe=entry.timeframes[0],
        urls=entry.urls,
        rate_limiter=config.rate_limiter_for(exchange_id),
        **access,
    )


def build_fetchers(
    config: QMTLConfig, *, clock: Clock | None = None, metrics: SeamlessMetrics | None = None
) -> dict[str, CcxtOHLCVFetcher]:
    """One fetcher per configured exchange (nothing connects until the first request)."""
    return {
        exchange_id: CcxtOHLCVFetcher(
            fetcher_config(config, exchange_id),
            clock=clock,
            metrics=metrics,
            stabilization_bars=config.seamless.artifact.stabilization_bars,
        )
        for exchange_id in config.exchanges
    }


def build_registrar(
    artifact: ArtifactConfig,
    *,
    worker_id: str | None = None,
    clock: Clock | None = None,
    metrics: SeamlessMetrics | None = None,
) -> ArtifactRegistrar:
    """The artifact registrar of ``seamless.artifact``: its store (``object_store_uri``, a
    local directory or ``s3://bucket/prefix`` with ``s3_endpoint_url``), stabilization,
    fingerprint toggles and settings, partition template and compression. Opens nothing
    until the first publication or read."""
    from qmtl.runtime.io.artifact import ArtifactRegistrar
    from qmtl.runtime.io.artifact_stores import open_artifact_store

    if artifact.format != "parquet":  # the one format; the setting names it for readers
        raise ValueError(f"seamless.artifact.format: unsupported {artifact.format!r}")
    store = open_artifact_store(artifact.object_store_uri, s3_endpoint_url=artifact.s3_endpoint_url)
    return ArtifactRegistrar(
        store,
        stabilization_bars=artifact.stabilization_bars,
        publish_fingerprint=artifact.publish_fingerprint,
        early_fingerprint=artifact.early_fingerprint,
        partition_template=artifact.partition_template,
        compression=artifact.compression,
        clock=clock,
        metrics=metrics,
        fingerprint_config=artifact.fingerprint,
        worker_id=worker_id,
    )


def build_provider(
    config: QMTLConfig,
    *,
    strategy: str | None = None,
    clock: Clock | None = None,
    metrics: SeamlessMetrics | None = None,
) -> EnhancedQuestDBProvider:
    """The provider of ``config``: its store, one fetcher per exchange behind an
    :class:`ExchangeRouter`, its SLA, backfill and conformance settings; ``strategy`` wins
    over ``seamless.strategy``; with ``environment.coordinator_url``, a
    :class:`~qmtl.runtime.io.coordinator_client.DistributedBackfillCoordinator` its batches
    claim their leases from. Opens nothing yet (safe before ``asyncio.run``)."""
    from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider, ExchangeRouter

    router = ExchangeRouter(build_fetchers(config, clock=clock, metrics=metrics))
    environment = config.environment
    coordinator = None
    if environment.coordinator_url:
        from qmtl.runtime.io.coordinator_client import DistributedBackfillCoordinator

        coordinator = DistributedBackfillCoordinator(
            environment.coordinator_url,
            token=environment.coordinator_token,
            worker_id=environment.worker_id,
            clock=clock,
        )
    registrar = build_registrar(
        config.seamless.artifact,
        worker_id=config.environment.worker_id,
        clock=clock,
        metrics=metrics,
    )

    async def heal(node_id: str, interval: int, span: Range) -> tuple[Range, ...]:
        report = await provider.auto_backfiller.backfill(node_id, interval, [span])
        return tuple(report.failed)

    live_feed = (
        build_live_feed(config, heal=heal, clock=clock) if config.seamless.live.ws.enabled else None
    )
    provider = EnhancedQuestDBProvider(
        fetcher=router,
        registrar=registrar,
        coordinator=coordinator,
        live_feed=live_feed,
        strategy=strategy or config.seamless.strategy,
        config=config,
        clock=clock,
        metrics=metrics,
    )
    return provider


def build_live_feed(
    config: QMTLConfig, *, heal: HealGap | None = None, clock: Clock | None = None
) -> LiveDataFeed:
    """The websocket live feed of ``config``'s exchanges (``seamless.live.ws``: reconnect
    ladder, forming bars); a span it misses while reconnecting goes to ``heal`` (the
    provider's backfiller, so no hole is left)."""
    from qmtl.runtime.io.ccxt_live_feed import CcxtLiveFeed

    return CcxtLiveFeed(config, heal=heal, clock=clock)


def with_overrides(
    config: QMTLConfig,
    *,
    dsn: str | None = None,
    exchange_url: str | None = None,
    ws_url: str | None = None,
) -> QMTLConfig:
    """``config`` with explicit arguments applied over it: ``dsn`` replaces
    ``seamless.storage.dsn``; ``exchange_url`` replaces ``exchanges.<id>.urls.rest`` and
    ``ws_url`` ``exchanges.<id>.urls.ws`` of every configured exchange (each keeps the other),
    and ``ws_url`` also turns the websocket live feed on (``seamless.live.ws.enabled``); an
    archive base URL left at Binance's own follows ``exchange_url``. ``ValueError`` for a bad
    value."""
    seamless = config.seamless
    if dsn is not None:
        seamless = replace(seamless, storage=StorageConfig(dsn=dsn))
    if ws_url is not None:
        seamless = replace(
            seamless, live=replace(seamless.live, ws=replace(seamless.live.ws, enabled=True))
        )
    if exchange_url is not None or ws_url is not None:
        exchanges = {
            exchange_id: replace(
                entry,
                urls=ExchangeUrls(
                    rest=exchange_url or (entry.urls.rest if entry.urls is not None else None),
                    ws=ws_url or (entry.urls.ws if entry.urls is not None else None),
                ),
                archive=_archive_at(entry.archive, exchange_url),
            )
            for exchange_id, entry in config.exchanges.items()
        }
        config = replace(config, exchanges=exchanges)
    return replace(config, seamless=seamless)


def _archive_at(archive: ArchiveConfig, exchange_url: str | None) -> ArchiveConfig:
    """The archive settings under ``--exchange-url``: a base URL left at Binance's own
    follows the exchange URL (the simulator serves its archive on the same port); one the
    configuration names stays."""
    if exchange_url is None or archive.base_url != DEFAULT_ARCHIVE_BASE_URL:
        return archive
    return replace(archive, base_url=exchange_url)


def config_for_nodes(
    node_ids: Iterable[str],
    *,
    dsn: str | None = None,
    exchange_url: str | None = None,
    ws_url: str | None = None,
) -> QMTLConfig:
    """The configuration of a command run without a file: the nodes' exchanges with their
    symbols and timeframes, the default settings otherwise, then :func:`with_overrides`."""
    exchanges: dict[str, dict[str, list[str]]] = {}
    for text in node_ids:
        node = parse_node_id(text)
        entry = exchanges.setdefault(node.exchange, {"symbols": [], "timeframes": []})
        if node.symbol not in entry["symbols"]:
            entry["symbols"].append(node.symbol)
        if node.timeframe not in entry["timeframes"]:
            entry["timeframes"].append(node.timeframe)
    config = QMTLConfig(
        exchanges={
            exchange_id: ExchangeConfig(
                symbols=tuple(entry["symbols"]), timeframes=tuple(entry["timeframes"])
            )
            for exchange_id, entry in exchanges.items()
        }
    )
    return with_overrides(config, dsn=dsn, exchange_url=exchange_url, ws_url=ws_url)


def check_runtime(config: QMTLConfig) -> list[str]:
    """Every problem building ``config``'s runtime would raise, as ``"<key.path>: <problem>"``
    lines — unknown ccxt exchange ids (with the nearest valid ones), page sizes the exchange
    does not serve, URLs ccxt cannot use — without connecting to anything."""
    problems: list[str] = []
    for exchange_id in config.exchanges:
        try:
            fetcher_config(config, exchange_id)
        except ValueError as exc:
            field_name, _, problem = str(exc).partition(": ")
            where = f"exchanges.{exchange_id}"
            if field_name != "exchange_id":
                where += f".{field_name}"
            problems.append(f"{where}: {problem or exc}")
    return problems
