"""Binance public-data kline archives: where a file lives, and reading one safely.

Binance publishes closed klines as zipped CSVs, one per UTC month and one per UTC day::

    <base>/<prefix>/monthly/klines/<SYMBOL>/<tf>/<SYMBOL>-<tf>-<YYYY-MM>.zip
    <base>/<prefix>/daily/klines/<SYMBOL>/<tf>/<SYMBOL>-<tf>-<YYYY-MM-DD>.zip

each with a sibling ``<name>.zip.CHECKSUM`` (``<sha256 hex>  <name>.zip``). ``<prefix>`` is
``data/spot`` or ``data/futures/um`` (:func:`archive_prefix`), ``<SYMBOL>`` the exchange's
market id (``BTCUSDT``, not ccxt's ``BTC/USDT``). What the CSV holds and how it is checked
is :mod:`qmtl.runtime.io.binance_archive_parse`'s business.

:meth:`ArchiveReader.read` reads one file, all or nothing:

1. ``GET <name>.zip.CHECKSUM`` (a few dozen bytes);
2. ``GET <name>.zip``, streamed to a temp file in the reader's directory; each chunk is
   written and hashed in a thread, so a month of 1 s bars never sits in memory compressed
   *and* never blocks the loop;
3. the sha256 is compared with the CHECKSUM **before** a byte is unzipped;
4. unzip and parse in a thread; the temp file is deleted whatever happened (cancellation
   included).

Every failure is an :class:`ArchiveProblem` whose ``kind`` tells the caller what to do:
``missing`` (404: use REST for that span), ``checksum`` / ``corrupt`` (the archive cannot be
trusted: use REST), ``unavailable`` (network, timeout, 5xx: try the archive again later).
Archives never establish known-empty on their own: an empty or short file proves nothing.

Archives do not touch the exchange's request-weight budget: the reader has its own limiter,
a semaphore of ``max_concurrent_downloads`` files in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final, Literal

import aiohttp
import numpy as np
import numpy.typing as npt

from qmtl.runtime.io.binance_archive_parse import max_csv_bytes, parse_checksum, read_kline_zip
from qmtl.runtime.sdk.archive_plan import (
    ArchivePeriod,
    archived_timeframe,
)
from qmtl.runtime.sdk.errors import ArchiveError
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.node_id import TIMEFRAMES

__all__ = [
    "ARCHIVE_PREFIXES",
    "ArchiveFile",
    "ArchiveProblem",
    "ArchiveProblemKind",
    "ArchiveReader",
    "archive_file",
]

#: The archive trees this module knows: spot and USDⓈ-M futures.
ARCHIVE_PREFIXES: Final[tuple[str, ...]] = ("data/spot", "data/futures/um")

ArchiveProblemKind = Literal["missing", "checksum", "corrupt", "unavailable"]

_DAY: Final[int] = 86_400
_SYMBOL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # BTCUSDT, 1000SHIBUSDT, BTCUSDT_250926
_MISSING_STATUSES = frozenset({404, 410})
_MAX_CHECKSUM_BYTES: Final[int] = 4096
_F8 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """One archive file. ``window`` is the half-open range of bar *open* times (epoch s)
    the file covers: its whole UTC month or day. ``label`` is ``2024-01`` (monthly) or
    ``2024-01-15`` (daily), ``name`` the zip's file name, ``url`` its full address (the
    CHECKSUM is at :attr:`checksum_url`), ``timeframe`` the ccxt timeframe of its bars.
    Build it with :func:`archive_file`."""

    period: ArchivePeriod
    label: str
    window: Range
    name: str
    url: str
    timeframe: str

    @property
    def checksum_url(self) -> str:
        return f"{self.url}.CHECKSUM"


def archive_file(
    base_url: str,
    prefix: str,
    symbol_id: str,
    timeframe: str,
    period: ArchivePeriod,
    period_start_epoch_s: int,
) -> ArchiveFile:
    """The archive file of ``symbol_id`` (the exchange's market id, ``BTCUSDT``) at
    ``timeframe`` for the UTC month or day starting at ``period_start_epoch_s``.

    ``ValueError`` when the start is not a UTC month (``monthly``) or day (``daily``)
    boundary, the timeframe is not archived (``1s`` outside spot), or ``prefix``/``symbol_id``
    are not ones a URL path can hold. ``base_url`` may end with a slash or not.
    """
    if prefix not in ARCHIVE_PREFIXES:
        raise ValueError(f"prefix: expected one of {ARCHIVE_PREFIXES}, got {prefix!r}")
    if not archived_timeframe(timeframe, prefix):
        raise ValueError(f"timeframe {timeframe!r} is not archived under {prefix!r}")
    if not isinstance(symbol_id, str) or not _SYMBOL_ID.fullmatch(symbol_id):
        raise ValueError(f"symbol_id: expected a market id like 'BTCUSDT', got {symbol_id!r}")
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url: expected an http(s) URL, got {base_url!r}")
    start = period_start_epoch_s
    if isinstance(start, bool) or not isinstance(start, int):
        raise ValueError(f"period start must be int epoch seconds, got {start!r}")
    try:
        day = datetime.fromtimestamp(start, UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"period start {start} is out of range: {exc}") from None
    if start % _DAY:
        raise ValueError(f"period start {day.isoformat()} is not a UTC day boundary")
    if period == "daily":
        end = start + _DAY
        label = day.strftime("%Y-%m-%d")
    elif period == "monthly":
        if day.day != 1:
            raise ValueError(f"period start {day.isoformat()} is not the first day of a month")
        year, month = divmod(day.year * 12 + day.month, 12)  # month is the next one, 0-based
        end = int(datetime(year, month + 1, 1, tzinfo=UTC).timestamp())
        label = day.strftime("%Y-%m")
    else:
        raise ValueError(f"period: expected 'monthly' or 'daily', got {period!r}")
    name = f"{symbol_id}-{timeframe}-{label}.zip"
    url = f"{base_url.rstrip('/')}/{prefix}/{period}/klines/{symbol_id}/{timeframe}/{name}"
    return ArchiveFile(period, label, Range(start, end), name, url, timeframe)


class ArchiveProblem(ArchiveError):
    """An archive file could not be used; nothing from it was returned.

    ``kind``: ``missing`` (HTTP 404/410 for the zip or its CHECKSUM), ``checksum`` (sha256
    differs, or the CHECKSUM is malformed), ``corrupt`` (not a zip of one well-formed CSV of
    the file's bars), ``unavailable`` (connection error, timeout, any other HTTP status: worth
    retrying later, see :attr:`retryable`). ``reason`` says why in one line.
    """

    def __init__(self, kind: ArchiveProblemKind, file: ArchiveFile, reason: str) -> None:
        super().__init__(
            f"archive {file.name} {kind}: {reason} ({file.url})",
            kind=kind, name=file.name, reason=reason,
        )  # fmt: skip
        self.kind: ArchiveProblemKind = kind
        self.file = file

    @property
    def retryable(self) -> bool:
        """Whether the same archive may answer a later attempt (only ``unavailable``)."""
        return self.kind == "unavailable"


class _Spool:
    """The temp file a zip streams into, hashed as written. Every method blocks: call them
    in a thread. Not shared between tasks."""

    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path = path
        self._handle = handle
        self._digest = hashlib.sha256()

    @classmethod
    def create(cls, directory: Path, name: str) -> _Spool:
        fd, raw = tempfile.mkstemp(prefix=f"{name}.", suffix=".part", dir=directory)
        return cls(Path(raw), os.fdopen(fd, "wb"))

    def write(self, data: bytes | bytearray) -> None:
        self._handle.write(data)
        self._digest.update(data)

    def finish(self) -> str:
        """Close the file; the sha256 (hex) of everything written."""
        self._handle.close()
        return self._digest.hexdigest()

    def discard(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)


class ArchiveReader:
    """Downloads, verifies and parses archive files (see the module doc), at most
    ``max_concurrent_downloads`` files at a time.

    The semaphore is held for a file's whole read (download, verification, parse), so it
    also bounds the disk (one temp file per slot) and memory (one inflated CSV per slot).
    ``directory`` is where zips are spooled (created if needed, left in place); by default a
    private ``tempfile.mkdtemp`` directory, removed by :meth:`aclose`. ``chunk_bytes`` is
    how much of a body is gathered before one write-and-hash hop to a thread. ``timeout_s``
    is how long a request may go without progress (connecting, or between two reads of the
    body) before it counts as ``unavailable`` — not a cap on a whole download, so a large
    file on a slow link still completes.

    ``session_factory`` builds the one ``aiohttp.ClientSession`` (lazily, inside the event
    loop; a proxy, a custom connector...); the reader owns and closes it. One reader belongs
    to one event loop; share it between that loop's tasks, then ``await aclose()`` (after
    the reads have finished).

    Counters (plain ints, for logs and metrics): ``files_read`` (files returned),
    ``bytes_downloaded`` (body bytes received, CHECKSUMs and failed downloads included),
    ``requests`` (HTTP requests made, CHECKSUMs included), ``problems`` (ArchiveProblems
    raised).
    """

    def __init__(
        self,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        max_concurrent_downloads: int = 4,
        directory: Path | None = None,
        chunk_bytes: int = 1 << 20,
        timeout_s: float = 60.0,
    ) -> None:
        for name, value in (
            ("max_concurrent_downloads", max_concurrent_downloads),
            ("chunk_bytes", chunk_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s!r}")
        self.max_concurrent_downloads = max_concurrent_downloads
        self.chunk_bytes = chunk_bytes
        self.files_read = 0
        self.bytes_downloaded = 0
        self.requests = 0
        self.problems = 0
        self._session_factory = session_factory
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._semaphore = asyncio.Semaphore(max_concurrent_downloads)
        self._setup_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._directory = directory
        self._owns_directory = directory is None
        self._ready_directory: Path | None = None
        self._closed = False

    @property
    def directory(self) -> Path | None:
        """Where zips are spooled; ``None`` until the first read made it."""
        return self._ready_directory

    async def __aenter__(self) -> ArchiveReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session and remove the spool directory if the reader created it.
        Idempotent; a closed reader refuses further reads."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        directory, self._ready_directory = self._ready_directory, None
        if directory is not None and self._owns_directory:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    async def read(self, file: ArchiveFile, interval: int) -> _F8:
        """The bars of ``file``: an ``(n, 6)`` float64 array ``[ts_ms, open, high, low,
        close, volume]`` (open times in epoch **milliseconds**, ascending, all inside
        ``file.window``). ``interval`` (seconds) must be ``file.timeframe``'s.

        Raises :class:`ArchiveProblem` (and returns nothing) when the file is missing,
        fails its checksum, is corrupt or cannot be fetched now. ``n == 0`` (an empty CSV)
        proves nothing about the window.
        """
        if interval != TIMEFRAMES.get(file.timeframe):
            raise ValueError(
                f"interval {interval!r} s does not match the file's timeframe {file.timeframe!r}"
            )
        async with self._semaphore:
            try:
                bars = await self._read(file, interval)
            except ArchiveProblem:
                self.problems += 1
                raise
        self.files_read += 1
        return bars

    async def _read(self, file: ArchiveFile, interval: int) -> _F8:
        session, directory = await self._resources()
        expected = await self._expected_sha256(session, file)
        spool = await asyncio.to_thread(_Spool.create, directory, file.name)
        try:
            await self._download(session, file, spool, max_csv_bytes(file.window, interval))
            actual = await asyncio.to_thread(spool.finish)
            if actual != expected:
                raise ArchiveProblem("checksum", file, f"sha256 {actual} != CHECKSUM {expected}")
            try:
                return await asyncio.to_thread(read_kline_zip, spool.path, interval, file.window)
            except ValueError as exc:
                raise ArchiveProblem("corrupt", file, str(exc)) from None
        finally:
            # Shielded: a cancelled read still removes its temp file.
            await asyncio.shield(asyncio.to_thread(spool.discard))

    async def _resources(self) -> tuple[aiohttp.ClientSession, Path]:
        async with self._setup_lock:
            if self._closed:
                raise RuntimeError("ArchiveReader is closed")
            if self._session is None:
                factory = self._session_factory or aiohttp.ClientSession
                self._session = factory()
            if self._ready_directory is None:
                self._ready_directory = await asyncio.to_thread(self._make_directory)
            return self._session, self._ready_directory

    def _make_directory(self) -> Path:
        if self._directory is None:
            return Path(tempfile.mkdtemp(prefix="qmtl-binance-archive-"))
        self._directory.mkdir(parents=True, exist_ok=True)
        return self._directory

    async def _expected_sha256(self, session: aiohttp.ClientSession, file: ArchiveFile) -> str:
        async with self._get(session, file, file.checksum_url, "CHECKSUM") as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(_MAX_CHECKSUM_BYTES):
                self.bytes_downloaded += len(chunk)
                body += chunk
                if len(body) > _MAX_CHECKSUM_BYTES:
                    raise ArchiveProblem(
                        "checksum", file, f"CHECKSUM is over {_MAX_CHECKSUM_BYTES} bytes"
                    )
        try:
            return parse_checksum(body.decode("ascii"), file.name)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ArchiveProblem("checksum", file, f"malformed CHECKSUM: {exc}") from None

    async def _download(
        self, session: aiohttp.ClientSession, file: ArchiveFile, spool: _Spool, limit: int
    ) -> None:
        """Stream the zip into ``spool``; more than ``limit`` bytes is ``corrupt`` (no CSV of
        the file's window can be that large: a rogue server must not fill the disk)."""
        async with self._get(session, file, file.url, "zip") as response:
            announced = response.content_length
            if announced is not None and announced > limit:
                raise ArchiveProblem("corrupt", file, f"zip is {announced} bytes (at most {limit})")
            received = 0
            pending = bytearray()
            async for chunk in response.content.iter_chunked(self.chunk_bytes):
                received += len(chunk)
                self.bytes_downloaded += len(chunk)
                if received > limit:
                    raise ArchiveProblem("corrupt", file, f"zip is over {limit} bytes")
                pending += chunk
                if len(pending) >= self.chunk_bytes:
                    block, pending = pending, bytearray()
                    await asyncio.to_thread(spool.write, block)
            if pending:
                await asyncio.to_thread(spool.write, pending)

    @asynccontextmanager
    async def _get(
        self, session: aiohttp.ClientSession, file: ArchiveFile, url: str, what: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET ``url``, a 200 answer only; network errors — also those raised while the
        caller reads the body — become ``unavailable``, 404/410 ``missing``."""
        self.requests += 1
        try:
            async with session.get(url, timeout=self._timeout) as response:
                if response.status in _MISSING_STATUSES:
                    raise ArchiveProblem(
                        "missing", file, f"{what} not found (HTTP {response.status})"
                    )
                if response.status != 200:
                    raise ArchiveProblem(
                        "unavailable", file, f"{what} answered HTTP {response.status}"
                    )
                yield response
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise ArchiveProblem(
                "unavailable", file, f"{what}: {type(exc).__name__}: {detail}"
            ) from exc
