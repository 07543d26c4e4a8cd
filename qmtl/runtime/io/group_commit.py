"""Group commit: batches that finish while a write of the same node is running are committed
together, in the next single transaction.

A backfill at the exchange's full budget lands ~50 batches a second; one transaction each
(bars upsert plus the ledger read-modify-write) is what the store cannot keep up with. Here a
batch never waits for more than the one write ahead of it, and everything that queued up
meanwhile is committed at once — bars concatenated, ledger ranges combined into one
:class:`LedgerUpdate`. Per-batch durability is kept in the sense that matters: a crash loses
at most the batches in flight (fetched, not yet committed), and every caller learns the fate
of its own batch (a failed group write fails each of its batches, which then retry).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from qmtl.runtime.sdk.history_storage import LedgerUpdate

if TYPE_CHECKING:
    from qmtl.runtime.sdk.history_storage import HistoryStorage

__all__ = ["GroupCommitter"]


@dataclass(slots=True)
class _Queue:
    items: list[tuple[pd.DataFrame, LedgerUpdate, asyncio.Future[int]]] = field(
        default_factory=list
    )
    writer: asyncio.Task[None] | None = None


class GroupCommitter:
    """Commits ``(frame, ledger update)`` pairs per ``(node_id, interval)``, grouping those
    that queue up behind a running write. One event loop; not thread-safe."""

    def __init__(self, storage: HistoryStorage) -> None:
        self.storage = storage
        self._queues: dict[tuple[str, int], _Queue] = {}
        self.transactions = 0

    async def commit(self, node_id: str, frame: pd.DataFrame, update: LedgerUpdate) -> int:
        """Store ``frame`` with ``update``; returns the bars of *this* frame written."""
        queue = self._queues.setdefault((node_id, update.interval), _Queue())
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        queue.items.append((frame, update, done))
        if queue.writer is None or queue.writer.done():
            queue.writer = asyncio.create_task(self._drain(node_id, queue))
        return await asyncio.shield(done)

    async def _drain(self, node_id: str, queue: _Queue) -> None:
        while queue.items:
            group, queue.items = queue.items, []
            frames = [frame for frame, _, _ in group]
            updates = [update for _, update, _ in group]
            first = updates[0]
            combined = LedgerUpdate(
                interval=first.interval,
                data=tuple(r for u in updates for r in u.data),
                empty=tuple(r for u in updates for r in u.empty),
                source=first.source,
                # The oldest fetch time is the conservative horizon for EMPTY claims.
                fetched_at=min(
                    (u.fetched_at for u in updates if u.fetched_at is not None), default=None
                ),
                stabilization_bars=first.stabilization_bars,
            )
            frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
            try:
                await self.storage.write_bars(node_id, frame, ledger_update=combined)
            except Exception as exc:  # every waiter of the group learns it; the drain goes on
                for _, _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            except BaseException as exc:  # cancelled: nobody may wait for a writer that is gone
                for _, _, done in group + queue.items:
                    if not done.done():
                        done.set_exception(exc)
                queue.items = []
                raise
            self.transactions += 1
            for frame_i, _, done in group:
                if not done.done():
                    done.set_result(len(frame_i))
