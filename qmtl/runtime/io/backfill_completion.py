"""``BackfillCompletion``: how much of a node's backfill completes, as a gauge and a warning.

Per ``(node_id, interval)`` it counts batches claimed (started), completed and failed for
good. ``backfill_completion_ratio`` is completed ÷ claimed — batches still in flight count
against it, as the coordinator's ratio does. The warning judges *finished* batches only
(completed ÷ (completed + failed): a batch in flight is not a failure yet) against
``seamless.observability.backfill_completion_ratio_min`` and logs
``seamless.observability.threshold_crossed`` once each time the ratio falls under it, not once
per batch while it stays there.
"""

from __future__ import annotations

import logging

from qmtl.runtime.sdk.events import THRESHOLD_CROSSED, log_event
from qmtl.runtime.sdk.metrics import SeamlessMetrics

__all__ = ["BackfillCompletion"]

logger = logging.getLogger("qmtl.runtime.io.auto_backfiller")

_NodeKey = tuple[str, int]


class BackfillCompletion:
    """The completion counts of one backfiller (one event loop; not thread-safe)."""

    def __init__(self, metrics: SeamlessMetrics, minimum: float) -> None:
        self.metrics = metrics
        self.minimum = minimum
        self._claimed: dict[_NodeKey, int] = {}
        self._completed: dict[_NodeKey, int] = {}
        self._failed: dict[_NodeKey, int] = {}
        self._below: set[_NodeKey] = set()

    def claimed(self, node_key: _NodeKey) -> None:
        """A batch of the node started."""
        self._claimed[node_key] = self._claimed.get(node_key, 0) + 1
        self._gauge(node_key)

    def finished(self, node_key: _NodeKey, *, ok: bool) -> None:
        """A batch of the node completed (``ok``) or failed for good."""
        if ok:
            self._completed[node_key] = self._completed.get(node_key, 0) + 1
            self._gauge(node_key)
        else:
            self._failed[node_key] = self._failed.get(node_key, 0) + 1
        completed = self._completed.get(node_key, 0)
        ratio = completed / (completed + self._failed.get(node_key, 0))
        if ratio >= self.minimum:
            self._below.discard(node_key)
        elif node_key not in self._below:
            self._below.add(node_key)
            log_event(
                logger, THRESHOLD_CROSSED, level=logging.WARNING, node_id=node_key[0],
                interval=node_key[1], measure="backfill_completion_ratio", value=ratio,
                threshold=self.minimum,
            )  # fmt: skip

    def _gauge(self, node_key: _NodeKey) -> None:
        claimed = self._claimed.get(node_key, 0)
        ratio = self._completed.get(node_key, 0) / claimed if claimed else 1.0
        self.metrics.backfill_completion_ratio.labels(
            node_id=node_key[0], interval=str(node_key[1])
        ).set(ratio)
