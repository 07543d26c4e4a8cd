"""The artifact port: where stabilized bars are published as immutable, fingerprinted
artifacts and read back as of a publication instant. The engine talks to the registrar
(:class:`qmtl.runtime.io.artifact.ArtifactRegistrar`) through this protocol only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd

    from qmtl.runtime.sdk.artifact_catalog import ArtifactCatalog, ArtifactEntry
    from qmtl.runtime.sdk.conformance import ConformanceReport
    from qmtl.runtime.sdk.history_coverage import Range

__all__ = ["ArtifactPublication", "ArtifactPublisher", "ArtifactRead", "ArtifactView"]


@dataclass(frozen=True, slots=True)
class ArtifactPublication:
    """One published artifact: the fingerprint and ``as_of`` (ISO-8601 UTC, ``Z``) of
    exactly the bars ``[start, end)`` it holds, where its data and manifest live, and the
    manifest itself."""

    dataset_fingerprint: str
    as_of: str
    node_id: str
    start: int
    end: int
    rows: int
    uri: str
    manifest_uri: str
    manifest: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ArtifactView:
    """Which artifacts serve a window as of an instant (no bars read): the entries (oldest
    first), the parts of the window none holds, the newest publication instant among them
    with its manifest's URI, and the data files' URIs (oldest first)."""

    entries: tuple[ArtifactEntry, ...]
    missing: tuple[Range, ...]
    as_of: str | None
    manifest_uri: str | None
    artifacts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArtifactRead:
    """The bars of a window as of an instant (canonical ``frame``) and where they came from."""

    frame: pd.DataFrame
    view: ArtifactView


@runtime_checkable
class ArtifactPublisher(Protocol):
    """Publishes the stable part of a conformed frame (nothing stable: ``None``) and serves
    published bars as of any publication instant (``as_of``: ISO-8601 text or epoch
    milliseconds; ``None``: everything published so far)."""

    async def publish(
        self,
        frame: pd.DataFrame,
        *,
        node_id: str,
        interval: int,
        requested_range: Range,
        conformance_report: ConformanceReport,
        world_id: str | None = None,
        execution_domain: str | None = None,
    ) -> ArtifactPublication | None: ...

    async def catalog(self, node_id: str) -> ArtifactCatalog: ...

    async def view(
        self, node_id: str, interval: int, window: Range, *, as_of: str | int | None = None
    ) -> ArtifactView: ...

    async def read(
        self, node_id: str, interval: int, window: Range, *, as_of: str | int | None = None
    ) -> ArtifactRead: ...
