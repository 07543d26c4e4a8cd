"""Repairing artifacts: put a damaged or lost data file back, byte for byte, from the hot store.

:func:`~qmtl.runtime.io.artifact_maintenance.verify` names a data file that is missing, has
the wrong size or SHA-256, does not decode, or whose bars do not recompute to the manifest's
fingerprint. Publishing the same bars again cannot fix it: the catalog says the range is
published, so the registrar returns the existing publication, and the stores create objects
once. But a data file's bytes are a pure function of its bars, its identity and the encoding
(:func:`~qmtl.runtime.io.artifact_files.data_file_bytes`), and its bars came from the hot
store. :func:`repair` therefore rebuilds the file, for each artifact ``verify`` flags:

1. read the bars of the manifest's node and half-open range ``[start, end)`` (epoch seconds)
   from the hot store, and conform them as publication did (the same
   :class:`~qmtl.runtime.sdk.conformance.ConformancePipeline`, the same ``ts`` cut);
2. recompute the dataset fingerprint with the manifest's fingerprint settings and
   conformance version. It must be the manifest's; otherwise the hot store no longer holds
   the published bars (some are gone, or were rewritten since) and nothing is written;
3. encode them exactly as the registrar does. The manifest records the file's SHA-256 but
   not its compression, so the registrar's compression is tried first, then the others; the
   encoding whose SHA-256 is the manifest's is kept. None (the file was written by another
   encoder, e.g. another pyarrow version) means nothing is written;
4. :meth:`~qmtl.runtime.sdk.artifact_store.ArtifactStore.restore` the bytes under the
   manifest's data key, with the manifest's SHA-256 (the store checks it once more).

Manifests are never written: after a repair the store holds exactly what its manifests
promised at publication, which is why a restore does not break immutability. A repair run
concurrently with publications is safe for the same reason (it can only write bytes some
manifest already names). An unreadable manifest cannot be repaired here (its data key is
unknown); it is reported, as ``verify`` reports it.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from qmtl.runtime.io.artifact_files import COMPRESSIONS, data_file_bytes
from qmtl.runtime.io.artifact_maintenance import verify
from qmtl.runtime.io.artifact_read import parse_manifest
from qmtl.runtime.sdk.artifact_catalog import manifest_fingerprint_config
from qmtl.runtime.sdk.artifact_store import ArtifactNotFoundError
from qmtl.runtime.sdk.conformance import ConformancePipeline
from qmtl.runtime.sdk.errors import ConformanceError
from qmtl.runtime.sdk.fingerprint import FingerprintConfig, FingerprintMetadata, compute_fingerprint
from qmtl.runtime.sdk.node_id import parse_node_id
from qmtl.runtime.sdk.timestamps import format_iso

if TYPE_CHECKING:
    import pandas as pd

    from qmtl.runtime.io.artifact import ArtifactRegistrar
    from qmtl.runtime.sdk.artifact_catalog import ArtifactEntry
    from qmtl.runtime.sdk.history_storage import HistoryStorage

__all__ = ["CATALOG_PROBLEM", "RepairAction", "RepairResult", "repair"]

RepairAction = Literal["restored", "would restore", "not repairable"]
#: The manifest key ``verify`` reports for a node whose manifests cannot be read.
CATALOG_PROBLEM = "(catalog)"


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What was wrong with one artifact and what :func:`repair` did about it.

    ``manifest_key`` and ``data_key`` are keys in the artifact store (``manifest_key`` is
    :data:`CATALOG_PROBLEM` and ``data_key`` ``""`` for a node whose manifests cannot be
    read); ``problems`` are ``verify``'s findings; ``action`` is ``"restored"``, ``"would
    restore"`` (a dry run) or ``"not repairable"``; ``reason`` says why, for people."""

    node_id: str
    manifest_key: str
    data_key: str
    problems: tuple[str, ...]
    action: RepairAction
    reason: str

    @property
    def repairable(self) -> bool:
        """Restored, or would be by a run that writes."""
        return self.action != "not repairable"

    def __str__(self) -> str:
        return f"{self.node_id} {self.data_key or self.manifest_key}: {self.action}: {self.reason}"


async def repair(
    registrar: ArtifactRegistrar,
    storage: HistoryStorage,
    node_id: str | None = None,
    *,
    dry_run: bool = False,
    conformance: ConformancePipeline | None = None,
) -> list[RepairResult]:
    """Restore every data file ``verify`` flags among the artifacts of ``node_id`` (every
    node when ``None``) from the bars in ``storage`` (module docstring). One result per
    flagged artifact, in ``verify``'s order; ``[]`` when nothing is damaged. ``dry_run``:
    everything but the write. ``conformance``: the pipeline publication used (default:
    the library's). A malformed ``node_id`` is a ``ValueError``; a failing store raises
    :class:`~qmtl.runtime.sdk.errors.StorageError`."""
    if node_id is not None:
        parse_node_id(node_id)  # before any I/O
    pipeline = conformance or ConformancePipeline()
    flagged: dict[tuple[str, str], list[str]] = {}
    for problem in await verify(registrar, node_id):
        flagged.setdefault((problem.node_id, problem.manifest_key), []).append(problem.problem)
    results: list[RepairResult] = []
    for (node, key), problems in flagged.items():
        if key == CATALOG_PROBLEM:
            reason = "its manifests cannot be read, and repair restores data files only"
            results.append(RepairResult(node, key, "", tuple(problems), "not repairable", reason))
            continue
        entry = next(e for e in (await registrar.catalog(node)).entries if e.manifest_key == key)
        action, reason = await _repair_one(registrar, storage, pipeline, entry, dry_run)
        results.append(RepairResult(node, key, entry.data_key, tuple(problems), action, reason))
    return results


async def _repair_one(
    registrar: ArtifactRegistrar,
    storage: HistoryStorage,
    pipeline: ConformancePipeline,
    entry: ArtifactEntry,
    dry_run: bool,
) -> tuple[RepairAction, str]:
    store = registrar.store
    span = f"[{format_iso(entry.start)}, {format_iso(entry.end)})"
    manifest = parse_manifest(await store.get(entry.manifest_key), entry.manifest_key)
    try:
        config = manifest_fingerprint_config(manifest)
    except ValueError as exc:
        return "not repairable", f"the manifest's fingerprint settings are unusable: {exc}"
    if entry.conformance_version != pipeline.version:
        return "not repairable", (
            f"published with conformance {entry.conformance_version}, and this build "
            f"conforms with {pipeline.version}"
        )
    if await _intact(registrar, entry):
        return "not repairable", (
            "the data file holds exactly the bytes its manifest names (same SHA-256): there "
            "is nothing to put back (the manifest itself disagrees with its file)"
        )
    raw = await storage.read_range(entry.node_id, entry.start, entry.end)
    try:
        bars, fingerprint = await asyncio.to_thread(_conformed, raw, pipeline, entry, config)
    except ConformanceError as exc:
        return "not repairable", f"the hot store's bars of {span} do not conform: {exc}"
    if fingerprint != entry.dataset_fingerprint:
        if len(bars) < entry.rows:
            return "not repairable", (
                f"the hot store lacks bars of {span}: it holds {len(bars):,} of the "
                f"{entry.rows:,} published"
            )
        return "not repairable", (
            f"the hot store's bars of {span} differ from the published ones (fingerprint "
            f"{fingerprint[:15]}... is not the manifest's {entry.dataset_fingerprint[:15]}...)"
        )
    encoded = await asyncio.to_thread(_encode, bars, entry, registrar.compression)
    if encoded is None:
        return "not repairable", (
            f"the hot store holds the published bars of {span} (fingerprint as recorded), but "
            f"no compression ({', '.join(COMPRESSIONS)}) encodes them to the manifest's "
            f"SHA-256 with pyarrow {pa.__version__}: another encoder (pyarrow version?) "
            "wrote the file"
        )
    data, compression = encoded
    done = f"{len(bars):,} bars of {span} from the hot store, {compression}: {len(data):,} bytes"
    if dry_run:
        return "would restore", f"would re-encode {done}, SHA-256 as recorded"
    await store.restore(entry.data_key, data, expected_sha256=entry.data_sha256)
    return "restored", f"re-encoded {done}, SHA-256 as recorded"


async def _intact(registrar: ArtifactRegistrar, entry: ArtifactEntry) -> bool:
    """Whether the data file's bytes are the manifest's (by SHA-256)."""
    try:
        data = await registrar.store.get(entry.data_key)
    except ArtifactNotFoundError:
        return False
    digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return digest == entry.data_sha256


def _conformed(
    raw: pd.DataFrame,
    pipeline: ConformancePipeline,
    entry: ArtifactEntry,
    config: FingerprintConfig,
) -> tuple[pd.DataFrame, str]:
    """The bars publication would have published from ``raw`` (conformed, cut to the
    artifact's range as the registrar cuts them) and their fingerprint."""
    frame, _ = pipeline.normalize(raw, entry.interval)
    ts = frame["ts"].to_numpy()
    bars = frame.loc[(ts >= entry.start) & (ts < entry.end)].reset_index(drop=True)
    meta = FingerprintMetadata(
        node_id=entry.node_id,
        interval=entry.interval,
        range=(entry.start, entry.end),
        conformance_version=entry.conformance_version,
    )
    return bars, compute_fingerprint(bars, meta, config=config)


def _encode(bars: pd.DataFrame, entry: ArtifactEntry, first: str) -> tuple[bytes, str] | None:
    """The data file of ``entry`` encoded from ``bars`` with the first compression (``first``,
    then the others) whose bytes have the manifest's SHA-256, and that compression."""
    for compression in dict.fromkeys((first, *COMPRESSIONS)):
        data = data_file_bytes(
            bars,
            node_id=entry.node_id,
            interval=entry.interval,
            span=(entry.start, entry.end),
            fingerprint=entry.dataset_fingerprint,
            compression=compression,
        )
        if hashlib.sha256(data).hexdigest() == entry.data_sha256:
            return data, compression
    return None
