"""The artifact port: where stabilized bars are published as immutable, fingerprinted
artifacts. The registrar and its file/S3 stores arrive with the artifacts
capability; the engine accepts a publisher through this protocol only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd

    from qmtl.runtime.sdk.conformance import ConformanceReport
    from qmtl.runtime.sdk.history_coverage import Range

__all__ = ["ArtifactPublication", "ArtifactPublisher"]


@dataclass(frozen=True, slots=True)
class ArtifactPublication:
    """One published artifact: the fingerprint and ``as_of`` (ISO-8601 UTC, ``Z``) of
    exactly the bars ``[start, end)`` it holds, where its data and manifest live."""

    dataset_fingerprint: str
    as_of: str
    node_id: str
    start: int
    end: int
    rows: int
    uri: str
    manifest_uri: str


@runtime_checkable
class ArtifactPublisher(Protocol):
    """Publishes the stable part of a conformed frame (nothing stable: ``None``)."""

    async def publish(
        self,
        frame: pd.DataFrame,
        *,
        node_id: str,
        interval: int,
        requested_range: Range,
        conformance_report: ConformanceReport,
    ) -> ArtifactPublication | None: ...
