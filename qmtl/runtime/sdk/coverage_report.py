"""What the store holds for one node over a window: :class:`CoverageReport` (pure).

Built from the coverage ledger alone (no bars are read): ``DATA`` segments are stored bars,
``EMPTY`` segments are *known-empty* (the exchange proved it has no bars there: before a
listing, a halt), and everything else in the window is *missing* (never fetched, or the fetch
failed). ``provider.coverage_report(...)`` returns one; the CLI's ``coverage`` prints one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qmtl.runtime.sdk.history_coverage import (
    CoverageSegment,
    Range,
    SegmentKind,
    compute_missing_ranges,
)
from qmtl.runtime.sdk.node_id import parse_node_id
from qmtl.runtime.sdk.timestamps import format_iso

__all__ = ["CoverageReport", "build_coverage_report"]


@dataclass(frozen=True, slots=True)
class CoverageReport:
    """Coverage of ``node_id`` over ``window`` (half-open epoch seconds): bars by kind, the
    missing ranges, and the ledger segments clipped to the window."""

    node_id: str
    window: Range
    data_bars: int
    empty_bars: int
    missing: tuple[Range, ...]
    segments: tuple[CoverageSegment, ...]

    @property
    def interval(self) -> int:
        """Bar length in seconds (from the node id's timeframe)."""
        return parse_node_id(self.node_id).interval

    @property
    def missing_bars(self) -> int:
        return sum(r.bars(self.interval) for r in self.missing)

    @property
    def ratio(self) -> float:
        """Bars stored or known-empty ÷ bars in the window; 1.0 for an empty window."""
        total = self.window.bars(self.interval)
        return 1.0 if total == 0 else (total - self.missing_bars) / total

    @property
    def complete(self) -> bool:
        """Nothing missing, and the ledger says something about the window."""
        return not self.missing and bool(self.segments)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ranges as ``[start, end]`` epoch pairs, with ISO-8601 beside them."""
        return {
            "node_id": self.node_id,
            "window": [self.window.start, self.window.end],
            "window_iso": [format_iso(self.window.start), format_iso(self.window.end)],
            "data_bars": self.data_bars,
            "known_empty_bars": self.empty_bars,
            "missing_bars": self.missing_bars,
            "missing": [[r.start, r.end] for r in self.missing],
            "missing_iso": [[format_iso(r.start), format_iso(r.end)] for r in self.missing],
            "coverage_ratio": self.ratio,
            "segments": [
                {
                    "start": s.start,
                    "end": s.end,
                    "start_iso": format_iso(s.start),
                    "end_iso": format_iso(s.end),
                    "kind": s.kind.value,
                    "source": s.source,
                    "fetched_at": s.fetched_at,
                }
                for s in self.segments
            ],
        }

    def __str__(self) -> str:
        return (
            f"{self.node_id} {self.window}: {self.data_bars:,} stored, {self.empty_bars:,} "
            f"known-empty, {self.missing_bars:,} missing bars ({self.ratio:.2%} covered)"
        )


def build_coverage_report(
    node_id: str, ledger: Sequence[CoverageSegment], window: Range | None = None
) -> CoverageReport:
    """Clip ``ledger`` (sorted segments of ``node_id``) to ``window`` — default: from the
    first segment's start to the last segment's end — and count."""
    interval = parse_node_id(node_id).interval
    if window is None:
        window = Range(ledger[0].start, ledger[-1].end) if ledger else Range(0, 0)
    clipped = [
        CoverageSegment(r.start, r.end, s.kind, s.source, s.fetched_at)
        for s in ledger
        if (r := s.range.intersect(window)) is not None
    ]
    bars = {
        kind: sum(s.range.bars(interval) for s in clipped if s.kind is kind) for kind in SegmentKind
    }
    missing = compute_missing_ranges(clipped, window.start, window.end, interval)
    return CoverageReport(
        node_id,
        window,
        bars[SegmentKind.DATA],
        bars[SegmentKind.EMPTY],
        tuple(missing),
        tuple(clipped),
    )
