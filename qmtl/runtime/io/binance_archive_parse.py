"""Parsing and checking the contents of Binance public-data kline archives (no network).

The reader (:mod:`qmtl.runtime.io.binance_archive`) downloads a zip and its ``.CHECKSUM``;
everything it then needs to decide *what the bytes say* lives here, as plain functions that
take bytes or a local path and return values or raise ``ValueError`` with a one-line reason.
They block (zip inflation, CSV parsing), so async callers run them in a thread.

The CSV layout (one member per zip, no quoting)::

    open_time,open,high,low,close,volume,close_time,quote_volume,count,
    taker_buy_volume,taker_buy_quote_volume,ignore

Conventions, decided once here:

- **Header**: a file has one when the first field of its first line is a column *name*
  (``[A-Za-z_][A-Za-z0-9_ ]*``: USD-M futures files start ``open_time,open,...``). Any other
  non-numeric first field is not taken for a header; it fails parsing like any bad row.
- **Timestamp unit**, per file, from the first ``open_time``: at or above
  :data:`MICROS_THRESHOLD` (10**14) it is microseconds (Binance spot from 2025-01-01), below
  it milliseconds. 10**14 ms is the year 5138; 10**14 µs is 1973-03-03: every real bar of
  either unit is far from the threshold. Each row is read in the file's unit, so a file mixing
  units puts rows outside the file's window and is refused.
- **Strictness**: every row has exactly 12 fields; the first 11 must be numbers (``open_time``,
  ``close_time`` and ``count`` integers), the ``ignore`` field is not read. Prices must be
  finite and > 0, ``high >= low``, volume finite and >= 0; open times must lie on the
  interval's grid, inside the file's window, strictly ascending (so no duplicate). A file
  failing any of this yields nothing: there is no partial result. ``close_time`` and the
  trade columns are checked for form only (their values are not used).
- **Output**: an ``(n, 6)`` float64 array ``[ts_ms, open, high, low, close, volume]`` (the
  fetcher's page layout), ts in epoch *milliseconds*, ascending. An empty CSV (or a header
  alone) gives ``n == 0``: that proves nothing about the window, the caller decides.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv

from qmtl.runtime.sdk.history_coverage import Range

__all__ = [
    "CSV_FIELDS",
    "MICROS_THRESHOLD",
    "max_csv_bytes",
    "parse_checksum",
    "parse_kline_csv",
    "read_kline_zip",
]

#: The columns of a kline CSV, in file order.
CSV_FIELDS: Final[tuple[str, ...]] = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
    "count", "taker_buy_volume", "taker_buy_quote_volume", "ignore",
)  # fmt: skip
#: First ``open_time`` at or above this is microseconds, below it milliseconds (module doc).
MICROS_THRESHOLD: Final[int] = 10**14

#: Generous upper bound on one CSV line (12 fields of at most ~25 characters each are ~300):
#: only used to refuse absurd sizes (a zip bomb, a rogue server), never to trim data.
_MAX_LINE_BYTES: Final[int] = 512
_HEADER_FIELD = re.compile(rb"[A-Za-z_][A-Za-z0-9_ ]*")
_CHECKSUM_LINE = re.compile(r"([0-9A-Fa-f]{64})[ \t]+\*?(\S+)")
_BOM = b"\xef\xbb\xbf"
#: Arrow's parse block: small enough that a month file splits into blocks parsed on
#: several threads while the zip stream is still inflating the next ones (measured).
_BLOCK_BYTES: Final[int] = 256 * 1024
_NAMES = [f"f{i}" for i in range(len(CSV_FIELDS))]
_INTEGER_FIELDS = {"open_time", "close_time", "count"}
_TYPES: dict[str, Any] = {
    f"f{i}": pa.int64() if name in _INTEGER_FIELDS else pa.float64()
    for i, name in enumerate(CSV_FIELDS[:-1])
}
_F8 = npt.NDArray[np.float64]


def max_csv_bytes(window: Range, interval: int) -> int:
    """The most bytes a well-formed CSV of ``window`` (epoch s) at ``interval`` (s) can hold;
    a download or zip member above it is refused rather than spooled or inflated."""
    return (window.end - window.start) // interval * _MAX_LINE_BYTES + 64 * 1024


def parse_checksum(text: str, name: str) -> str:
    """The sha256 (lowercase hex) a ``.CHECKSUM`` body gives for ``name``.

    The body is ``<64 hex>  <name>`` (``sha256sum`` output: two spaces, or `` *`` in binary
    mode) and an optional newline; anything else — another file's name, more lines, a short
    hash — is ``ValueError``.
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"expected one '<sha256>  {name}' line, got {len(lines)} line(s)")
    match = _CHECKSUM_LINE.fullmatch(lines[0].strip())
    if match is None:
        raise ValueError(f"expected '<sha256>  {name}', got {lines[0][:120]!r}")
    if match.group(2) != name:
        raise ValueError(f"names {match.group(2)[:120]!r}, not {name!r}")
    return match.group(1).lower()


def read_kline_zip(path: Path, interval: int, window: Range) -> _F8:
    """The bars of the one CSV member of the zip at ``path`` (see :func:`parse_kline_csv`).

    The member is inflated as Arrow parses it (the two overlap on separate threads; neither
    the compressed nor the whole inflated CSV is held as one ``bytes``). ``ValueError`` when
    the file is not a zip, holds anything but exactly one ``.csv`` member, the member fails
    its CRC or is larger than :func:`max_csv_bytes` allows, or the CSV is refused. Blocking:
    run it in a thread.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) != 1 or not members[0].filename.lower().endswith(".csv"):
                listed = ", ".join(repr(m.filename[:60]) for m in members[:5]) or "none"
                raise ValueError(f"expected exactly one CSV member, found {listed}")
            member = members[0]
            limit = max_csv_bytes(window, interval)
            if member.file_size > limit:
                raise ValueError(f"CSV member is {member.file_size} bytes (at most {limit})")
            with archive.open(member) as stream:
                head = stream.readline(_MAX_LINE_BYTES)
            skip, has_rows = _layout(head, member.file_size)
            if not has_rows:
                return np.empty((0, 6), dtype=np.float64)
            with archive.open(member) as stream:
                table = _read_table(stream, skip)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as exc:
        raise ValueError(f"not a readable zip: {_one_line(exc)}") from None
    except (NotImplementedError, RuntimeError) as exc:  # compression method, encryption
        raise ValueError(f"unsupported zip: {_one_line(exc)}") from None
    return _bars(table, interval, window)


def parse_kline_csv(data: bytes, interval: int, window: Range) -> _F8:
    """Bars of one kline CSV as an ``(n, 6)`` float64 ``[ts_ms, o, h, l, c, v]`` array.

    ``interval`` is the bar length in seconds (a divisor of a day: archives hold no weekly
    bars), ``window`` the half-open epoch-second range the file covers. ``ValueError`` names
    the first problem (see the module doc for every rule), its row counted from 1 among the
    data rows (a header is not counted); nothing is returned from a bad file.
    """
    newline = data.find(b"\n")
    head = data if newline < 0 else data[: newline + 1]
    skip, has_rows = _layout(head, len(data))
    if not has_rows:
        return np.empty((0, 6), dtype=np.float64)
    return _bars(_read_table(pa.BufferReader(data), skip), interval, window)


def _layout(head: bytes, size: int) -> tuple[int, bool]:
    """(rows to skip, whether data rows may follow) from a file's first line (its newline
    included) and its size in bytes."""
    first = head.removeprefix(_BOM).split(b",", 1)[0].strip()
    if _HEADER_FIELD.fullmatch(first):
        return 1, size > len(head)
    return 0, size > 0


def _read_table(source: Any, skip_rows: int) -> Any:
    """The 11 read columns as an Arrow table; every row must have all 12 fields."""
    try:
        return pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=_NAMES, skip_rows=skip_rows, block_size=_BLOCK_BYTES
            ),
            parse_options=pacsv.ParseOptions(quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types=_TYPES,
                include_columns=_NAMES[:-1],
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"malformed CSV: {_one_line(exc)}") from None


def _bars(table: Any, interval: int, window: Range) -> _F8:
    """Checked ``(n, 6)`` bars from a parsed table (module doc: unit, grid, window, order,
    values)."""
    ts = table.column(0).to_numpy()
    if ts.size == 0:
        return np.empty((0, 6), dtype=np.float64)
    out = np.empty((ts.size, 6), dtype=np.float64)
    for i in range(1, 6):
        out[:, i] = table.column(i).to_numpy()
    per_second = 1_000_000 if int(ts[0]) >= MICROS_THRESHOLD else 1000
    _check_times(ts, per_second, interval, window)
    _check_values(out)
    out[:, 0] = ts // (per_second // 1000)
    return out


def _check_times(ts: npt.NDArray[np.int64], per_second: int, interval: int, window: Range) -> None:
    """Open times in the file's unit: on the grid, inside ``window``, strictly ascending."""
    unit = "µs" if per_second == 1_000_000 else "ms"
    off_grid = ts % (interval * per_second) != 0
    if off_grid.any():
        row = int(np.argmax(off_grid))
        raise ValueError(
            f"row {row + 1}: open_time {int(ts[row])} {unit} is not on the {interval} s grid"
        )
    outside = (ts < window.start * per_second) | (ts >= window.end * per_second)
    if outside.any():
        row = int(np.argmax(outside))
        raise ValueError(
            f"row {row + 1}: open_time {int(ts[row])} {unit} is outside the file's window {window}"
        )
    step = np.diff(ts)
    if (step <= 0).any():
        row = int(np.argmax(step <= 0)) + 1
        what = "duplicate" if step[row - 1] == 0 else "out-of-order"
        raise ValueError(f"row {row + 1}: {what} open_time {int(ts[row])} {unit}")


def _check_values(bars: _F8) -> None:
    """Prices finite and > 0, ``high >= low``, volume finite and >= 0."""
    prices = bars[:, 1:5]
    volume = bars[:, 5]
    bad_price = ~(np.isfinite(prices) & (prices > 0)).all(axis=1)
    problems = (
        (bad_price, "a price is not a finite number > 0"),
        (bars[:, 2] < bars[:, 3], "high < low"),
        (~(np.isfinite(volume) & (volume >= 0)), "volume is not a finite number >= 0"),
    )
    for mask, reason in problems:
        if mask.any():
            row = int(np.argmax(mask))
            raise ValueError(f"row {row + 1}: {reason}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
