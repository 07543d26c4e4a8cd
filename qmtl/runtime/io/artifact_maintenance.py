"""Keeping an artifact store fast and honest: compaction and verification.

**Compaction** (:func:`compact`): many small publications make reads slow (one file per
backfill batch). ``compact(registrar, node_id, period="month")`` publishes, per calendar
period (UTC) and per contiguous published run inside it, one artifact whose bars are
exactly the union of what was published there (per bar, the newest artifact's), as a new
immutable artifact of kind ``compaction`` under ``compacted/``. Nothing is deleted: the small
ones stay readable at their ``as_of``; reads at a later ``as_of`` use the compacted file
(the newest artifact wins). A period already served by one artifact is left alone, and
compacting twice writes nothing new (same bars, same fingerprint).

**Verification** (:func:`verify`): every manifest's data file exists, has the recorded size
and SHA-256, and its bars have the recorded fingerprint and row count — so a flipped byte,
a truncated file or a swapped file is reported, one problem per line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from qmtl.runtime.io.artifact import ArtifactRegistrar
from qmtl.runtime.io.artifact_files import read_parquet_bars
from qmtl.runtime.io.artifact_read import parse_manifest
from qmtl.runtime.sdk.artifact_catalog import manifest_fingerprint_config
from qmtl.runtime.sdk.artifact_store import ArtifactNotFoundError
from qmtl.runtime.sdk.conformance import ConformanceReport
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.fingerprint import FingerprintMetadata, compute_fingerprint
from qmtl.runtime.sdk.history_coverage import Range, merge_ranges
from qmtl.runtime.sdk.node_id import parse_node_id

if TYPE_CHECKING:
    from qmtl.runtime.sdk.artifact_catalog import ArtifactEntry
    from qmtl.runtime.sdk.artifact_publisher import ArtifactPublication

__all__ = ["Period", "VerifyProblem", "compact", "period_ranges", "verify"]

Period = Literal["month", "year"]


def period_ranges(span: Range, period: Period) -> list[tuple[str, Range]]:
    """``span`` cut at calendar ``period`` boundaries (UTC), each piece with its label
    (``YYYY-MM`` or ``YYYY``)."""
    pieces: list[tuple[str, Range]] = []
    cursor = span.start
    while cursor < span.end:
        day = datetime.fromtimestamp(cursor, tz=UTC)
        if period == "month":
            label = f"{day.year:04d}-{day.month:02d}"
            year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
            boundary = datetime(year, month, 1, tzinfo=UTC)
        else:
            label = f"{day.year:04d}"
            boundary = datetime(day.year + 1, 1, 1, tzinfo=UTC)
        end = min(span.end, int(boundary.timestamp()))
        pieces.append((label, Range(cursor, end)))
        cursor = end
    return pieces


async def compact(
    registrar: ArtifactRegistrar, node_id: str, *, period: Period = "month"
) -> list[ArtifactPublication]:
    """Publish one compacted artifact per period and contiguous run (module docstring);
    returns what was published (empty when the node is already compact)."""
    if period not in ("month", "year"):
        raise ValueError(f"period must be 'month' or 'year', got {period!r}")
    interval = parse_node_id(node_id).interval
    catalog = await registrar.catalog(node_id)
    published: list[ArtifactPublication] = []
    for run in merge_ranges([e.range for e in catalog.entries], interval):
        for label, piece in period_ranges(run, period):
            if len({e.data_key for _, e in catalog.plan(piece)}) <= 1:
                continue  # one file serves it already
            read = await registrar.read(node_id, interval, piece)
            versions = {e.dataset_fingerprint for e in read.view.entries}
            report = ConformanceReport(
                flags={},
                warnings=[f"compaction of {len(versions)} artifacts"],
                version=_conformance_version(read.view.entries),
                rows_in=len(read.frame),
                rows_out=len(read.frame),
            )
            publication = await registrar.publish_compaction(
                read.frame, node_id=node_id, interval=interval, span=piece, period=label,
                conformance_report=report,
            )  # fmt: skip
            published.append(publication)
            catalog = await registrar.catalog(node_id)
    return published


def _conformance_version(entries: tuple[ArtifactEntry, ...]) -> str:
    from qmtl.runtime.sdk.conformance import CONFORMANCE_VERSION

    versions = {e.conformance_version for e in entries}
    return versions.pop() if len(versions) == 1 else CONFORMANCE_VERSION


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    """One thing wrong with one artifact: its manifest key and what is wrong."""

    node_id: str
    manifest_key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.node_id} {self.manifest_key}: {self.problem}"


async def verify(registrar: ArtifactRegistrar, node_id: str | None = None) -> list[VerifyProblem]:
    """Check every artifact of ``node_id`` (all nodes when ``None``): data present, size
    and SHA-256 as recorded, fingerprint and row count recomputed from the bars."""
    nodes = [node_id] if node_id is not None else await registrar.nodes()
    problems: list[VerifyProblem] = []
    for node in nodes:
        try:
            catalog = await registrar.catalog(node)
        except StorageError as exc:  # an unreadable manifest: a finding, not the end
            problems.append(VerifyProblem(node, "(catalog)", str(exc)))
            continue
        for entry in catalog.entries:
            problems += [
                VerifyProblem(node, entry.manifest_key, p) for p in await _check(registrar, entry)
            ]
    return problems


async def _check(registrar: ArtifactRegistrar, entry: ArtifactEntry) -> list[str]:
    import asyncio

    try:
        data = await registrar.store.get(entry.data_key)
    except ArtifactNotFoundError:
        return [f"data file {registrar.store.uri_of(entry.data_key)} is missing"]
    found: list[str] = []
    if len(data) != entry.data_bytes:
        found.append(f"data file has {len(data)} bytes, the manifest says {entry.data_bytes}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.data_sha256:
        found.append(f"data file sha256 {digest[:16]}... differs from the manifest's")
    try:
        bars = await asyncio.to_thread(read_parquet_bars, data)
    except Exception as exc:
        return [*found, f"data file does not decode as Parquet: {type(exc).__name__}: {exc}"]
    if len(bars) != entry.rows:
        found.append(f"data file has {len(bars)} rows, the manifest says {entry.rows}")
    meta = FingerprintMetadata(
        node_id=entry.node_id,
        interval=entry.interval,
        range=(entry.start, entry.end),
        conformance_version=entry.conformance_version,
    )
    try:  # the settings the fingerprint was computed with, not this reader's
        manifest = parse_manifest(await registrar.store.get(entry.manifest_key), entry.manifest_key)
        config = manifest_fingerprint_config(manifest)
    except (ArtifactNotFoundError, StorageError, ValueError) as exc:
        return [*found, f"the manifest's fingerprint settings are unreadable: {exc}"]
    recomputed = await asyncio.to_thread(compute_fingerprint, bars, meta, config=config)
    if recomputed != entry.dataset_fingerprint:
        found.append(
            f"recomputed fingerprint {recomputed} differs from {entry.dataset_fingerprint}"
        )
    return found
