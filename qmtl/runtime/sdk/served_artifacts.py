"""When a fetch publishes what it served, and what it publishes.

**When** (:func:`publishes`): a ``dryrun`` fetch always publishes; a ``backtest`` fetch only
reads artifacts; any other fetch (``live``, ``shadow``, no domain) publishes when
publication is switched on where it is optional (``seamless.artifact.publish_optional``,
``QMTL_SEAMLESS_ARTIFACTS=1``). ``publish_fingerprint: false`` switches publication off
altogether (fetches then carry the fingerprint of the served frame and no manifest).

**What** (:func:`publish_covered`): the part of the window the coverage ledger vouches for
(stored or known-empty) and no artifact holds yet, as one artifact per contiguous run; the
registrar keeps back the bars that are not yet stable. Publications of a node therefore never
overlap, and the bars a fetch served become readable as of the new ``as_of``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.history_coverage import Range, merge_ranges, subtract_ranges

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from qmtl.runtime.sdk.artifact_publisher import ArtifactPublisher, ArtifactView
    from qmtl.runtime.sdk.compute_context import ComputeContext
    from qmtl.runtime.sdk.conformance import ConformanceReport
    from qmtl.runtime.sdk.history_coverage import CoverageSegment

__all__ = ["publish_covered", "publishes"]

logger = logging.getLogger(__name__)


def publishes(
    execution_domain: str | None, *, publish_fingerprint: bool, publish_optional: bool
) -> bool:
    """Whether a fetch in ``execution_domain`` publishes what it served (module docstring)."""
    if not publish_fingerprint or execution_domain == "backtest":
        return False
    return execution_domain == "dryrun" or publish_optional


async def publish_covered(
    registrar: ArtifactPublisher,
    *,
    node_id: str,
    interval: int,
    window: Range,
    frame: pd.DataFrame,
    report: ConformanceReport,
    ledger: Sequence[CoverageSegment],
    context: ComputeContext,
) -> ArtifactView | None:
    """Publish the vouched-for, unpublished runs of ``window`` from the served ``frame``;
    returns which artifacts now serve the window. A store failure is logged and ends the
    publication (``None``): the fetch itself still succeeds, its bars stay in the hot store
    and the next fetch publishes them."""
    covered = [r for s in ledger if (r := s.range.intersect(window)) is not None]
    try:
        catalog = await registrar.catalog(node_id)
        todo = subtract_ranges(merge_ranges(covered, interval), catalog.published(interval))
        for run in todo:
            await registrar.publish(
                frame,
                node_id=node_id,
                interval=interval,
                requested_range=run,
                conformance_report=report,
                world_id=context.world_id,
                execution_domain=context.execution_domain,
            )
        return await registrar.view(node_id, interval, window)
    except (StorageError, OSError) as exc:
        logger.warning("artifact publication of %s %s failed: %s", node_id, window, exc)
        return None
