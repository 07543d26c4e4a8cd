"""The coordinator port: who may fill a window. A coordinator hands out leases
on lease keys ``{node_id}:{interval}:{start}:{end}:{world_id}:{as_of}``; the holder fills the
window, then completes or fails the lease. The token is a fencing token: a stale one changes
nothing. Implementations (in-process single flight, the HTTP client of the coordinator
service) arrive with the distributed-backfill capability; the engine accepts one through this
protocol only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["BackfillCoordinator", "Lease"]


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: ``key`` held with fencing ``token`` until ``lease_until_ms`` (epoch
    milliseconds)."""

    key: str
    token: str
    lease_until_ms: int


@runtime_checkable
class BackfillCoordinator(Protocol):
    """Hands out backfill leases so that no two workers fill one window at once."""

    async def claim(self, key: str, lease_ms: int) -> Lease | None:
        """A lease on ``key`` for ``lease_ms``, or ``None`` while another live lease holds it."""
        ...

    async def complete(self, lease: Lease) -> None:
        """The window is filled; a stale token changes nothing."""
        ...

    async def fail(self, lease: Lease, reason: str) -> None:
        """The window could not be filled (``reason``); it may be claimed again."""
        ...
