"""Vectorised JSON encoding of kline rows: the simulator's hot path.

Formatting 8,000 decimal strings per 1000-row page in Python costs milliseconds. Here a page
is assembled from 4-byte *units* (``uint32``): numbers are split into 4-digit groups, each
group picks a pre-rendered unit from one lookup table, and the units are gathered into rows —
about seventy numpy calls per page, none of them a Python loop over rows.

Working in 4-byte units needs padding, which goes where JSON allows whitespace: before a
value's opening quote or first digit, after a comma, before a row's ``[``. The body therefore
parses (``json.loads``, orjson, ccxt) to exactly the values of Binance's compact form; only
the whitespace differs. Values must be non-negative (times, prices, volumes, counts are).

How a group becomes a unit: along a value's groups (most significant first), a group is
*blank* before the leading one, *leading* (space-padded, with the decimal's opening quote),
or *inner* (zero-padded). A 4-digit leading group leaves no room for the quote, which then
goes alone into the blank unit before it. Which of the four a group is follows from two
running flags, so the unit index is plain arithmetic on the group value (:func:`_decimal_units`).

Column widths (which leading units are blank in every row and left out) are per page, so a
page's bytes depend on its rows only. :func:`encode_pages` renders several pages in one pass
over their rows (the per-call cost of numpy dominates at 1000 rows) with each page's bytes
exactly those :func:`encode_klines` gives it alone.

Performance notes: large scratch lives in one per-thread :class:`_Workspace`, reused across
calls (fresh arrays of a few hundred KB cross glibc's mmap threshold and may be faulted in page
by page on every call, which can cost more than the arithmetic), and the final lookup runs
over a few hundred rows at a time so its ``intp`` indices stay in cache.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from qmtl.services.exchange_sim.bars import E8, Bars

__all__ = ["encode_klines", "encode_pages"]

U16 = NDArray[np.uint16]
I64 = NDArray[np.int64]
_G = 10_000  # one 4-digit group
_CHUNK_ROWS = 256  # rows per final lookup: ~100 KB of intp indices stay in cache
_KEEP_CELLS = 1 << 20  # scratch kept per thread: room for a batch of ~4000 rows and more


def _units(texts: list[str]) -> NDArray[np.uint32]:
    raw = "".join(texts).encode("ascii")
    if len(raw) != 4 * len(texts):
        raise AssertionError("every unit must be 4 ASCII bytes")
    return np.frombuffer(raw, dtype="<u4").copy()


# The unit table. Offsets are chosen so that a group's unit index is arithmetic:
# blank = 0, displaced quote = 1, leading decimal group = 2 + g, inner group = 10003 + g.
_BLANK, _QUOTE, _LEAD_DEC = 0, 1, 2
_INNER = _LEAD_DEC + _G + 1  # one filler unit keeps 3 + g + 10000 == _INNER + g
_LEAD_INT = _INNER + _G
_FRAC_A = _LEAD_INT + _G  # ".123": the first 3 of the 8 decimals
_FRAC_C = _FRAC_A + 1000  # '7", ': the last decimal, closing quote, comma, space
_ROW_HEAD, _COMMA, _ROW_END, _BODY_HEAD, _BODY_END = range(_FRAC_C + 10, _FRAC_C + 15)
_TABLE = _units(
    ["    ", '   "']
    + [(f'"{v}').rjust(4) if v < 1000 else f"{v:4d}" for v in range(_G)]
    + ["    "]
    + [f"{v:04d}" for v in range(_G)]
    + [f"{v:4d}" for v in range(_G)]
    + [f".{v:03d}" for v in range(1000)]
    + [f'{v}", ' for v in range(10)]
    + ["   [", ",   ", '"0"]', "[  [", "   ]"]
)
_DEC = 8  # o h l c v q V Q
_INT = 3  # t T n
# a row: ("i", j) is integer column j, ("d", j) decimal column j (Binance's order)
_LAYOUT = (
    ("i", 0),
    ("d", 0),
    ("d", 1),
    ("d", 2),
    ("d", 3),
    ("d", 4),
    ("i", 1),
    ("d", 5),
    ("i", 2),
    ("d", 6),
    ("d", 7),
)


class _Workspace(threading.local):
    """Per-thread scratch buffers, grown on demand up to :data:`_KEEP_CELLS` (larger requests
    get arrays of their own, so one huge page does not pin its memory)."""

    def __init__(self) -> None:
        self.units = np.empty(0, np.uint16)
        self.index = np.empty(0, np.uint16)
        self.rows = np.empty(0, np.intp)
        self.out = np.empty(0, np.uint32)

    def unit_stack(self, size: int) -> U16:
        if size > _KEEP_CELLS:
            return np.empty(size, np.uint16)
        if self.units.size < size:
            self.units = np.empty(size, np.uint16)
        return self.units[:size]

    def assembly(self, cells: int, rows: int) -> tuple[U16, NDArray[np.intp], NDArray[np.uint32]]:
        if rows > self.rows.size:
            self.rows = np.empty(rows, np.intp)  # bounded by _CHUNK_ROWS rows
        if cells > _KEEP_CELLS:
            return np.empty(cells, np.uint16), self.rows[:rows], np.empty(cells, np.uint32)
        if self.index.size < cells:
            self.index = np.empty(cells, np.uint16)
            self.out = np.empty(cells, np.uint32)
        return self.index[:cells], self.rows[:rows], self.out[:cells]


_WORKSPACE = _Workspace()


_POWERS_OF_TEN = 10 ** np.arange(1, 19, dtype=np.int64)


def _digits(values: I64) -> I64:
    """Decimal digits of each value (``0`` has one)."""
    found: I64 = np.searchsorted(_POWERS_OF_TEN, values, side="right") + 1
    return found


def _split_groups(x: I64, out: U16) -> None:
    """Base-10000 digits of ``x`` into ``out`` (axis 0, most significant first; ``out``
    has a row for every group of ``x.max()``). Eight digits at a time in ``uint32`` where
    the values fit: ``int64`` division is several times slower."""
    levels = out.shape[0]
    rest: NDArray[np.integer] = x
    while levels > 2:
        high = rest // (_G * _G)
        low = (rest - high * (_G * _G)).astype(np.uint32)
        quotient = low // _G
        np.subtract(low, quotient * _G, out=out[levels - 1], casting="unsafe")
        np.copyto(out[levels - 2], quotient, casting="unsafe")
        rest, levels = high, levels - 2
    small = rest.astype(np.uint32)  # below 10**8 now
    if levels == 2:
        quotient = small // _G
        np.subtract(small, quotient * _G, out=out[1], casting="unsafe")
        np.copyto(out[0], quotient, casting="unsafe")
    else:
        np.copyto(out[0], small, casting="unsafe")


def _started(g: U16) -> NDArray[np.bool_]:
    """Per group: at or after its value's leading group (the last group always is)."""
    started: NDArray[np.bool_] = g != 0
    for k in range(1, g.shape[0]):
        started[k] |= started[k - 1]
    started[-1] = True
    return started


def _decimal_units(g: U16) -> None:
    """Turn the whole-part groups ``g`` (in place; row 0 is a spare, always 0) into unit
    indices: ``g + wide_or_started + started + 10001 * started_before``."""
    started = _started(g)
    g[:-1] += (g[1:] >= 1000) | started[:-1]  # the quote sits here, or in the unit before
    g[-1] += 1
    g += started
    g[1:] += started[:-1].view(np.uint8) * np.uint16(_INNER - 2)


def _integer_units(g: U16) -> None:
    """Integer groups ``g`` (in place) to unit indices: blank, leading or inner."""
    started = _started(g)
    g += started.view(np.uint8) * np.uint16(_LEAD_INT)
    g[1:] += started[:-1].view(np.uint8) * np.uint16((_INNER - _LEAD_INT) % 2**16)


@functools.lru_cache(maxsize=256)
def _layout(
    dec_levels: int, dec_width: tuple[int, ...], int_levels: int, int_width: tuple[int, ...]
) -> NDArray[np.intp]:
    """Which row of the unit stack goes where in a JSON row (see :func:`encode_klines`)."""
    frac0 = dec_levels * _DEC
    int0 = frac0 + 3 * _DEC
    const0 = int0 + int_levels * _INT
    head, comma, end = const0, const0 + 1, const0 + 2
    order = [head]
    for kind, j in _LAYOUT:
        if kind == "i":
            first = int_levels - int_width[j]
            order += [int0 + p * _INT + j for p in range(first, int_levels)] + [comma]
        else:
            first = dec_levels - dec_width[j]
            order += [p * _DEC + j for p in range(first, dec_levels)]
            order += [frac0 + u * _DEC + j for u in range(3)]
    order += [end, comma]
    return np.array(order, np.intp)


def encode_klines(bars: Bars) -> bytes:
    """Binance kline rows ``[openTime,"o","h","l","c","v",closeTime,"q",n,"V","Q","0"]``."""
    return encode_pages(bars, [len(bars)])[0]


def encode_pages(bars: Bars, sizes: Sequence[int]) -> list[bytes]:
    """One body per page, the pages being consecutive runs of ``sizes`` rows of ``bars``.

    Each body is exactly ``encode_klines`` of its page (column widths are per page), but the
    arithmetic runs once over all rows: a batch of pages costs much less than its pages one
    at a time, as most numpy calls here are dominated by their fixed cost.
    """
    if sum(sizes) != len(bars) or any(size < 0 for size in sizes):
        raise ValueError(f"page sizes {list(sizes)} do not split {len(bars)} rows")
    n = len(bars)
    if n == 0:
        return [b"[]" for _ in sizes]
    dec = np.array(
        [
            bars.open,
            bars.high,
            bars.low,
            bars.close,
            bars.volume,
            bars.quote_volume,
            bars.taker_base,
            bars.taker_quote,
        ],
        np.int64,
    )
    ints = np.array([bars.open_time, bars.close_time, bars.trades], np.int64)
    whole = dec // E8
    starts = np.cumsum([0, *sizes[:-1]])
    filled = [i for i, size in enumerate(sizes) if size]
    # per page and column, the largest value decides how many units the column needs: its
    # groups, and for a decimal one more when a 4-digit leading group displaces the quote
    dec_digits = _digits(np.maximum.reduceat(whole, starts[filled], axis=1))
    int_digits = _digits(np.maximum.reduceat(ints, starts[filled], axis=1))
    dec_groups, int_groups = (dec_digits + 3) // 4, (int_digits + 3) // 4
    dec_levels = 1 + int(dec_groups.max())  # + a spare row for a displaced quote
    int_levels = int(int_groups.max())
    dec_widths = (dec_groups + (dec_digits % 4 == 0)).T.tolist()
    int_widths = int_groups.T.tolist()
    stack_rows = (dec_levels + 3) * _DEC + int_levels * _INT + 3
    units = _WORKSPACE.unit_stack(stack_rows * n).reshape(stack_rows, n)

    whole_units = units[: dec_levels * _DEC].reshape(dec_levels, _DEC, n)
    whole_units[0] = 0
    _split_groups(whole, whole_units[1:])
    _decimal_units(whole_units)

    frac = (dec - whole * E8).astype(np.uint32)
    frac_units = units[dec_levels * _DEC : (dec_levels + 3) * _DEC].reshape(3, _DEC, n)
    first3 = frac // 100_000
    np.add(first3, _FRAC_A, out=frac_units[0], casting="unsafe")
    last5 = frac - first3 * 100_000
    middle4 = last5 // 10
    np.add(middle4, _INNER, out=frac_units[1], casting="unsafe")
    np.add(last5 - middle4 * 10, _FRAC_C, out=frac_units[2], casting="unsafe")

    int0 = (dec_levels + 3) * _DEC
    int_units = units[int0 : int0 + int_levels * _INT].reshape(int_levels, _INT, n)
    _split_groups(ints, int_units)
    _integer_units(int_units)
    units[-3] = _ROW_HEAD
    units[-2] = _COMMA
    units[-1] = _ROW_END

    bodies = [b"[]"] * len(sizes)
    layouts = [
        _layout(dec_levels, tuple(dec), int_levels, tuple(ints))
        for dec, ints in zip(dec_widths, int_widths, strict=True)
    ]
    # consecutive pages with the same layout are gathered and rendered together
    group_start = 0
    for k in range(1, len(filled) + 1):
        if k < len(filled) and layouts[k] is layouts[group_start]:
            continue
        pages = filled[group_start:k]
        first = int(starts[pages[0]])
        spans = [(int(starts[p]) - first, sizes[p]) for p in pages]
        rows = sum(size for _, size in spans)
        rendered = _assemble(units[:, first : first + rows], layouts[group_start], spans)
        for page, body in zip(pages, rendered, strict=True):
            bodies[page] = body
        group_start = k
    return bodies


def _assemble(units: U16, order: NDArray[np.intp], spans: list[tuple[int, int]]) -> list[bytes]:
    """Gather pages' units (``spans``: first row, rows) into JSON rows of one layout and render
    them through the table."""
    n, height = units.shape[1], order.shape[0]
    flat_index, flat_rows, flat_out = _WORKSPACE.assembly(height * n, height * _CHUNK_ROWS)
    index = flat_index.reshape(height, n)  # unit-major
    np.take(units, order, axis=0, out=index)
    for first, size in spans:
        index[0, first] = _BODY_HEAD  # "[  [": the page's bracket and its first row's
        index[-1, first + size - 1] = _BODY_END  # the last separator closes the page
    out = flat_out.reshape(n, height)
    for first in range(0, n, _CHUNK_ROWS):  # intp indices of a few rows at a time
        last = min(n, first + _CHUNK_ROWS)
        rows = flat_rows[: (last - first) * height].reshape(last - first, height)
        np.copyto(rows, index[:, first:last].T)
        np.take(_TABLE, rows, out=out[first:last], mode="clip")
    return [out[first : first + size].tobytes() for first, size in spans]
