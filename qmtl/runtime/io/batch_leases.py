"""Backfill batches under coordinator leases: :class:`BatchLeases`.

Before a batch is fetched, its lease key ``{node_id}:{interval}:{start}:{end}::`` (no world,
no ``as_of``: the hot store is shared by every world) is claimed from the coordinator:

- granted: the store is asked first whether the batch is still missing — a worker sharing
  this store may have filled it between this pass's ledger read and the claim (the
  coordinator grants a completed window again, for workers with stores of their own); if
  it is filled, the lease is completed at once and nothing is fetched. Otherwise the batch
  runs; a background task heartbeats the lease every ``lease_ms / 3``
  while it does (cancelled when the batch ends); then the lease is completed, or failed with
  the outcome's error when the batch failed for good (it may be claimed again at once). A
  batch cancelled in flight (the provider closing) fails its lease too, so that another
  worker need not wait for it to expire.
- refused (another worker holds it): the batch is **not fetched**; its outcome is
  ``held=True`` with the error :data:`HELD_ERROR`, and its range stays *missing* in the
  ledger (never known-empty): the next pass over the range asks again. Two workers therefore
  never fetch one window while a lease on it is live; a window the other worker completed
  is granted again (the other worker filled *its* store, not this one) and fetched here.
- the coordinator is unreachable (:class:`CoordinatorUnavailable`): the batch runs anyway,
  protected by in-process single flight only; ``seamless.coordinator.claim_failed`` is
  logged once per outage (the next claim the coordinator answers ends the outage;
  :attr:`BatchLeases.outage_since` says since when it lasts). With ``require_lease`` (a
  ``qmtl-seamless worker``, whose only job is to cooperate) the batch is instead **not
  fetched**: its outcome is ``held=True`` with :data:`UNREACHABLE_ERROR`, so the worker asks
  again later rather than fetch windows other workers may hold.
- the coordinator refuses the claim itself (a ``ValueError``: wrong bearer token, bad key):
  the batch fails with that error without being fetched — a configuration to fix, not an
  outage to paper over.

Completing, failing and heartbeating never fail a batch: a lost lease is logged by the
client, an unreachable coordinator here. With ``require_lease`` a completion or failure the
coordinator could not take is retried (every :data:`SETTLE_RETRY_S`) until the coordinator
answers or the lease has expired — a worker's finished window must not sit held, blocking the
others, because the coordinator restarted; otherwise it is tried once (a strategy's fetch is
not held up) and the lease expires on its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from qmtl.runtime.io.coordinator_client import CoordinatorUnavailable
from qmtl.runtime.sdk.backfill_types import BatchOutcome
from qmtl.runtime.sdk.events import COORDINATOR_CLAIM_FAILED, log_event
from qmtl.runtime.sdk.lease_rules import LeaseKey

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from qmtl.runtime.sdk.backfill_coordinator import BackfillCoordinator, Lease
    from qmtl.runtime.sdk.clock import Clock
    from qmtl.runtime.sdk.history_coverage import Range

__all__ = ["HELD_ERROR", "UNREACHABLE_ERROR", "BatchLeases", "batch_lease_key"]

logger = logging.getLogger(__name__)

#: The error of a batch another worker's live lease holds (not fetched, still missing).
HELD_ERROR: Final = "held by another worker"
#: The error of a batch not fetched because leases are required and the coordinator is
#: unreachable (still missing).
UNREACHABLE_ERROR: Final = "coordinator unreachable, not fetched without a lease"
#: Seconds between attempts to settle a lease while the coordinator is unreachable.
SETTLE_RETRY_S: Final = 0.5


@runtime_checkable
class _Heartbeats(Protocol):
    async def heartbeat(self, lease: Lease, lease_ms: int) -> Lease | None: ...


def batch_lease_key(node_id: str, interval: int, batch: Range) -> str:
    """The lease key of a backfill batch (empty world and ``as_of``)."""
    return str(LeaseKey(node_id, interval, batch.start, batch.end))


class BatchLeases:
    """Runs batches under leases of ``coordinator`` held for ``lease_ms`` (milliseconds,
    renewed every third of it). ``clock`` paces the heartbeats and dates outages.
    ``require_lease``: never fetch without a lease (module docstring). One event loop only."""

    def __init__(
        self,
        coordinator: BackfillCoordinator,
        *,
        lease_ms: int,
        clock: Clock,
        require_lease: bool = False,
    ) -> None:
        if isinstance(lease_ms, bool) or not isinstance(lease_ms, int) or lease_ms < 3:
            raise ValueError(f"lease_ms must be an integer >= 3, got {lease_ms!r}")
        self.coordinator = coordinator
        self.lease_ms = lease_ms
        self.clock = clock
        self.require_lease = require_lease
        #: When the current outage began (``clock.monotonic()`` seconds) and its first
        #: error; ``None`` while the coordinator answers.
        self.outage_since: float | None = None
        self.outage_error: CoordinatorUnavailable | None = None

    async def run(
        self,
        node_id: str,
        interval: int,
        batch: Range,
        work: Callable[[], Awaitable[BatchOutcome]],
        *,
        filled: Callable[[], Awaitable[bool]] | None = None,
    ) -> BatchOutcome:
        """``work()`` under the batch's lease, or the outcome of a batch not fetched
        (``filled()`` says the store covers it already: module docstring)."""
        key = batch_lease_key(node_id, interval, batch)
        try:
            lease = await self.coordinator.claim(key, self.lease_ms)
        except CoordinatorUnavailable as exc:
            if self.outage_since is None:
                self.outage_since, self.outage_error = self.clock.monotonic(), exc
                then = (
                    "waiting for it"
                    if self.require_lease
                    else "falling back to in-process single flight"
                )
                log_event(
                    logger, COORDINATOR_CLAIM_FAILED, level=logging.WARNING, lease_key=key,
                    error=f"{exc} ({then})",
                )  # fmt: skip
            if self.require_lease:
                return BatchOutcome(batch, attempts=0, error=UNREACHABLE_ERROR, held=True)
            return await work()
        except ValueError as exc:
            return BatchOutcome(batch, attempts=0, error=f"coordinator refused the claim: {exc}")
        self.outage_since = self.outage_error = None
        if lease is None:
            return BatchOutcome(batch, attempts=0, error=HELD_ERROR, held=True)
        if filled is not None and await filled():
            await self._settle(lease, None)
            return BatchOutcome(batch, attempts=0, shared=True)
        held = [lease]
        beat = asyncio.create_task(self._heartbeat(held))
        try:
            outcome = await work()
        except BaseException:  # cancelled (the provider closing) or a bug: release it now
            beat.cancel()
            await self._settle(held[0], "cancelled before the batch ended")
            raise
        finally:
            beat.cancel()
        await self._settle(held[0], outcome.error)
        return outcome

    async def _settle(self, lease: Lease, error: str | None) -> None:
        verb = "complete" if error is None else "fail"
        warned = False
        while True:
            try:
                if error is None:
                    await self.coordinator.complete(lease)
                else:
                    await self.coordinator.fail(lease, error)
                return
            except CoordinatorUnavailable as exc:
                expired = self.clock.now() * 1000 >= lease.lease_until_ms
                if not self.require_lease or expired:
                    logger.warning("could not %s lease %s (it expires): %s", verb, lease.key, exc)
                    return
                if not warned:
                    warned = True
                    logger.warning(
                        "coordinator unreachable: retrying to %s lease %s until it answers or "
                        "the lease expires: %s", verb, lease.key, exc,
                    )  # fmt: skip
            except ValueError as exc:  # refused (stale token): the lease is already lost
                logger.warning("could not %s lease %s: %s", verb, lease.key, exc)
                return
            await self.clock.sleep(SETTLE_RETRY_S)

    async def _heartbeat(self, held: list[Lease]) -> None:
        """Renew ``held[0]`` every third of the lease until cancelled or lost."""
        if not isinstance(self.coordinator, _Heartbeats):
            return
        while True:
            await self.clock.sleep(self.lease_ms / 3000.0)
            try:
                renewed = await self.coordinator.heartbeat(held[0], self.lease_ms)
            except (CoordinatorUnavailable, ValueError) as exc:
                logger.warning("could not renew lease %s: %s", held[0].key, exc)
                continue
            if renewed is None:  # lost (the client logged it): completing will be refused
                return
            held[0] = renewed
