"""The world-keyed result cache (in memory, per provider).

A repeated identical fetch — same node, range, interval, conformance version, world and
``as_of`` — is answered from memory. Entries are held for ``cache.ttl_ms`` at most, the
least recently used go first beyond ``cache.max_shards`` entries, and they never cross a
world or an ``as_of``: the lookup matches every part of the key itself (the rendered
``key_template`` is what metadata reports as ``cache_key``, never what decides a hit), so a
world id containing ``:`` cannot alias another key. A world that switches execution domain
loses its entries. Only complete results are kept (nothing missing, nothing partial): a
partial answer must be asked again. The provider re-gates a hit before serving it (its
staleness is recomputed against the clock of the new fetch).

Frames are copied in and out (a deep copy of a year of 1m bars costs ~10 ms): a caller that
changes its frame in place can never change what the next hit serves. Expiry is timed on the
clock's monotonic time, so a wall-clock step neither shortens nor lengthens an entry's life.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qmtl.runtime.sdk.clock import Clock
    from qmtl.runtime.sdk.config import CacheConfig
    from qmtl.runtime.sdk.fetch_result import SeamlessFetchResult

__all__ = ["CacheKey", "ResultCache"]


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Every part of a fetch that decides its answer (``as_of`` in epoch ms or ``None``)."""

    node_id: str
    start: int
    end: int
    interval: int
    conformance_version: str
    world_id: str | None
    as_of: int | None

    def render(self, template: str) -> str:
        """The key as the configured template writes it (for metadata and logs)."""
        return template.format(
            node_id=self.node_id,
            start=self.start,
            end=self.end,
            interval=self.interval,
            conformance_version=self.conformance_version,
            world_id="" if self.world_id is None else self.world_id,
            as_of="" if self.as_of is None else self.as_of,
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    result: SeamlessFetchResult
    stored_at: float
    domain: str | None


class ResultCache:
    """LRU of fetch results bounded by ``config.max_shards`` entries and ``config.ttl_ms``
    (module docstring). Not thread-safe: one event loop."""

    def __init__(self, config: CacheConfig, *, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._domains: dict[str | None, str | None] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def key_text(self, key: CacheKey) -> str:
        return key.render(self.config.key_template)

    def get(self, key: CacheKey, *, domain: str | None) -> SeamlessFetchResult | None:
        """A copy of the cached result of ``key``, if fresh; a domain switch of
        ``key.world_id`` purges that world first."""
        self._note_domain(key.world_id, domain)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if (self.clock.monotonic() - entry.stored_at) * 1000.0 >= self.config.ttl_ms:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return _copy(entry.result)

    def put(self, key: CacheKey, result: SeamlessFetchResult, *, domain: str | None) -> bool:
        """Keep ``result`` under ``key`` when it is complete; ``True`` if kept."""
        meta = result.metadata
        if meta.missing_ranges or meta.partial:
            return False
        self._note_domain(key.world_id, domain)
        self._entries[key] = _Entry(_copy(result), self.clock.monotonic(), domain)
        self._entries.move_to_end(key)
        while len(self._entries) > self.config.max_shards:
            self._entries.popitem(last=False)
        return True

    def purge_world(self, world_id: str | None) -> int:
        """Drop every entry of ``world_id``; how many."""
        doomed = [k for k in self._entries if k.world_id == world_id]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def _note_domain(self, world_id: str | None, domain: str | None) -> None:
        if world_id in self._domains and self._domains[world_id] != domain:
            self.purge_world(world_id)
        self._domains[world_id] = domain
        if len(self._domains) > 4 * self.config.max_shards:  # forget worlds with no entries
            alive = {k.world_id for k in self._entries}
            self._domains = {w: d for w, d in self._domains.items() if w in alive}


def _copy(result: SeamlessFetchResult) -> SeamlessFetchResult:
    """A result sharing nothing mutable with ``result``."""
    meta = dataclasses.replace(
        result.metadata,
        conformance_flags=dict(result.metadata.conformance_flags),
        sla_phases_ms=dict(result.metadata.sla_phases_ms),
    )
    return type(result)(result.frame.copy(deep=True), meta)
