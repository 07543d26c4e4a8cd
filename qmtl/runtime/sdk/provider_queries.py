"""The provider's read-only questions about its hot store and its completion loop:
``coverage``, ``coverage_report`` and ``ensure_data_available`` (a mixin of
:class:`~qmtl.runtime.sdk.seamless_data_provider.SeamlessDataProvider`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qmtl.runtime.sdk.coverage_report import CoverageReport, build_coverage_report
from qmtl.runtime.sdk.history_coverage import CoverageSegment, Range, compute_missing_ranges
from qmtl.runtime.sdk.node_id import check_interval

if TYPE_CHECKING:
    from qmtl.runtime.sdk.backfill_config import BackfillConfig
    from qmtl.runtime.sdk.backfill_types import Backfiller
    from qmtl.runtime.sdk.history_storage import HistoryStorage
    from qmtl.runtime.sdk.timestamps import InstantLike

__all__ = ["StoreQueries"]

#: ``ensure_data_available`` works through long ranges this many batches at a time.
_ENSURE_SPAN_BATCHES = 1024


class StoreQueries:
    """Needs ``storage``, ``backfiller``, ``backfill_config`` and ``_window`` (the provider's)."""

    storage: HistoryStorage
    backfiller: Backfiller | None
    backfill_config: BackfillConfig

    def _window(self, start: InstantLike, end: InstantLike, interval: int) -> Range:
        raise NotImplementedError  # the provider's

    async def coverage(self, *, node_id: str, interval: int | None = None) -> list[CoverageSegment]:
        """The coverage ledger of ``node_id`` (DATA and EMPTY segments, sorted)."""
        interval = check_interval(node_id, interval).interval
        return await self.storage.read_ledger(node_id, interval)

    async def coverage_report(
        self,
        *,
        node_id: str,
        start: InstantLike | None = None,
        end: InstantLike | None = None,
        interval: int | None = None,
    ) -> CoverageReport:
        """What the store holds for ``node_id`` over ``[start, end)``: stored, known-empty
        and missing bars and ranges (:class:`CoverageReport`). A bound left out is the
        ledger's own (first segment's start, last segment's end). Reads the ledger only:
        no bars, no exchange."""
        interval = check_interval(node_id, interval).interval
        window = None if start is None or end is None else self._window(start, end, interval)
        ledger = await self.storage.read_ledger(node_id, interval)
        if window is None and (start is not None or end is not None):
            first = ledger[0].start if ledger else 0
            last = ledger[-1].end if ledger else first
            window = self._window(
                first if start is None else start, last if end is None else end, interval
            )
        return build_coverage_report(node_id, ledger, window)

    async def ensure_data_available(
        self, start: InstantLike, end: InstantLike, *, node_id: str, interval: int | None = None
    ) -> bool:
        """Backfill until ``[start, end)`` is covered or a pass makes no progress; ``True``
        when nothing is missing any more. The range is worked through in spans of
        :data:`_ENSURE_SPAN_BATCHES` batches, so memory stays bounded however long it is."""
        interval = check_interval(node_id, interval).interval
        window = self._window(start, end, interval)
        span = _ENSURE_SPAN_BATCHES * self.backfill_config.window_bars * interval
        complete = True
        cursor = window.start
        while cursor < window.end:
            part = Range(cursor, min(window.end, cursor + span))
            complete = await self._ensure(part, node_id, interval) and complete
            cursor = part.end
        return complete

    async def _ensure(self, window: Range, node_id: str, interval: int) -> bool:
        previous: list[Range] | None = None
        while True:
            ledger = await self.storage.read_ledger(node_id, interval)
            missing = compute_missing_ranges(ledger, window.start, window.end, interval)
            if not missing:
                return True
            if self.backfiller is None or missing == previous:
                return False
            previous = missing
            await self.backfiller.backfill(node_id, interval, missing)
