"""The bytes of one archive file: which bars it holds, its CSV, its zip and CHECKSUM (pure).

The bars are REST's (:func:`~qmtl.services.exchange_sim.klines.select_open_times` and
:func:`~qmtl.services.exchange_sim.bars.generate_bars`): nothing before the market's
listing, nothing inside halts, nothing forming. ``history_depth_bars`` does not apply: it
models an exchange whose *REST* history is shallow, and archives are where the deep history
is. A file exists only once its period is over (the route checks publication), so every
bar in it is closed.

Bytes are deterministic — the same file has the same bytes and checksum in every build,
process and run — so the zip is written here rather than by :mod:`zipfile` (whose writer
stamps the wall clock unless handed private attributes): one deflated member, its DOS time
the end of the period, no extra fields. CSV rows are encoded in chunks and compressed as
they come, so a month of 1s bars (2.7 million rows) never sits in memory as text.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from qmtl.services.exchange_sim._scenario_markets import MarketScenario, TimeSpan
from qmtl.services.exchange_sim.archive_csv import CHUNK_ROWS, USDM_HEADER, encode_csv
from qmtl.services.exchange_sim.archive_names import ArchiveName
from qmtl.services.exchange_sim.bars import generate_bars
from qmtl.services.exchange_sim.klines import select_open_times

__all__ = [
    "ZIP_LEVEL",
    "ServedArchive",
    "archive_open_times",
    "build_archive",
    "checksum_line",
    "corrupt_zip",
    "has_bars",
    "zip_single",
]

#: Deflate level: 1 compresses a 1m month (6.6 MB of CSV) in ~70 ms to 2.6 MB; level 6
#: would save 15 % for 4-5 times the time.
ZIP_LEVEL = 1
_ZIP32_LIMIT = 0xFFFFFFFF  # sizes and offsets above need zip64, which no file here needs


@dataclass(frozen=True, slots=True)
class ServedArchive:
    """A file as served: ``body`` (the zip, broken when ``corrupt``), its CHECKSUM file's
    bytes and how many CSV rows the zip holds (for logs and tests)."""

    body: bytes
    checksum: bytes
    rows: int

    @property
    def size(self) -> int:
        """Bytes it occupies in a cache."""
        return len(self.body) + len(self.checksum)


def _span_of(market: MarketScenario, name: ArchiveName) -> tuple[MarketScenario, int, int]:
    """The market without its depth limit, and the file's period ``[start, end)`` in ms."""
    return replace(market, history_depth_bars=None), name.start_ms, name.end_ms


def has_bars(market: MarketScenario, name: ArchiveName, now_ms: int) -> bool:
    """Whether the file's period holds at least one closed bar (cheap: selects one)."""
    flat, start, end = _span_of(market, name)
    first = select_open_times(
        flat, name.interval_s, start_time=start, end_time=end - 1, limit=1, now_ms=now_ms
    )
    return len(first) == 1 and int(first[0]) + name.interval_s * 1000 <= now_ms


def archive_open_times(
    market: MarketScenario, name: ArchiveName, now_ms: int, lacking: tuple[TimeSpan, ...] = ()
) -> NDArray[np.int64]:
    """Open times (epoch ms, ascending) of the closed bars of ``name``'s period that REST
    serves, minus bars intersecting the ``lacking`` spans (a scenario's ``incomplete``
    file)."""
    flat, start, end = _span_of(market, name)
    interval_ms = name.interval_s * 1000
    open_times = select_open_times(
        flat,
        name.interval_s,
        start_time=start,
        end_time=end - 1,
        limit=(end - start) // interval_ms,
        now_ms=now_ms,
    )
    open_times = open_times[open_times + interval_ms <= now_ms]
    if lacking:
        closes = open_times + interval_ms
        keep = np.ones(len(open_times), np.bool_)
        for span in lacking:
            keep &= (closes <= span.start * 1000) | (open_times >= span.end * 1000)
        open_times = open_times[keep]
    return open_times


def _csv_chunks(
    seed: int, symbol: str, name: ArchiveName, open_times: NDArray[np.int64]
) -> Iterator[bytes]:
    """The CSV text, :data:`CHUNK_ROWS` bars at a time: bars are generated per chunk too
    (a bar's values do not depend on what is generated with it), so a 1s month never holds
    its 2.7 million bars at once."""
    if name.has_header:
        yield USDM_HEADER
    for first in range(0, len(open_times), CHUNK_ROWS):
        bars = generate_bars(seed, symbol, name.interval_s, open_times[first : first + CHUNK_ROWS])
        yield encode_csv(bars, microseconds=name.microseconds)


def _dos_time(epoch_ms: int) -> tuple[int, int]:
    """``(time, date)`` fields of a zip header for an instant (clamped to 1980..2107)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    year = min(max(moment.year, 1980), 2107)
    day = (year - 1980) << 9 | moment.month << 5 | moment.day
    clock = moment.hour << 11 | moment.minute << 5 | moment.second // 2
    return clock, day


def zip_single(member: str, chunks: Iterable[bytes], modified_ms: int) -> bytes:
    """A zip holding one deflated member ``member`` (ASCII) whose content is the
    concatenated ``chunks``, stamped ``modified_ms`` — the same bytes for the same input."""
    compressor = zlib.compressobj(ZIP_LEVEL, zlib.DEFLATED, -15)  # raw deflate, as zip wants
    parts: list[bytes] = []
    crc = size = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
        parts.append(compressor.compress(chunk))
    parts.append(compressor.flush())
    packed = sum(len(part) for part in parts)
    if max(size, packed) > _ZIP32_LIMIT:
        raise ValueError(f"{member}: {size} bytes need zip64, which archives here never use")
    name = member.encode("ascii")
    clock, day = _dos_time(modified_ms)
    # version needed 2.0 (deflate), no flags, method 8 (deflate)
    common = struct.pack("<HHHHHIII", 20, 0, 8, clock, day, crc, packed, size)
    local = b"PK\x03\x04" + common + struct.pack("<HH", len(name), 0) + name
    # made by 3.0 on Unix (3), attributes: a regular file, rw-r--r--
    central = (
        b"PK\x01\x02"
        + struct.pack("<H", 0x0314)
        + common
        + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0o100644 << 16, 0)
        + name
    )
    offset = len(local) + packed
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), offset, 0)
    return b"".join([local, *parts, central, end])  # one copy of the compressed data


def corrupt_zip(body: bytes) -> bytes:
    """``body`` truncated to half, with any end-of-central-directory signature left in it
    garbled: no zip reader finds a directory, so unzipping fails (``BadZipFile``)."""
    return body[: max(1, len(body) // 2)].replace(b"PK\x05\x06", b"PK\x00\x00")


def checksum_line(name: ArchiveName, body: bytes, *, mismatch: bool = False) -> bytes:
    """Binance's CHECKSUM file: ``<sha256 hex>  <file>.zip\\n`` (two spaces, sha256sum's
    format). ``mismatch``: the hash of other bytes, as a bad upload leaves it."""
    digest = hashlib.sha256(body + (b"\x00mismatch" if mismatch else b"")).hexdigest()
    return f"{digest}  {name.file_name}\n".encode("ascii")


def build_archive(
    seed: int,
    market: MarketScenario,
    name: ArchiveName,
    now_ms: int,
    *,
    lacking: tuple[TimeSpan, ...] = (),
    corrupt: bool = False,
    mismatch: bool = False,
) -> ServedArchive:
    """The file ``name`` of ``market`` as served, faults applied (CPU-bound: tens of ms for
    a 1m month; run it off the event loop)."""
    open_times = archive_open_times(market, name, now_ms, lacking)
    chunks = _csv_chunks(seed, market.symbol, name, open_times)
    body = zip_single(name.csv_name, chunks, name.end_ms)
    if corrupt:
        body = corrupt_zip(body)
    return ServedArchive(body, checksum_line(name, body, mismatch=mismatch), len(open_times))
