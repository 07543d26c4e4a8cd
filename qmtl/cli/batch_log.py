"""``BatchLog``: what the backfill of one command did, batch by batch (its progress line and
its final gap report read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qmtl.runtime.io.archive_backfill import ARCHIVE_SOURCE
from qmtl.runtime.sdk.history_coverage import Range, subtract_ranges
from qmtl.runtime.sdk.node_id import parse_node_id

if TYPE_CHECKING:
    from qmtl.runtime.sdk.backfill_types import BatchOutcome

__all__ = ["BatchLog"]


@dataclass(slots=True)
class BatchLog:
    """Every batch outcome of one command (``auto_backfiller.on_batch``), per node: bars
    established, and the ranges that failed with their errors. A range that fails and is
    later established (``ensure_data_available`` asks again) stops counting as failed, so
    the counts describe what is still wrong, not every attempt."""

    succeeded: int = 0
    done_bars: int = 0
    #: Of ``done_bars``, those read from archive files, and how many files gave them.
    archive_bars: int = 0
    archive_files: int = 0
    failures: dict[str, list[tuple[Range, str]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def record(self, node_id: str, outcome: BatchOutcome) -> None:
        interval = parse_node_id(node_id).interval
        # An archive file vouches only for the bars it holds (a file that could not be used
        # holds none: its window goes to REST, whose batches then count).
        whole = outcome.ok and outcome.source != ARCHIVE_SOURCE
        established = [outcome.batch] if whole else [*outcome.data, *outcome.empty]
        bars = sum(r.bars(interval) for r in established)
        self.done_bars += bars
        if outcome.source == ARCHIVE_SOURCE and bars:
            self.archive_bars += bars
            self.archive_files += 1
        failed = self.failures.get(node_id, [])
        if established:
            failed = [
                (piece, error) for r, error in failed for piece in subtract_ranges([r], established)
            ]
        if outcome.ok:
            self.succeeded += 1
        else:
            error = outcome.error or "failed"
            self.errors.append(error)
            failed += [(r, error) for r in subtract_ranges([outcome.batch], established)]
        self.failures[node_id] = failed

    @property
    def failed_batches(self) -> int:
        return sum(len(f) for f in self.failures.values())

    @property
    def failed_bars(self) -> int:
        return sum(
            r.bars(parse_node_id(node).interval)
            for node, failed in self.failures.items()
            for r, _ in failed
        )

    def reasons(self, node_id: str, missing: Range) -> list[str]:
        """The distinct errors of the failures that overlap ``missing``."""
        found = [e for r, e in self.failures.get(node_id, []) if r.intersect(missing)]
        return list(dict.fromkeys(found))
