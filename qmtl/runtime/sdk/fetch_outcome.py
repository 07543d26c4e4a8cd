"""What one fetch found while it ran (:class:`FetchOutcome`) and the metadata that says what it
served (:func:`served_metadata`) — pure: no I/O, no clock of its own (``now`` is given)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qmtl.runtime.sdk.artifact_keys import as_of_from_ms
from qmtl.runtime.sdk.domain_gate import Downgrade, DowngradeMode
from qmtl.runtime.sdk.fetch_result import SeamlessFetchMetadata
from qmtl.runtime.sdk.history_coverage import Range, merge_ranges

if TYPE_CHECKING:
    import pandas as pd

    from qmtl.runtime.sdk.artifact_publisher import ArtifactView
    from qmtl.runtime.sdk.compute_context import ComputeContext
    from qmtl.runtime.sdk.conformance import ConformanceReport
    from qmtl.runtime.sdk.sla import SLADecision, SLAPhase

__all__ = ["FetchOutcome", "served_metadata", "sla_downgrade_of"]


@dataclass(slots=True)
class FetchOutcome:
    """Mutable state of one fetch while it runs: what is still missing, whether the answer is
    partial (work left to the background), the batch errors, the bars the live feed gave."""

    missing: list[Range]
    partial: bool = False
    errors: list[str] = field(default_factory=list)
    live_rows: int = 0
    handled: set[SLAPhase] = field(default_factory=set)


def served_metadata(
    *,
    node_id: str,
    interval: int,
    window: Range,
    strategy: str,
    context: ComputeContext,
    decision: SLADecision,
    phases_ms: dict[str, float],
    frame: pd.DataFrame,
    report: ConformanceReport,
    fingerprint: str,
    outcome: FetchOutcome,
    now: float,
    view: ArtifactView | None = None,
    pinned: bool = False,
) -> SeamlessFetchMetadata:
    """The metadata of a served ``frame`` (canonical, sorted): coverage of ``window``, the SLA
    verdict (a ``partial``/``hold`` decision is a downgrade named ``sla_<phase>``) and
    staleness against ``now`` (epoch seconds). ``view`` names the artifacts behind the bars:
    its newest ``as_of``, manifest and data files are reported when the fetch was
    ``pinned`` to an ``as_of`` (they are what it served), or when they hold the whole
    window (a fetch at that ``as_of`` then serves the same bars)."""
    backed = view is not None and bool(view.entries) and (pinned or not view.missing)
    missing = tuple(merge_ranges(outcome.missing, interval))
    requested = window.bars(interval)
    missing_bars = sum(r.bars(interval) for r in missing)
    bounds = None
    staleness_ms = None
    if len(frame):
        first, last = int(frame["ts"].iloc[0]), int(frame["ts"].iloc[-1])
        bounds = Range(first, last + interval)
        staleness_ms = max(0.0, (now - (last + interval)) * 1000.0)
    return SeamlessFetchMetadata(
        node_id=node_id,
        interval=interval,
        requested_range=window,
        rows=len(frame),
        coverage_bounds=bounds,
        missing_ranges=missing,
        coverage_ratio=1.0 if requested == 0 else (requested - missing_bars) / requested,
        conformance_flags=dict(report.flags),
        conformance_warnings=tuple(report.warnings),
        conformance_version=report.version,
        dataset_fingerprint=fingerprint,
        as_of=view.as_of if backed and view is not None else None,
        requested_as_of=None if context.as_of is None else as_of_from_ms(context.as_of),
        manifest_uri=view.manifest_uri if backed and view is not None else None,
        artifacts=view.artifacts if backed and view is not None else (),
        strategy=strategy,
        partial=bool(missing) or outcome.partial,
        downgraded=False,  # the governor decides (domain and SLA together)
        downgrade_mode=None,
        downgrade_reason=None,
        sla_violation=None if decision.violation is None else decision.violation.phase.value,
        sla_phases_ms=dict(phases_ms),
        staleness_ms=staleness_ms,
        world_id=context.world_id,
        execution_domain=context.execution_domain,
        cache_key=None,
        backfill_errors=tuple(outcome.errors),
        live_rows=outcome.live_rows,
    )


def sla_downgrade_of(decision: SLADecision) -> Downgrade | None:
    """The downgrade an SLA verdict demands: ``partial`` serves ``PARTIAL_FILL``, ``hold``
    serves ``HOLD``, each with reason ``sla_<phase>``; ``None`` otherwise."""
    if decision.action not in ("partial", "hold") or decision.violation is None:
        return None
    mode: DowngradeMode = "HOLD" if decision.action == "hold" else "PARTIAL_FILL"
    return Downgrade(mode, f"sla_{decision.violation.phase.value}")
