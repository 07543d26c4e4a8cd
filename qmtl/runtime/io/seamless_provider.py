"""``EnhancedQuestDBProvider``: the provider users construct — storage by DSN, backfill
through ccxt, everything from one YAML file if wanted.

The name is QMTL's; the hot store is chosen by ``dsn``: ``duckdb:///path/file.duckdb`` (the
default, ``./.qmtl/seamless.duckdb``) or ``postgresql://...``. QuestDB through its PostgreSQL
wire endpoint is a stated aim, untested until a QuestDB server is available.

``registrar=None`` wires the default :class:`~qmtl.runtime.io.artifact.ArtifactRegistrar`
of ``seamless.artifact`` (``./.qmtl/artifacts`` unless configured; stabilization of at
least one bar): it serves fetches pinned to an ``as_of`` and publishes what fetches served
when publication applies (``dryrun``, or ``publish_optional`` / ``QMTL_SEAMLESS_ARTIFACTS``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qmtl.runtime.io.auto_backfiller import DataFetcherAutoBackfiller
from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.sdk.backfill_types import ArchiveSource, DataFetcher, FetchWindowResult
from qmtl.runtime.sdk.cache import ResultCache
from qmtl.runtime.sdk.clock import SystemClock
from qmtl.runtime.sdk.config import ArtifactConfig, QMTLConfig, load_config
from qmtl.runtime.sdk.history_coverage import DEFAULT_STABILIZATION_BARS
from qmtl.runtime.sdk.node_id import parse_node_id
from qmtl.runtime.sdk.seamless_data_provider import DataAvailabilityStrategy, SeamlessDataProvider

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from qmtl.runtime.sdk.archive_plan import ArchiveWindow
    from qmtl.runtime.sdk.artifact_publisher import ArtifactPublisher
    from qmtl.runtime.sdk.backfill_config import BackfillConfig
    from qmtl.runtime.sdk.backfill_coordinator import BackfillCoordinator
    from qmtl.runtime.sdk.clock import Clock
    from qmtl.runtime.sdk.conformance import ConformancePipeline
    from qmtl.runtime.sdk.history_coverage import Range
    from qmtl.runtime.sdk.live_feed import LiveDataFeed
    from qmtl.runtime.sdk.metrics import SeamlessMetrics
    from qmtl.runtime.sdk.sla import SLAPolicy

__all__ = ["ArchiveRouter", "EnhancedQuestDBProvider", "ExchangeRouter"]


class ExchangeRouter:
    """A :class:`DataFetcher` that sends each node to the fetcher of its exchange."""

    def __init__(self, fetchers: Mapping[str, DataFetcher]) -> None:
        self.fetchers = dict(fetchers)

    async def fetch_window(
        self, start: int, end: int, *, node_id: str, interval: int
    ) -> FetchWindowResult:
        exchange = parse_node_id(node_id).exchange
        fetcher = self.fetchers.get(exchange)
        if fetcher is None:
            raise ValueError(
                f"no fetcher for exchange {exchange!r} (configured: {sorted(self.fetchers)})"
            )
        return await fetcher.fetch_window(start, end, node_id=node_id, interval=interval)

    @property
    def archive(self) -> ArchiveRouter | None:
        """The members' bulk archives, routed the same way (``None`` when none has one)."""
        archives = {
            exchange: archive
            for exchange, fetcher in self.fetchers.items()
            if (archive := getattr(fetcher, "archive", None)) is not None
        }
        return ArchiveRouter(archives) if archives else None

    async def aclose(self) -> None:
        for fetcher in self.fetchers.values():
            close = getattr(fetcher, "aclose", None)
            if close is not None:
                await close()


class ArchiveRouter:
    """An :class:`ArchiveSource` over the archives of several exchanges: each node goes to
    its exchange's (a node of an exchange without one plans nothing)."""

    def __init__(self, archives: Mapping[str, ArchiveSource]) -> None:
        self.archives = dict(archives)
        self.max_concurrent_downloads = max(a.max_concurrent_downloads for a in archives.values())

    async def archive_windows(
        self, node_id: str, interval: int, missing: Sequence[Range]
    ) -> list[ArchiveWindow]:
        archive = self.archives.get(parse_node_id(node_id).exchange)
        return [] if archive is None else await archive.archive_windows(node_id, interval, missing)

    async def read_archive(
        self, node_id: str, interval: int, window: ArchiveWindow
    ) -> pd.DataFrame:
        return await self.archives[parse_node_id(node_id).exchange].read_archive(
            node_id, interval, window
        )


class EnhancedQuestDBProvider(SeamlessDataProvider):
    """Storage by DSN + ccxt backfill + the engine. ``async with`` it, or ``await aclose()``
    to stop background backfills and close the fetcher, the store and the ``coordinator``
    (its batches claim their leases from it: :mod:`~qmtl.runtime.io.batch_leases`)."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        fetcher: DataFetcher,
        strategy: DataAvailabilityStrategy | str = DataAvailabilityStrategy.SEAMLESS,
        sla: SLAPolicy | None = None,
        conformance: ConformancePipeline | None = None,
        partial_ok: bool = True,
        registrar: ArtifactPublisher | None = None,
        coordinator: BackfillCoordinator | None = None,
        config: QMTLConfig | None = None,
        backfill_config: BackfillConfig | None = None,
        live_feed: LiveDataFeed | None = None,
        clock: Clock | None = None,
        metrics: SeamlessMetrics | None = None,
    ) -> None:
        settings = config.seamless if config is not None else None
        if settings is not None:
            dsn = dsn or settings.storage.dsn
            sla = sla or settings.sla
            conformance = conformance or settings.conformance
            backfill_config = backfill_config or settings.backfill
        artifact = settings.artifact if settings is not None else ArtifactConfig()
        domains = config.domains if config is not None else None
        cache = None
        if config is not None and config.cache.enable:
            cache = ResultCache(config.cache, clock=clock or SystemClock())
        if registrar is None:  # the default one: stamps provenance, stabilization >= 1
            from qmtl.runtime.io.composition import build_registrar

            registrar = build_registrar(artifact, clock=clock, metrics=metrics)
        storage = open_storage(dsn)
        self.fetcher = fetcher
        backfiller = DataFetcherAutoBackfiller(
            fetcher,
            storage,
            config=backfill_config,
            conformance=conformance,
            clock=clock,
            metrics=metrics,
            stabilization_bars=(
                settings.artifact.stabilization_bars if settings else DEFAULT_STABILIZATION_BARS
            ),
            coordinator=coordinator,
            lease_ms=(
                backfill_config.distributed_lease_ttl_ms if backfill_config is not None else None
            ),
            observability=settings.observability if settings is not None else None,
        )
        self.auto_backfiller = backfiller
        super().__init__(
            strategy=strategy,
            storage=storage,
            backfiller=backfiller,
            live_feed=live_feed,
            conformance=conformance,
            sla=sla,
            partial_ok=partial_ok,
            registrar=registrar,
            backfill_config=backfill_config,
            coordinator=coordinator,
            clock=clock,
            metrics=metrics,
            publish_fingerprint=artifact.publish_fingerprint,
            early_fingerprint=artifact.early_fingerprint,
            publish_optional=artifact.publish_optional,
            domains=domains,
            cache=cache,
            observability=settings.observability if settings is not None else None,
        )

    @classmethod
    def from_config(
        cls,
        path_or_config: str | os.PathLike[str] | Mapping[str, Any] | QMTLConfig,
        *,
        env: Mapping[str, str] | None = None,
        strategy: DataAvailabilityStrategy | str | None = None,
        clock: Clock | None = None,
        metrics: SeamlessMetrics | None = None,
    ) -> EnhancedQuestDBProvider:
        """Build storage, one ccxt fetcher per configured exchange, SLA, backfill and
        strategy from the YAML configuration (``docs/configuration.md``: a path, a mapping or a
        loaded config)
        through the composition root; an explicit ``strategy`` wins over the file."""
        from qmtl.runtime.io.composition import build_provider

        config = (
            path_or_config
            if isinstance(path_or_config, QMTLConfig)
            else load_config(path_or_config, env=env)
        )
        return build_provider(config, strategy=strategy, clock=clock, metrics=metrics)

    async def aclose(self) -> None:
        await super().aclose()
        if self.live_feed is not None:  # first: its reconnects heal through the backfiller
            await self.live_feed.aclose()
        await self.auto_backfiller.aclose()  # before the client closes under its batches
        close_coordinator = getattr(self.coordinator, "aclose", None)
        if close_coordinator is not None:
            await close_coordinator()
        close = getattr(self.fetcher, "aclose", None)
        if close is not None:
            await close()
        await self.storage.close()
        close_registrar = getattr(self.registrar, "close", None)
        if close_registrar is not None:
            await close_registrar()

    async def __aenter__(self) -> EnhancedQuestDBProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
