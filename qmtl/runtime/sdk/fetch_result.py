"""What a fetch returns: the conformed frame and the metadata that says what it is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.timestamps import format_iso

if TYPE_CHECKING:
    import os

    import pandas as pd
    import pyarrow as pa

__all__ = ["SeamlessFetchMetadata", "SeamlessFetchResult"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SeamlessFetchMetadata:
    """What a fetch served. Ranges are half-open epoch seconds; ``as_of`` values are ISO-8601
    UTC; durations in milliseconds. ``dataset_fingerprint`` identifies exactly the bars
    served; ``missing_ranges`` is what is still missing after this fetch."""

    node_id: str
    interval: int
    requested_range: Range
    rows: int
    coverage_bounds: Range | None
    missing_ranges: tuple[Range, ...]
    coverage_ratio: float
    conformance_flags: dict[str, int]
    conformance_warnings: tuple[str, ...]
    conformance_version: str
    dataset_fingerprint: str | None
    as_of: str | None
    requested_as_of: str | None
    manifest_uri: str | None
    artifacts: tuple[str, ...]
    strategy: str
    partial: bool
    downgraded: bool
    downgrade_mode: str | None
    downgrade_reason: str | None
    sla_violation: str | None
    sla_phases_ms: dict[str, float]
    staleness_ms: float | None
    world_id: str | None
    execution_domain: str | None
    cache_key: str | None
    backfill_errors: tuple[str, ...] = ()
    live_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (ranges as ``[start, end]`` pairs)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Range):
                value = [value.start, value.end]
            elif isinstance(value, tuple) and value and isinstance(value[0], Range):
                value = [[r.start, r.end] for r in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class SeamlessFetchResult:
    """A conformed canonical frame and the metadata that says what it is.

    ``frame`` has the canonical columns ``ts, open, high, low, close, volume`` with ``ts`` the
    bar open time in int64 epoch seconds (UTC) and a plain ``RangeIndex``;
    :meth:`to_pandas` gives a ``DatetimeIndex`` copy. Exports (:meth:`to_arrow`,
    :meth:`to_parquet`) carry :meth:`provenance` as Parquet key-value metadata, so a file
    says which bars it holds without its producer."""

    frame: pd.DataFrame
    metadata: SeamlessFetchMetadata

    def __len__(self) -> int:
        return len(self.frame)

    def to_pandas(self, *, datetime_index: bool = False) -> pd.DataFrame:
        """A copy of the frame; with ``datetime_index`` it is indexed by a tz-aware UTC
        ``DatetimeIndex`` named ``time`` (the bar open time; ``ts`` is kept as a column)."""
        import pandas as pd

        frame = self.frame.copy()
        if datetime_index:
            frame.index = pd.DatetimeIndex(pd.to_datetime(frame["ts"], unit="s", utc=True))
            frame.index.name = "time"
        return frame

    def provenance(self) -> dict[str, str]:
        """What the bars are, as text key-value pairs (Parquet key-value metadata, the CSV
        sidecar): ``node_id``, ``interval`` (s), ``start``/``end`` (the requested half-open
        range, epoch s) and their ``*_iso`` forms, ``dataset_fingerprint``, ``as_of`` (empty
        when none), ``conformance_version``, ``coverage_ratio``, ``missing_ranges`` (JSON list
        of ``[start, end]``), ``rows``, ``producer`` and ``producer_version``."""
        from qmtl import __version__

        meta = self.metadata
        window = meta.requested_range
        return {
            "node_id": meta.node_id,
            "interval": str(meta.interval),
            "start": str(window.start),
            "end": str(window.end),
            "start_iso": format_iso(window.start),
            "end_iso": format_iso(window.end),
            "dataset_fingerprint": meta.dataset_fingerprint or "",
            "as_of": meta.as_of or "",
            "conformance_version": meta.conformance_version,
            "coverage_ratio": repr(meta.coverage_ratio),
            "missing_ranges": json.dumps([[r.start, r.end] for r in meta.missing_ranges]),
            "rows": str(meta.rows),
            "producer": "qmtl-seamless",
            "producer_version": __version__,
        }

    def to_arrow(self) -> pa.Table:
        """The frame as an Arrow table whose schema metadata holds :meth:`provenance`."""
        import pyarrow as pa

        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        extra = {k.encode(): v.encode() for k, v in self.provenance().items()}
        return table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})

    def to_parquet(self, path: str | os.PathLike[str], *, compression: str = "zstd") -> None:
        """Write the frame to Parquet with :meth:`provenance` in the file's key-value
        metadata (``pyarrow.parquet.read_schema(path).metadata``). Blocking file I/O."""
        import pyarrow.parquet as pq

        pq.write_table(self.to_arrow(), path, compression=compression)
