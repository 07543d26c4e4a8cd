"""Vectorised JSON encoding of kline rows: the simulator's hot path.

Formatting 8,000 decimal strings per 1000-row page in Python costs milliseconds. Here a page
is assembled from 4-byte *units* (``uint32``): numbers are split into 4-digit groups, each
group picks a pre-rendered unit from one lookup table, and the units are gathered into rows —
about fifty numpy calls per page, none of them a Python loop over rows.

Working in 4-byte units needs padding, which goes where JSON allows whitespace: before a
value's opening quote or first digit, after a comma, before a row's ``[``. The body therefore
parses (``json.loads``, orjson, ccxt) to exactly the values of Binance's compact form; only
the whitespace differs. Values must be non-negative (times, prices, volumes, counts are).

How a group becomes a unit: along a value's groups (most significant first), a group is
*blank* before the leading one, *leading* (space-padded, with the decimal's opening quote),
or *inner* (zero-padded). A 4-digit leading group leaves no room for the quote, which then
goes alone into the blank unit before it. Which of the four a group is follows from two
running flags, so the unit index is plain arithmetic on the group value (:func:`_decimal_units`).

Performance notes: all per-page scratch lives in one per-thread :class:`_Workspace`, reused
across calls. Fresh arrays of a few hundred KB cross glibc's mmap threshold and are faulted in
page by page on every call, which cost more than the arithmetic.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
from numpy.typing import NDArray

from qmtl.services.exchange_sim.bars import E8, Bars

__all__ = ["encode_klines"]

U16 = NDArray[np.uint16]
I64 = NDArray[np.int64]
_G = 10_000  # one 4-digit group
_U32_MAX = 2**32 - 1


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
    """Per-thread scratch buffers, grown on demand and never shrunk."""

    def __init__(self) -> None:
        self.units = np.empty(0, np.uint16)
        self.rows = np.empty(0, np.intp)
        self.out = np.empty(0, np.uint32)

    def take(self, units: int, cells: int) -> tuple[U16, NDArray[np.intp], NDArray[np.uint32]]:
        if self.units.size < units:
            self.units = np.empty(units, np.uint16)
        if self.rows.size < cells:
            self.rows = np.empty(cells, np.intp)
            self.out = np.empty(cells, np.uint32)
        return self.units[:units], self.rows[:cells], self.out[:cells]


_WORKSPACE = _Workspace()
import os
_CHUNK = int(os.environ.get('QCHUNK', '0'))


def _group_count(value: int) -> int:
    """4-digit groups needed to write ``value`` (at least one, for ``0``)."""
    return max(1, (len(str(value)) + 3) // 4)


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
    started = g != 0
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
    n = len(bars)
    if n == 0:
        return b"[]"
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
    dec_max = whole.max(axis=1).tolist()
    int_max = ints.max(axis=1).tolist()
    dec_levels = 1 + max(_group_count(m) for m in dec_max)  # + a spare for a quote
    int_levels = max(_group_count(m) for m in int_max)
    # units blank in every row are left out; a quote displaced by a 4-digit leading
    # group needs the unit before it
    dec_width = tuple(_group_count(m) + (len(str(m)) % 4 == 0) for m in dec_max)
    int_width = tuple(_group_count(m) for m in int_max)
    order = _layout(dec_levels, dec_width, int_levels, int_width)
    height = order.shape[0]
    stack_rows = (dec_levels + 3) * _DEC + int_levels * _INT + 3
    flat_units, flat_rows, flat_out = _WORKSPACE.take(stack_rows * n, height * n)
    units = flat_units.reshape(stack_rows, n)

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

    index = units.take(order, axis=0)  # (height, n), unit-major
    index[0, 0] = _BODY_HEAD  # "[  [": the page's bracket and the first row's
    index[-1, -1] = _BODY_END  # the last separator closes the page instead
    out = flat_out.reshape(n, height)
    if _CHUNK:
        for a in range(0, n, _CHUNK):
            b = min(n, a + _CHUNK)
            rows = flat_rows[: (b - a) * height].reshape(b - a, height)
            np.copyto(rows, index[:, a:b].T)
            np.take(_TABLE, rows, out=out[a:b], mode="clip")
        return out.tobytes()
    rows = flat_rows.reshape(n, height)
    np.copyto(rows, index.T)
    np.take(_TABLE, rows, out=out, mode="clip")
    return out.tobytes()
