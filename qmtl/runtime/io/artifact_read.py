"""The read side of :class:`~qmtl.runtime.io.artifact.ArtifactRegistrar`: which manifests a
read needs, and the bars of a window assembled from decoded data files.

**Only the manifests that serve the window.** A read as of T serves each bar from the newest
artifact published at or before T (:meth:`~qmtl.runtime.sdk.artifact_catalog.ArtifactCatalog.
plan`). A manifest's key names its ``as_of`` (``{YYYYMMDDTHHMMSSmmmZ}-{fp16}.json``,
:mod:`~qmtl.runtime.sdk.artifact_keys`), so :func:`covering_catalog` reads the visible
manifests newest first, in growing batches (16, 64, 256, ...; at most :data:`CONCURRENCY`
requests at a time), and stops once those read serve every bar of the window: an older
artifact could serve no bar of it, so plan, view and missing parts come out exactly as over
every manifest. A backtest reading a compacted year fetches a dozen manifests, not the
thousand small publications' too. The catalog so built may be partial;
:meth:`ArtifactRegistrar.catalog` completes it (it fetches every listed key it lacks). A key
whose name does not parse, or whose manifest says another ``as_of`` than its name, sends the
read through the full catalog instead.

**Bars as columns, copied once.** :func:`read_frame` fetches the data files in plan order
with a bounded amount in flight, so the first ones decode (in worker threads, straight into
numpy columns: :func:`~qmtl.runtime.io.artifact_files.read_parquet_columns`) while the rest
arrive; each planned part is copied into the output columns as soon as its file is decoded
and the sizes of the parts before it are known — a part holding a whole artifact has the
manifest's row count — and the frame is built once over those columns. A part's rows are
found with ``searchsorted``: a data file's ``ts`` is strictly increasing (it was
fingerprinted, which refuses anything else); a file whose ``ts`` is not falls back to a mask.
Nothing here changes what a read returns, only how soon.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from qmtl.runtime.io.artifact_files import read_parquet_columns
from qmtl.runtime.sdk.artifact_catalog import ArtifactCatalog, ArtifactEntry
from qmtl.runtime.sdk.artifact_keys import manifest_prefix
from qmtl.runtime.sdk.artifact_publisher import ArtifactView
from qmtl.runtime.sdk.artifact_store import ArtifactNotFoundError, Blob
from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS, BarColumns, empty_frame, frame_from_columns
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.history_coverage import Range

if TYPE_CHECKING:
    from qmtl.runtime.sdk.artifact_store import ArtifactStore

__all__ = [
    "CONCURRENCY",
    "Plan",
    "artifact_view",
    "as_of_stamp",
    "covering_catalog",
    "load_entries",
    "merge_entries",
    "parse_manifest",
    "read_frame",
]

#: Store requests in flight at once, per call (manifests or data files).
CONCURRENCY = 32
#: Which artifact serves which part of a window (``ArtifactCatalog.plan``).
Plan = list[tuple[Range, ArtifactEntry]]

_FIRST_BATCH = 16  # the newest manifests read first; each later batch is 4x the previous
#: Data bytes fetched at a time (the first files arrive early, so decoding starts early).
_FETCH_BYTES = 8 << 20
_DECODE_BATCH_BYTES = 256 << 10  # data files decoded per worker-thread hop
_COPY_THREADS = 4  # worker threads placing already decoded (cached) files
_Positions = np.ndarray[Any, np.dtype[np.intp]]
_KEY_NAME = re.compile(r"\d{8}T\d{9}Z-[0-9a-f]{16}\.json")
_STAMP = len("YYYYMMDDTHHMMSSmmmZ")
_T = TypeVar("_T")


async def _gather_bounded(calls: Sequence[Callable[[], Awaitable[_T]]], limit: int) -> list[_T]:
    """The results of ``calls`` in order, at most ``limit`` running at once; the first
    failure cancels the rest and is raised as it is."""
    results: list[Any] = [None] * len(calls)
    todo = iter(enumerate(calls))

    async def worker() -> None:
        for i, call in todo:
            results[i] = await call()

    workers = [asyncio.ensure_future(worker()) for _ in range(min(limit, len(calls)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for task in workers:
            task.cancel()
        raise
    return results


def parse_manifest(document: Blob, key: str) -> dict[str, Any]:
    """A manifest's JSON object; ``ValueError`` naming ``key`` otherwise."""
    try:
        parsed = json.loads(bytes(document))
    except ValueError as exc:
        raise ValueError(f"manifest {key}: not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"manifest {key}: not a JSON object")
    return parsed


async def load_entries(store: ArtifactStore, keys: Sequence[str]) -> list[ArtifactEntry]:
    """The catalog entries of the manifests under ``keys`` (in that order)."""

    def getter(key: str) -> Callable[[], Awaitable[Blob]]:
        return lambda: store.get(key)

    documents = await _gather_bounded([getter(k) for k in keys], CONCURRENCY)
    try:
        return [
            ArtifactEntry.from_manifest(parse_manifest(doc, key), key)
            for doc, key in zip(documents, keys, strict=True)
        ]
    except ValueError as exc:  # the store holds a manifest nobody can read: its problem
        raise StorageError(f"artifact store {store.root_uri}: {exc}") from exc


def as_of_stamp(as_of_ms: int) -> str:
    """The ``YYYYMMDDTHHMMSSmmmZ`` a manifest key starts with for an instant (epoch ms): such
    names compare as their instants do. Before year 1 it is ``""`` and after 9999 ``"~"``
    (below and above every name)."""
    seconds, millis = divmod(as_of_ms, 1000)
    try:
        t = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return "" if as_of_ms < 0 else "~"
    day = f"{t.year:04d}{t.month:02d}{t.day:02d}"
    return f"{day}T{t.hour:02d}{t.minute:02d}{t.second:02d}{millis:03d}Z"


def merge_entries(
    node_id: str, current: ArtifactCatalog | None, new: Iterable[ArtifactEntry]
) -> ArtifactCatalog:
    """``current`` plus the ``new`` entries it lacks (by manifest key)."""
    entries = {e.manifest_key: e for e in (current.entries if current else ())}
    for entry in new:
        entries.setdefault(entry.manifest_key, entry)
    return ArtifactCatalog.of(node_id, list(entries.values()))


def _serves(catalog: ArtifactCatalog, window: Range, interval: int, as_of_ms: int | None) -> bool:
    """Whether ``catalog`` alone holds every bar of ``window`` (so older manifests cannot
    change its plan) and leaves no part of it missing."""
    if catalog.missing(window, interval, as_of_ms):
        return False
    held = sum(part.end - part.start for part, _ in catalog.plan(window, as_of_ms))
    return held == window.end - window.start


async def covering_catalog(
    store: ArtifactStore,
    cache: dict[str, ArtifactCatalog],
    node_id: str,
    window: Range,
    interval: int,
    as_of_ms: int | None,
    *,
    full: Callable[[str], Awaitable[ArtifactCatalog]],
) -> ArtifactCatalog:
    """A catalog of ``node_id`` whose plan and missing parts for ``window`` as of
    ``as_of_ms`` are those of every manifest in ``store`` (module docstring). ``cache`` (the
    registrar's catalogs) supplies the manifests already read and receives the new ones;
    ``full`` loads every manifest, for stores whose keys do not name their ``as_of``."""
    keys = await store.list(manifest_prefix(node_id))
    known = cache.get(node_id) or ArtifactCatalog(node_id)
    by_key = {e.manifest_key: e for e in known.entries}
    if all(k in by_key for k in keys):
        return known
    cut = None if as_of_ms is None else as_of_stamp(as_of_ms)
    stamped: list[tuple[str, str]] = []
    for key in keys:
        name = key.rpartition("/")[2]
        if _KEY_NAME.fullmatch(name) is None:
            return await full(node_id)
        if cut is None or name[:_STAMP] <= cut:
            stamped.append((name[:_STAMP], key))
    stamped.sort(reverse=True)
    fetched: list[ArtifactEntry] = []
    newest: list[ArtifactEntry] = []
    start, batch = 0, _FIRST_BATCH
    while start < len(stamped):
        end = min(start + batch, len(stamped))
        while end < len(stamped) and stamped[end][0] == stamped[end - 1][0]:
            end += 1  # a batch ends between two instants: ties are ordered by fingerprint
        group = stamped[start:end]
        loaded = await load_entries(store, [k for _, k in group if k not in by_key])
        fetched += loaded
        by_key.update((e.manifest_key, e) for e in loaded)
        if any(as_of_stamp(by_key[k].as_of_ms) != stamp for stamp, k in group):
            return await full(node_id)
        newest += (by_key[k] for _, k in group)
        start, batch = end, batch * 4
        if _serves(ArtifactCatalog.of(node_id, newest), window, interval, as_of_ms):
            break
    if not fetched:
        return known
    catalog = merge_entries(node_id, cache.get(node_id), fetched)
    cache[node_id] = catalog
    return catalog


def artifact_view(
    store: ArtifactStore,
    catalog: ArtifactCatalog,
    window: Range,
    interval: int,
    as_of_ms: int | None,
    plan: Plan | None = None,
) -> ArtifactView:
    """Which artifacts serve ``window`` as of ``as_of_ms`` (``plan``: already computed)."""
    if plan is None:
        plan = catalog.plan(window, as_of_ms)
    entries = tuple(sorted({e for _, e in plan}, key=lambda e: e.as_of_ms))
    newest = entries[-1] if entries else None
    return ArtifactView(
        entries=entries,
        missing=tuple(catalog.missing(window, interval, as_of_ms)),
        as_of=None if newest is None else newest.as_of,
        manifest_uri=None if newest is None else store.uri_of(newest.manifest_key),
        artifacts=tuple(store.uri_of(e.data_key) for e in entries),
    )


async def _fetch_data(store: ArtifactStore, entry: ArtifactEntry) -> Blob:
    """The bytes of ``entry``'s data file; a missing one is a :class:`StorageError`."""
    try:
        return await store.get(entry.data_key)
    except ArtifactNotFoundError as exc:
        raise StorageError(
            f"artifact data {store.uri_of(entry.data_key)} named by {entry.manifest_key} is missing"
        ) from exc


def _fresh(rows: int, name: str) -> np.ndarray[Any, Any]:
    """A writable, uninitialized column of ``rows`` (``ts`` int64, the rest float64) in
    Arrow's memory pool, which keeps freed memory mapped: filling a year of bars does not
    first fault in 25 MB of new pages, as fresh ``malloc`` memory does on every read. The
    array owns its buffer; the memory returns to the pool when the array is dropped."""
    dtype = np.dtype(np.int64 if name == "ts" else np.float64)
    return np.frombuffer(pa.allocate_buffer(rows * dtype.itemsize), dtype=dtype)


def _rows_of(columns: BarColumns, part: Range, increasing: bool) -> slice | _Positions:
    """The rows of ``part`` in a decoded file: a slice when its ``ts`` increases (every file
    a registrar writes), else a mask's positions, in file order."""
    ts = columns["ts"]
    if increasing:
        lo, hi = np.searchsorted(ts, [part.start, part.end])
        return slice(int(lo), int(hi))
    return np.flatnonzero((ts >= part.start) & (ts < part.end))


def _size(rows: slice | _Positions) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else int(rows.size)


class _Placement:
    """The output frame of a plan, filled part by part from worker threads as files decode.

    A part's offset is the sum of the sizes before it. A part holding a whole artifact
    has the manifest's row count as its size before anything is decoded; another part's
    size is known once its file is. So offsets advance through the plan as sizes become
    known, and each part is copied as soon as both its offset and its file are there — by
    the thread that completed the pair. The output is allocated up front for every row of
    the files the plan reads (a part of a file holds some of them). A decoded size that
    contradicts its manifest marks the placement ``broken`` (the caller then assembles
    from the decoded files instead)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.sizes: list[int | None] = [
            e.rows if part.start <= e.start and part.end >= e.end else None for part, e in plan
        ]
        self.rows: list[slice | _Positions | None] = [None] * len(plan)
        self.tables: dict[str, BarColumns] = {}
        self.parts_of: dict[str, list[int]] = {}
        for i, (_, entry) in enumerate(plan):
            self.parts_of.setdefault(entry.data_key, []).append(i)
        rows_of_file: dict[str, int] = {}  # the parts of one file share its rows
        for _, entry in plan:
            rows_of_file[entry.data_key] = max(rows_of_file.get(entry.data_key, 0), entry.rows)
        self.capacity = sum(rows_of_file.values())
        self.out = {name: _fresh(self.capacity, name) for name in CANONICAL_COLUMNS}
        self.offsets = [0]  # the offsets of the parts before the first of unknown size, + 1
        self.claimed = [False] * len(plan)
        self.broken = False
        self.lock = threading.Lock()
        self._advance()

    def _advance(self) -> list[int]:
        """Extend ``offsets`` over the parts whose sizes are now known; returns the parts
        newly given an offset (call with the lock held)."""
        first = len(self.offsets) - 1
        while len(self.offsets) <= len(self.plan):
            size = self.sizes[len(self.offsets) - 1]
            if size is None:
                break
            self.offsets.append(self.offsets[-1] + size)
        return list(range(first, len(self.offsets) - 1))

    def place(self, key: str, columns: BarColumns) -> None:
        """``key``'s file is decoded: copy every part that now has both its rows and its
        offset (any thread; each part is copied once)."""
        ts = columns["ts"]
        increasing = ts.size < 2 or bool(np.all(ts[1:] > ts[:-1]))
        found = [(i, _rows_of(columns, self.plan[i][0], increasing)) for i in self.parts_of[key]]
        copies: list[tuple[int, slice | _Positions]] = []
        with self.lock:
            self.tables[key] = columns
            for i, rows in found:
                size = _size(rows)
                if size > self.plan[i][1].rows or self.sizes[i] not in (None, size):
                    self.broken = True  # the manifest's row count is not the file's
                self.sizes[i] = size
                self.rows[i] = rows
            ready = [i for i, _ in found if i < len(self.offsets) - 1]
            ready += [i for i in self._advance() if self.rows[i] is not None]
            if self.broken or self.offsets[-1] > self.capacity:
                self.broken = True
                return
            for i in ready:
                rows_i = self.rows[i]
                if not self.claimed[i] and rows_i is not None:
                    self.claimed[i] = True
                    copies.append((i, rows_i))
        for i, rows in copies:
            source = self.tables[self.plan[i][1].data_key]
            at = self.offsets[i]
            for name in CANONICAL_COLUMNS:
                self.out[name][at : at + _size(rows)] = source[name][rows]

    def frame(self) -> pd.DataFrame:
        total = self.offsets[-1]
        if total * 2 < self.capacity:  # parts of big files: do not keep the rest allocated
            return frame_from_columns({n: a[:total] for n, a in self.out.items()})
        return frame_from_columns({n: a[:total] for n, a in self.out.items()}, copy=False)


async def read_frame(
    store: ArtifactStore, plan: Plan, cached: Mapping[str, BarColumns]
) -> tuple[pd.DataFrame, dict[str, BarColumns]]:
    """The canonical frame of ``plan`` and the columns decoded for it (by data key; files in
    ``cached`` are not fetched again). Files are fetched in plan order, at most
    :data:`CONCURRENCY` and about :data:`_FETCH_BYTES` at a time, so decoding (in worker
    threads, a few hundred KB of files per hop) starts with the first and overlaps the
    rest; each part is copied into the frame as soon as it can be (:class:`_Placement`)."""
    if not plan:
        return empty_frame(), {}
    placement = _Placement(plan)
    decoded: dict[str, BarColumns] = {}
    todo = {e.data_key: e for _, e in plan if e.data_key not in cached}

    def decode(batch: list[tuple[str, Blob]]) -> None:
        for key, blob in batch:
            try:
                decoded[key] = columns = read_parquet_columns(blob)
            except (OSError, pa.ArrowException) as exc:  # a damaged file: never served
                raise StorageError(
                    f"artifact data {store.uri_of(key)} is damaged ({exc}); run "
                    "qmtl-seamless artifacts verify"
                ) from exc
            placement.place(key, columns)

    def place_cached(keys: list[str]) -> None:
        for key in keys:
            placement.place(key, cached[key])

    have = [k for k in placement.parts_of if k in cached]
    workers: list[asyncio.Future[None]] = [
        asyncio.ensure_future(asyncio.to_thread(place_cached, have[i::_COPY_THREADS]))
        for i in range(min(len(have), _COPY_THREADS))
    ]
    in_flight: dict[asyncio.Future[Blob], ArtifactEntry] = {}
    pending: list[tuple[str, Blob]] = []
    try:
        for entry in [*todo.values(), None]:
            while in_flight and (
                entry is None
                or len(in_flight) >= CONCURRENCY
                or sum(e.data_bytes for e in in_flight.values()) + entry.data_bytes > _FETCH_BYTES
            ):
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    pending.append((in_flight.pop(future).data_key, future.result()))
                if entry is not None and sum(len(b) for _, b in pending) < _DECODE_BATCH_BYTES:
                    continue
                workers.append(asyncio.ensure_future(asyncio.to_thread(decode, pending[:])))
                pending.clear()
            if entry is not None:
                in_flight[asyncio.ensure_future(_fetch_data(store, entry))] = entry
        if pending:
            workers.append(asyncio.ensure_future(asyncio.to_thread(decode, pending[:])))
        await asyncio.gather(*workers)
    except BaseException:
        for fetch in in_flight:
            fetch.cancel()
        for worker in workers:
            worker.cancel()
        raise
    if placement.broken:  # a manifest's row count is wrong: place from the decoded files
        return _assemble(plan, {**cached, **decoded}), decoded
    return placement.frame(), decoded


def _assemble(plan: Plan, tables: Mapping[str, BarColumns]) -> pd.DataFrame:
    """The canonical frame of ``plan`` from every decoded file, in one pass."""
    picks = []
    for part, entry in plan:
        columns = tables[entry.data_key]
        ts = columns["ts"]
        picks.append(
            (columns, _rows_of(columns, part, ts.size < 2 or bool(np.all(ts[1:] > ts[:-1]))))
        )
    out = {n: np.concatenate([c[n][rows] for c, rows in picks]) for n in CANONICAL_COLUMNS}
    return frame_from_columns(out, copy=False)
