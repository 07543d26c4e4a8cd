"""``ServedBars``: conform the bars a fetch serves and fingerprint exactly them — fast.

A warm fetch of a year of 1m bars must cost about what reading them raw costs, yet every
answer names the exact bars served (``dataset_fingerprint``). Conformance and the fingerprint
are pure functions of the bars; this module computes them as cheaply as honesty allows (the
method docstring says how) and remembers them for windows the store vouches are unchanged.
One instance per provider; one event loop.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import pandas as pd

from qmtl.runtime.sdk.conformance import ConformancePipeline, ConformanceReport
from qmtl.runtime.sdk.fingerprint import FingerprintMetadata, compute_fingerprint
from qmtl.runtime.sdk.history_coverage import Range

__all__ = ["MEMO_WINDOWS", "ServedBars"]

#: Stored windows whose conformance and fingerprint are remembered.
MEMO_WINDOWS = 64


def _fingerprint_if_canonical(frame: pd.DataFrame, meta: FingerprintMetadata) -> str | None:
    """The fingerprint of ``frame`` if it is already canonical enough to have one."""
    try:
        return compute_fingerprint(frame, meta)
    except (TypeError, ValueError):
        return None


class ServedBars:
    """Conformance and fingerprint of served bars, with a memo of stored windows."""

    def __init__(self, conformance: ConformancePipeline) -> None:
        self.conformance = conformance
        self._memo: OrderedDict[
            tuple[str, Range, int, ConformancePipeline], tuple[ConformanceReport, str]
        ] = OrderedDict()

    async def conform(
        self, raw: pd.DataFrame, node_id: str, interval: int, window: Range, revision: int | None
    ) -> tuple[pd.DataFrame, ConformanceReport, str]:
        """Conform the bars and fingerprint exactly the bars served.

        Both are pure functions of the bars. ``revision`` is the store's revision of the node
        when ``raw`` is exactly what the store held for ``window`` then (``None``: unknown):
        for such a read, a conformance that changed nothing and the fingerprint are
        remembered (a small LRU keyed by node, window, revision and pipeline), and the next
        read of the same window at the same revision — the store vouches no write landed,
        so the same bars — is served with them, as read. Otherwise the fingerprint is
        computed on the raw bars *while* conformance runs (two threads: numpy and hashlib
        work that releases the GIL), kept only when conformance changed nothing
        (``ConformanceReport.unchanged``), else computed again on the conformed frame."""
        key = None if revision is None else (node_id, window, revision, self.conformance)
        known = None if key is None else self._memo.get(key)
        if key is not None and known is not None:
            self._memo.move_to_end(key)
            return raw, known[0], known[1]
        meta = FingerprintMetadata(
            node_id=node_id,
            interval=interval,
            range=(window.start, window.end),
            conformance_version=self.conformance.version,
        )
        (frame, report), early = await asyncio.gather(
            asyncio.to_thread(self.conformance.normalize, raw, interval),
            asyncio.to_thread(_fingerprint_if_canonical, raw, meta),
        )
        if early is None or not report.unchanged:
            return frame, report, await asyncio.to_thread(compute_fingerprint, frame, meta)
        if key is not None:
            self._memo[key] = (report, early)
            while len(self._memo) > MEMO_WINDOWS:
                self._memo.popitem(last=False)
        return frame, report, early
