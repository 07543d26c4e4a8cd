"""What a fetch returns: the conformed frame and the metadata that says what it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qmtl.runtime.sdk.history_coverage import Range

if TYPE_CHECKING:
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
    """A conformed canonical frame and the metadata that says what it is."""

    frame: pd.DataFrame
    metadata: SeamlessFetchMetadata

    def __len__(self) -> int:
        return len(self.frame)

    def to_arrow(self) -> pa.Table:
        import pyarrow as pa

        return pa.Table.from_pandas(self.frame, preserve_index=False)
