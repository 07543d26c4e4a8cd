"""What a fetch says it served is what it served, even when a background backfill commits in
the middle of the fetch's reads (on a loaded machine this happens at random; here it is
placed exactly between two reads of the real store)."""

from __future__ import annotations

from typing import Any

import pytest

from qmtl.runtime.sdk.history_coverage import subtract_ranges
from qmtl.runtime.sdk.history_storage import HistoryStorage
from qmtl.runtime.sdk.live_feed import closed_runs
from tests.engine_rig import END, T0, I, Rig, storage

__all__ = ["storage"]


class CommitLandsBetween:
    """The real store; the backfill the fetch started in the background is let finish right
    before the fetch's second ledger read (``at="ledger"``) or its bars read (``"range"``)."""

    def __init__(self, store: HistoryStorage, at: str) -> None:
        self._store = store
        self._at = at
        self._ledger_reads = 0
        self.rig: Rig | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def _land(self) -> None:
        assert self.rig is not None
        await self.rig.provider.wait_background()

    async def read_ledger(self, node_id: str, interval: int) -> Any:
        self._ledger_reads += 1
        if self._at == "ledger" and self._ledger_reads == 2:
            await self._land()
        return await self._store.read_ledger(node_id, interval)

    async def read_range(self, node_id: str, start: int, end: int) -> Any:
        if self._at == "range":
            await self._land()
        return await self._store.read_range(node_id, start, end)


@pytest.mark.parametrize("at", ["ledger", "range"])
async def test_served_bars_and_missing_ranges_always_add_up(
    storage: HistoryStorage, at: str
) -> None:
    between = CommitLandsBetween(storage, at)
    rig = Rig(between, strategy="PARTIAL_FILL")  # type: ignore[arg-type]
    between.rig = rig
    result = await rig.fetch()
    meta = result.metadata
    served = closed_runs(result.frame["ts"].to_numpy(dtype="int64"), I)
    missing_bars = sum(r.bars(I) for r in meta.missing_ranges)
    assert len(result.frame) + missing_bars == (END - T0) // I  # nothing counted twice or lost
    assert all(subtract_ranges([m], served) == [m] for m in meta.missing_ranges)  # disjoint
    assert meta.coverage_ratio == pytest.approx(len(result.frame) / ((END - T0) // I))
