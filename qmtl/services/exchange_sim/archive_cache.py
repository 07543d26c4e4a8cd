"""Built archive files, kept in an LRU cache bounded by bytes, built once per key.

Building a file costs tens of milliseconds of CPU (a 1m month) to seconds (a 1s month), so
builds run in a worker thread (:func:`asyncio.to_thread`: the event loop keeps serving) and
concurrent requests for one file share one build (single flight). A finished file stays
cached until the total size of the cached files exceeds ``max_bytes``; the least recently
served go first, and a file larger than the whole budget is served but never cached.

Keys must name everything a file's bytes depend on (the route's: seed, market, listing,
halts, file, faults), so the cache can outlive scenario swaps. One instance per application,
used from one event loop (not thread-safe; only ``build`` runs in a thread).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable

from qmtl.services.exchange_sim.archive_files import ServedArchive

__all__ = ["DEFAULT_CACHE_BYTES", "ArchiveCache"]

#: 256 MiB: about a hundred 1m months.
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


class ArchiveCache:
    """LRU of :class:`~qmtl.services.exchange_sim.archive_files.ServedArchive` by total bytes."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.builds = 0  # files built so far (a cache hit builds nothing)
        self._files: OrderedDict[Hashable, ServedArchive] = OrderedDict()
        self._bytes = 0
        self._building: dict[Hashable, asyncio.Task[ServedArchive]] = {}

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._files)

    async def get(self, key: Hashable, build: Callable[[], ServedArchive]) -> ServedArchive:
        """The file cached under ``key``, else ``build()`` run in a thread (shared with
        every request for ``key`` arriving meanwhile). A build's exception reaches every
        waiter and nothing is cached. A waiter cancelled meanwhile does not cancel the
        build: the file is cached for the next request."""
        found = self._files.get(key)
        if found is not None:
            self._files.move_to_end(key)
            return found
        task = self._building.get(key)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(build))
            self._building[key] = task
            self.builds += 1
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: Hashable, task: asyncio.Task[ServedArchive]) -> None:
        self._building.pop(key, None)
        if task.cancelled() or task.exception() is not None:  # retrieved: no loop warning
            return
        self._store(key, task.result())

    def _store(self, key: Hashable, file: ServedArchive) -> None:
        if file.size > self.max_bytes or key in self._files:
            return
        self._files[key] = file
        self._bytes += file.size
        while self._bytes > self.max_bytes:
            _, evicted = self._files.popitem(last=False)
            self._bytes -= evicted.size
