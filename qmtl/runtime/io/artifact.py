"""``ArtifactRegistrar``: publishes stabilized bars as immutable, fingerprinted Parquet
artifacts with a JSON manifest, and reads them back as of any publication instant.

Publication (:meth:`ArtifactRegistrar.publish`), in this order:

1. **Stabilization, once, here**: bars whose close lies within ``stabilization_bars``
   intervals of the publication watermark (now, by the injected clock) are left out; nothing
   stable, nothing published.
2. The canonical fingerprint of exactly the published bars and their range
   (:mod:`qmtl.runtime.sdk.fingerprint`). A fingerprint the node already published means
   the same content: its existing publication is returned and nothing is written.
3. The data file (Parquet, ``compression``; the bytes depend only on the bars and their
   identity, never on the clock) is created under its key, never overwritten; if the key
   exists with other bytes, that is a fingerprint collision: counted
   (``fingerprint_collisions``) and refused (:class:`ArtifactCollisionError`).
4. The manifest is created last. An artifact is visible only through its manifest, so a
   crash between the two leaves nothing visible, and the next publish of the same bars
   finds the data file identical and completes it.

``as_of`` is the manifest's publication instant (ISO-8601 UTC, milliseconds, ``Z``),
strictly increasing per node. :meth:`ArtifactRegistrar.read` serves a window as of any
instant: per bar, the newest artifact published at or before it (``artifact_catalog``).
Layout and names: :mod:`qmtl.runtime.sdk.artifact_keys`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pandas as pd

from qmtl import __version__
from qmtl.runtime.io.artifact_files import COMPRESSIONS, data_file_bytes
from qmtl.runtime.io.artifact_read import (
    artifact_view,
    covering_catalog,
    load_entries,
    merge_entries,
    parse_manifest,
    read_frame,
)
from qmtl.runtime.sdk.artifact_catalog import (
    ArtifactCatalog,
    ArtifactEntry,
    ArtifactKind,
    build_manifest,
    manifest_bytes,
)
from qmtl.runtime.sdk.artifact_keys import (
    MANIFEST_PREFIX,
    as_of_from_ms,
    as_of_to_ms,
    compacted_key,
    data_key,
    manifest_key,
    manifest_prefix,
)
from qmtl.runtime.sdk.artifact_publisher import ArtifactPublication, ArtifactRead, ArtifactView
from qmtl.runtime.sdk.artifact_store import ArtifactStore
from qmtl.runtime.sdk.bars import BarColumns
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.config import DEFAULT_PARTITION_TEMPLATE
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.events import (
    ARTIFACT_PUBLISHED,
    AS_OF_ADVANCED,
    FINGERPRINT_PREVIEW_MISMATCH,
    log_event,
)
from qmtl.runtime.sdk.fingerprint import FingerprintConfig, FingerprintMetadata, compute_fingerprint
from qmtl.runtime.sdk.history_coverage import DEFAULT_STABILIZATION_BARS, Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics
from qmtl.runtime.sdk.node_id import check_interval

if TYPE_CHECKING:
    from qmtl.runtime.sdk.conformance import ConformanceReport

__all__ = ["ArtifactCollisionError", "ArtifactRegistrar"]

logger = logging.getLogger(__name__)

_COMPRESSIONS = frozenset(COMPRESSIONS)
#: Decoded data files kept in memory (they are immutable, so a cached copy is never stale).
_TABLE_CACHE = 64


class ArtifactCollisionError(StorageError):
    """A data file with this fingerprint's name exists with different bytes: refused."""


def _stable_end(watermark: float, interval: int, stabilization_bars: int) -> int:
    """The end of the stable bars: the last grid point at or before the watermark minus
    ``stabilization_bars`` intervals (a bar is stable when its close is at or before it)."""
    cut = int(watermark) - stabilization_bars * interval
    aligned = Range.aligned(0, max(cut, 0), interval).end  # ceiling onto the bar grid
    return aligned if aligned <= cut else aligned - interval


class ArtifactRegistrar:
    """Publishes and reads artifacts in ``store`` (module docstring). One instance may be
    shared by the tasks of one event loop."""

    def __init__(
        self,
        store: ArtifactStore,
        *,
        stabilization_bars: int = DEFAULT_STABILIZATION_BARS,
        producer_identity: str = "seamless@qmtl",
        publish_fingerprint: bool = True,
        early_fingerprint: bool = False,
        partition_template: str = DEFAULT_PARTITION_TEMPLATE,
        compression: str = "zstd",
        clock: Clock | None = None,
        metrics: SeamlessMetrics | None = None,
        fingerprint_config: FingerprintConfig | None = None,
        worker_id: str | None = None,
    ) -> None:
        if isinstance(stabilization_bars, bool) or not isinstance(stabilization_bars, int):
            raise ValueError(f"stabilization_bars must be an int >= 1, got {stabilization_bars!r}")
        if stabilization_bars < 1:
            raise ValueError(
                "stabilization_bars must be >= 1: the newest bar may still change on the "
                f"exchange, got {stabilization_bars}"
            )
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSIONS)}")
        self.store = store
        self.stabilization_bars = stabilization_bars
        self.producer_identity = producer_identity
        self.publish_fingerprint = publish_fingerprint
        self.early_fingerprint = early_fingerprint
        self.partition_template = partition_template
        self.compression = compression
        self.clock = clock or SystemClock()
        self.metrics = metrics or default_metrics()
        self.fingerprint_config = fingerprint_config or FingerprintConfig()
        self.worker_id = worker_id or socket.gethostname()
        self.host = socket.gethostname()
        self._catalogs: dict[str, ArtifactCatalog] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tables: OrderedDict[str, BarColumns] = OrderedDict()

    # -- catalog ----------------------------------------------------------------------------

    async def catalog(self, node_id: str) -> ArtifactCatalog:
        """Every manifest of ``node_id`` in the store (other processes' included), read
        once each: manifests are immutable, so only new keys are fetched (this also completes
        the partial catalog a read may have left, :mod:`~qmtl.runtime.io.artifact_read`)."""
        known = self._catalogs.get(node_id) or ArtifactCatalog(node_id)
        have = {e.manifest_key for e in known.entries}
        new = [k for k in await self.store.list(manifest_prefix(node_id)) if k not in have]
        if new:
            entries = await load_entries(self.store, new)
            # with whatever other tasks of this registrar cached meanwhile
            known = merge_entries(node_id, self._catalogs.get(node_id), [*known.entries, *entries])
            self._catalogs[node_id] = known
        return known

    async def nodes(self) -> list[str]:
        """Every node id with at least one manifest."""
        keys = await self.store.list(f"{MANIFEST_PREFIX}/")
        return sorted({unquote(k.split("/")[1]) for k in keys if k.count("/") >= 2})

    async def resolve(self, node_id: str, as_of: str | int | None = None) -> list[dict[str, Any]]:
        """The manifests of ``node_id`` visible at ``as_of`` (ISO-8601 or epoch ms; all
        when ``None``), oldest first."""
        catalog = await self.catalog(node_id)
        entries = catalog.visible(_as_of_ms(as_of))
        documents = await asyncio.gather(*(self.store.get(e.manifest_key) for e in entries))
        return [parse_manifest(d, e.manifest_key) for d, e in zip(documents, entries, strict=True)]

    # -- publish ----------------------------------------------------------------------------

    async def publish(
        self,
        frame: pd.DataFrame,
        *,
        node_id: str,
        interval: int,
        requested_range: Range,
        conformance_report: ConformanceReport,
        world_id: str | None = None,
        execution_domain: str | None = None,
    ) -> ArtifactPublication | None:
        """Publish the stable bars of ``frame`` within ``requested_range`` (module
        docstring); ``None`` when nothing is stable or ``publish_fingerprint`` is off."""
        if not self.publish_fingerprint:
            return None
        check_interval(node_id, interval)
        # The node's collision counter exists at 0 from its first publication, so that an
        # alert's increase() sees the first collision (a series born at 1 hides it).
        self.metrics.fingerprint_collisions.labels(node_id=node_id)
        watermark = self.clock.now()
        end = min(requested_range.end, _stable_end(watermark, interval, self.stabilization_bars))
        if end <= requested_range.start:
            return None
        sealed = Range(requested_range.start, end)
        preview = None
        if self.early_fingerprint:
            preview = self._fingerprint(
                frame, node_id, interval, requested_range, conformance_report
            )
        ts = frame["ts"].to_numpy()
        bars = frame.loc[(ts >= sealed.start) & (ts < sealed.end)].reset_index(drop=True)
        return await self._publish(
            bars,
            node_id=node_id,
            interval=interval,
            span=sealed,
            requested=requested_range,
            conformance_report=conformance_report,
            watermark=watermark,
            preview=preview,
            kind="publication",
            world_id=world_id,
            execution_domain=execution_domain,
        )

    async def publish_compaction(
        self,
        frame: pd.DataFrame,
        *,
        node_id: str,
        interval: int,
        span: Range,
        period: str,
        conformance_report: ConformanceReport,
    ) -> ArtifactPublication:
        """Publish ``frame`` (the bars of already published artifacts) as the compacted
        artifact of ``span`` (:mod:`qmtl.runtime.io.artifact_maintenance`): no
        stabilization — published bars are stable by definition."""
        return await self._publish(
            frame,
            node_id=node_id,
            interval=interval,
            span=span,
            requested=span,
            conformance_report=conformance_report,
            watermark=self.clock.now(),
            preview=None,
            kind="compaction",
            world_id=None,
            execution_domain=None,
            period=period,
        )

    def _fingerprint(
        self,
        frame: pd.DataFrame,
        node_id: str,
        interval: int,
        span: Range,
        report: ConformanceReport,
    ) -> str:
        meta = FingerprintMetadata(
            node_id=node_id,
            interval=interval,
            range=(span.start, span.end),
            conformance_version=report.version,
        )
        return compute_fingerprint(frame, meta, config=self.fingerprint_config)

    async def _publish(
        self,
        bars: pd.DataFrame,
        *,
        node_id: str,
        interval: int,
        span: Range,
        requested: Range,
        conformance_report: ConformanceReport,
        watermark: float,
        preview: str | None,
        kind: ArtifactKind,
        world_id: str | None,
        execution_domain: str | None,
        period: str | None = None,
    ) -> ArtifactPublication:
        started = time.perf_counter()
        fingerprint = await asyncio.to_thread(
            self._fingerprint, bars, node_id, interval, span, conformance_report
        )
        if preview is not None and preview != fingerprint:
            log_event(
                logger,
                FINGERPRINT_PREVIEW_MISMATCH,
                level=logging.INFO,
                node_id=node_id,
                preview_fingerprint=preview,
                dataset_fingerprint=fingerprint,
            )
        lock = self._locks.setdefault(node_id, asyncio.Lock())
        async with lock:  # one publication of a node at a time: as_of stays monotonic
            catalog = await self.catalog(node_id)
            existing = catalog.by_fingerprint(fingerprint)
            if existing is not None:
                return await self._publication(existing)
            data = await asyncio.to_thread(
                data_file_bytes,
                bars,
                node_id=node_id,
                interval=interval,
                span=(span.start, span.end),
                fingerprint=fingerprint,
                compression=self.compression,
            )
            sha256 = hashlib.sha256(data).hexdigest()
            if kind == "compaction":
                assert period is not None
                key = compacted_key(
                    self.partition_template, node_id, period, span.start, span.end, fingerprint
                )
            else:
                key = data_key(self.partition_template, node_id, span.start, span.end, fingerprint)
            await self._put_data(key, data, sha256, node_id)
            as_of_ms = catalog.next_as_of_ms(int(watermark * 1000))
            previous = catalog.last_as_of_ms
            m_key = manifest_key(node_id, as_of_ms, fingerprint)
            manifest = build_manifest(
                kind=kind,
                period=period,
                fingerprint=fingerprint,
                as_of_ms=as_of_ms,
                node_id=node_id,
                interval=interval,
                span=span,
                requested=requested,
                rows=len(bars),
                report=conformance_report,
                stabilization_bars=self.stabilization_bars,
                watermark_ms=int(watermark * 1000),
                producer={
                    "identity": self.producer_identity,
                    "version": __version__,
                    "host": self.host,
                    "worker_id": self.worker_id,
                    "world_id": world_id,
                    "execution_domain": execution_domain,
                },
                preview=preview if self.early_fingerprint else None,
                fingerprint_settings={
                    "algo": self.fingerprint_config.algo,
                    "columns": list(self.fingerprint_config.include_columns),
                    "normalize_nan": self.fingerprint_config.normalize_nan,
                },
                early=self.early_fingerprint,
                storage={
                    "data_key": key,
                    "data_uri": self.store.uri_of(key),
                    "manifest_uri": self.store.uri_of(m_key),
                    "bytes": len(data),
                    "sha256": sha256,
                },
            )
            if not await self.store.put_new(m_key, manifest_bytes(manifest)):
                # another process published the same bars in the same millisecond: its
                # manifest is the one that exists, and the one to report
                manifest = parse_manifest(await self.store.get(m_key), m_key)
            entry = ArtifactEntry.from_manifest(manifest, m_key)
            self._catalogs[node_id] = catalog.with_entry(entry)
        self.metrics.artifact_publish_latency_ms.labels(node_id=node_id).observe(
            (time.perf_counter() - started) * 1000.0
        )
        self.metrics.artifact_bytes_written.labels(node_id=node_id).inc(len(data))
        self.metrics.as_of_advancement_events.labels(node_id=node_id, world_id=world_id or "").inc()
        log_event(
            logger,
            ARTIFACT_PUBLISHED,
            node_id=node_id,
            dataset_fingerprint=fingerprint,
            as_of=entry.as_of,
            rows=entry.rows,
            bytes=len(data),
            kind=kind,
        )
        log_event(
            logger,
            AS_OF_ADVANCED,
            node_id=node_id,
            world_id=world_id,
            previous=None if previous is None else as_of_from_ms(previous),
            current=entry.as_of,
        )
        return ArtifactPublication(
            dataset_fingerprint=fingerprint,
            as_of=entry.as_of,
            node_id=node_id,
            start=span.start,
            end=span.end,
            rows=entry.rows,
            uri=self.store.uri_of(key),
            manifest_uri=self.store.uri_of(m_key),
            manifest=manifest,
        )

    async def _put_data(self, key: str, data: bytes, sha256: str, node_id: str) -> None:
        if await self.store.put_new(key, data):
            return
        existing = await self.store.get(key)  # a crash before its manifest, or a collision
        if hashlib.sha256(existing).hexdigest() != sha256:
            self.metrics.fingerprint_collisions.labels(node_id=node_id).inc()
            raise ArtifactCollisionError(
                f"artifact {self.store.uri_of(key)} exists with different bytes for the same "
                "fingerprint: refused"
            )

    async def _publication(self, entry: ArtifactEntry) -> ArtifactPublication:
        manifest = parse_manifest(await self.store.get(entry.manifest_key), entry.manifest_key)
        return ArtifactPublication(
            dataset_fingerprint=entry.dataset_fingerprint,
            as_of=entry.as_of,
            node_id=entry.node_id,
            start=entry.start,
            end=entry.end,
            rows=entry.rows,
            uri=self.store.uri_of(entry.data_key),
            manifest_uri=self.store.uri_of(entry.manifest_key),
            manifest=manifest,
        )

    # -- read -------------------------------------------------------------------------------

    async def view(
        self, node_id: str, interval: int, window: Range, *, as_of: str | int | None = None
    ) -> ArtifactView:
        """Which artifacts serve ``window`` as of ``as_of`` (nothing read but manifests)."""
        as_of_ms = _as_of_ms(as_of)
        catalog = await covering_catalog(
            self.store, self._catalogs, node_id, window, interval, as_of_ms, full=self.catalog
        )
        return artifact_view(self.store, catalog, window, interval, as_of_ms)

    async def read(
        self, node_id: str, interval: int, window: Range, *, as_of: str | int | None = None
    ) -> ArtifactRead:
        """The bars of ``window`` as of ``as_of`` (ISO-8601 or epoch ms; ``None``: now): only
        the manifests that serve it are read (:mod:`~qmtl.runtime.io.artifact_read`)."""
        check_interval(node_id, interval)
        as_of_ms = _as_of_ms(as_of)
        catalog = await covering_catalog(
            self.store, self._catalogs, node_id, window, interval, as_of_ms, full=self.catalog
        )
        plan = catalog.plan(window, as_of_ms)
        view = artifact_view(self.store, catalog, window, interval, as_of_ms, plan)
        return ArtifactRead(await self._table(plan), view)

    async def _table(self, plan: list[tuple[Range, ArtifactEntry]]) -> pd.DataFrame:
        """The bars of ``plan``: decoded files are cached (immutable, so never stale), the
        rest fetched and decoded (:func:`~qmtl.runtime.io.artifact_read.read_frame`)."""
        cached: dict[str, BarColumns] = {}
        for _, entry in plan:
            columns = self._tables.get(entry.data_key)
            if columns is not None:
                self._tables.move_to_end(entry.data_key)
                cached[entry.data_key] = columns
        frame, decoded = await read_frame(self.store, plan, cached)
        self._tables.update(decoded)
        while len(self._tables) > _TABLE_CACHE:
            self._tables.popitem(last=False)
        return frame

    async def close(self) -> None:
        await self.store.close()


def _as_of_ms(as_of: str | int | None) -> int | None:
    if as_of is None or isinstance(as_of, int):
        return as_of
    return as_of_to_ms(as_of)
