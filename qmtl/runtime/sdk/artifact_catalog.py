"""Manifests and the per-node catalog they form (pure: no I/O).

A **manifest** is the JSON document written after an artifact's data file: what the bars are
(node, interval, half-open range in epoch seconds, rows, dataset fingerprint), when they were
published (``as_of``, ISO-8601 UTC with milliseconds and ``Z``), how (conformance, the
stabilization, the producer) and where (data and manifest URIs, byte size, SHA-256 of the data
file). It is written with sorted keys and no insignificant whitespace, so the same session
with the same clock writes the same bytes.

The **catalog** of a node is its manifests ordered by ``as_of``. What a fetch pinned to
``as_of`` T may serve is the *visible* part — manifests published at or before T — and, for
each bar, the newest visible artifact holding it (:meth:`ArtifactCatalog.plan`). A later
publication therefore never changes what an earlier ``as_of`` sees.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from qmtl.runtime.sdk.artifact_keys import as_of_from_ms, as_of_to_ms
from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS
from qmtl.runtime.sdk.fingerprint import FingerprintConfig
from qmtl.runtime.sdk.history_coverage import Range, merge_ranges, subtract_ranges

if TYPE_CHECKING:
    from qmtl.runtime.sdk.conformance import ConformanceReport

__all__ = [
    "MANIFEST_FORMAT",
    "ArtifactCatalog",
    "ArtifactEntry",
    "ArtifactKind",
    "build_manifest",
    "manifest_bytes",
    "manifest_fingerprint_config",
]

#: Version of the manifest document (bumped when a field changes meaning).
MANIFEST_FORMAT = 1
ArtifactKind = Literal["publication", "compaction"]
#: The data file's columns and their Arrow types (the canonical bar schema).
SCHEMA = [[name, "int64" if name == "ts" else "float64"] for name in CANONICAL_COLUMNS]


def build_manifest(
    *,
    kind: ArtifactKind,
    period: str | None,
    fingerprint: str,
    as_of_ms: int,
    node_id: str,
    interval: int,
    span: Range,
    requested: Range,
    rows: int,
    report: ConformanceReport,
    stabilization_bars: int,
    watermark_ms: int,
    producer: Mapping[str, Any],
    preview: str | None,
    early: bool,
    fingerprint_settings: Mapping[str, Any],
    storage: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest of one publication (module docstring); ranges are ``[start, end]``
    epoch seconds, instants ISO-8601 UTC with milliseconds."""
    expected = span.bars(interval)
    return {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "period": period,
        "dataset_fingerprint": fingerprint,
        "as_of": as_of_from_ms(as_of_ms),
        "node_id": node_id,
        "interval": interval,
        "range": [span.start, span.end],
        "requested_range": [requested.start, requested.end],
        "row_count": rows,
        "coverage": {"bars_in_range": expected, "ratio": rows / expected if expected else 1.0},
        "conformance_version": report.version,
        "conformance": {
            "flags": dict(sorted(report.flags.items())),
            "warnings": list(report.warnings),
        },
        "stabilization_bars": stabilization_bars,
        "publication_watermark": as_of_from_ms(watermark_ms),
        "producer": dict(producer),
        "fingerprint": dict(fingerprint_settings),
        "fingerprint_mode": "early" if early else "publish",
        "preview_fingerprint": preview,
        "storage": dict(storage),
        "schema": {"columns": SCHEMA, "ts": "bar open time, epoch seconds UTC"},
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The canonical serialization: sorted keys, compact separators, ASCII, one newline."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode() + b"\n"


def manifest_fingerprint_config(manifest: Mapping[str, Any]) -> FingerprintConfig:
    """The fingerprint settings a manifest records (``fingerprint``: ``algo``, ``columns``,
    ``normalize_nan``) — what its ``dataset_fingerprint`` was computed with, whatever the
    reader's own settings are; ``ValueError`` when they are missing or not supported."""
    settings = manifest.get("fingerprint")
    keys = ("algo", "columns", "normalize_nan")
    if not isinstance(settings, dict) or any(k not in settings for k in keys):
        raise ValueError(f"expected an object with {', '.join(keys)}, got {settings!r:.120}")
    columns = settings["columns"]
    if not isinstance(columns, list):
        raise ValueError(f"columns must be a list, got {columns!r:.120}")
    return FingerprintConfig(
        algo=settings["algo"],
        include_columns=tuple(columns),
        normalize_nan=settings["normalize_nan"],
    )


@dataclass(frozen=True, slots=True)
class ArtifactEntry:
    """One manifest, as the catalog needs it. ``start``/``end`` in epoch seconds, ``as_of_ms``
    in epoch milliseconds; ``data_key``/``manifest_key`` are keys in the artifact store."""

    node_id: str
    interval: int
    start: int
    end: int
    rows: int
    dataset_fingerprint: str
    as_of_ms: int
    kind: ArtifactKind
    data_key: str
    manifest_key: str
    data_bytes: int
    data_sha256: str
    conformance_version: str

    @property
    def range(self) -> Range:
        return Range(self.start, self.end)

    @property
    def as_of(self) -> str:
        return as_of_from_ms(self.as_of_ms)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], manifest_key: str) -> ArtifactEntry:
        """The entry of a parsed manifest; ``ValueError`` naming the first bad field."""
        try:
            start, end = (int(v) for v in manifest["range"])
            storage = manifest["storage"]
            kind = manifest.get("kind", "publication")
            if kind not in ("publication", "compaction"):
                raise ValueError(f"unknown kind {kind!r}")
            return cls(
                node_id=str(manifest["node_id"]),
                interval=int(manifest["interval"]),
                start=start,
                end=end,
                rows=int(manifest["row_count"]),
                dataset_fingerprint=str(manifest["dataset_fingerprint"]),
                as_of_ms=as_of_to_ms(str(manifest["as_of"])),
                kind=kind,
                data_key=str(storage["data_key"]),
                manifest_key=manifest_key,
                data_bytes=int(storage["bytes"]),
                data_sha256=str(storage["sha256"]),
                conformance_version=str(manifest["conformance_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"manifest {manifest_key}: malformed ({exc!r})") from None


@dataclass(frozen=True, slots=True)
class ArtifactCatalog:
    """Every manifest of one node, sorted by ``as_of`` (then fingerprint)."""

    node_id: str
    entries: tuple[ArtifactEntry, ...] = ()

    @classmethod
    def of(cls, node_id: str, entries: Sequence[ArtifactEntry]) -> ArtifactCatalog:
        ordered = sorted(entries, key=lambda e: (e.as_of_ms, e.dataset_fingerprint))
        return cls(node_id, tuple(ordered))

    def with_entry(self, entry: ArtifactEntry) -> ArtifactCatalog:
        return ArtifactCatalog.of(self.node_id, [*self.entries, entry])

    @property
    def last_as_of_ms(self) -> int | None:
        return self.entries[-1].as_of_ms if self.entries else None

    def next_as_of_ms(self, now_ms: int) -> int:
        """The ``as_of`` of the next publication: now, but strictly after the last one (per
        node ``as_of`` never goes backwards, and no two publications share one)."""
        last = self.last_as_of_ms
        return now_ms if last is None or now_ms > last else last + 1

    def visible(self, as_of_ms: int | None = None) -> list[ArtifactEntry]:
        """The manifests published at or before ``as_of_ms`` (all when ``None``)."""
        if as_of_ms is None:
            return list(self.entries)
        # entries are sorted by as_of: the visible ones are a prefix
        return list(self.entries[: bisect_right(self.entries, as_of_ms, key=lambda e: e.as_of_ms)])

    def by_fingerprint(self, fingerprint: str) -> ArtifactEntry | None:
        return next((e for e in self.entries if e.dataset_fingerprint == fingerprint), None)

    def published(self, interval: int, as_of_ms: int | None = None) -> list[Range]:
        """The ranges the visible artifacts cover, merged."""
        return merge_ranges([e.range for e in self.visible(as_of_ms)], interval)

    def plan(self, window: Range, as_of_ms: int | None = None) -> list[tuple[Range, ArtifactEntry]]:
        """Which artifact serves which part of ``window``: for each part, the newest visible
        artifact holding it; sorted by start. Parts no visible artifact holds are missing."""
        # The uncovered parts of the window: disjoint, sorted, as parallel bound lists, so
        # each artifact finds the parts it overlaps by bisection (thousands of small
        # artifacts cost no more than their count).
        starts, ends = ([window.start], [window.end]) if not window.empty else ([], [])
        chosen: list[tuple[Range, ArtifactEntry]] = []
        for entry in reversed(self.visible(as_of_ms)):
            if not starts:
                break
            first = bisect_right(ends, entry.start)  # parts ending after the entry starts
            last = bisect_left(starts, entry.end)  # parts starting before the entry ends
            if first >= last or entry.start >= entry.end:
                continue
            left_starts: list[int] = []
            left_ends: list[int] = []
            for start, end in zip(starts[first:last], ends[first:last], strict=True):
                lo, hi = max(start, entry.start), min(end, entry.end)
                chosen.append((Range(lo, hi), entry))
                if start < lo:
                    left_starts.append(start)
                    left_ends.append(lo)
                if hi < end:
                    left_starts.append(hi)
                    left_ends.append(end)
            starts[first:last], ends[first:last] = left_starts, left_ends
        return sorted(chosen, key=lambda item: item[0].start)

    def missing(self, window: Range, interval: int, as_of_ms: int | None = None) -> list[Range]:
        """The parts of ``window`` no visible artifact holds."""
        return (
            subtract_ranges([window], self.published(interval, as_of_ms))
            if not window.empty
            else []
        )
