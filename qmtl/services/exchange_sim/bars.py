"""Deterministic, random-access kline generation (pure: no I/O, no clock, no global state).

The bar opening at ``t`` is a pure function of ``(seed, symbol, interval, t)``: every random
quantity comes from a counter-based hash (splitmix64) of the bar index, so any window is
generated directly, in one vectorised pass, without walking from the epoch.

Price model (realism is not the point; determinism and speed are): a per-symbol level ``P0``
times ``exp`` of a few slow sines of absolute time plus per-boundary jitter. The price *at a
bar boundary* is defined once, so a bar's open equals the previous bar's close exactly.

Conventions:

- Times are epoch **milliseconds**. Bar ``i`` of an interval opens at ``origin + i *
  interval``, ``i >= 0``, with ``origin = alignment_origin(interval)``: the epoch for every
  interval but ``1w``, whose bars open on Mondays 00:00 UTC as on Binance (the origin is
  Monday 1970-01-05). Hashes are of ``i``; the slow sines are of absolute time.
- Prices and volumes are ``int64`` fixed point in units of ``1e-8`` ("e8"), the precision of
  Binance's decimal strings. ``e8 / 1e8`` is the correctly rounded double of the decimal
  string, so floats from :meth:`Bars.ohlcv` equal what a JSON client parses, bit for bit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from qmtl.runtime.sdk.bars import PRICE_COLUMNS, BarColumns, frame_from_columns, misaligned
from qmtl.runtime.sdk.node_id import alignment_origin
from qmtl.services.exchange_sim.hashing import (
    stable_key,
    stream_salts,
    uniform,
    uniform_streams,
)

__all__ = [
    "E8",
    "Bars",
    "SymbolModel",
    "format_e8",
    "forming_bar",
    "generate_bars",
    "symbol_model",
]

E8 = 100_000_000
I64 = NDArray[np.int64]
F64 = NDArray[np.float64]

_DAY_S = 86_400.0
# slow sines of absolute time: (period seconds, amplitude in log-price)
_WAVES = ((30 * _DAY_S, 0.25), (3 * _DAY_S, 0.06), (6 * 3600.0, 0.015))
_VOLUME_STEP_E8 = 1_000  # volumes are quantised to 1e-5 of the base asset


@dataclass(frozen=True, slots=True)
class SymbolModel:
    """Per-symbol constants: price level, phases, and the price tick (in e8 units)."""

    key: int
    level: float
    phases: tuple[float, float, float]
    tick_e8: int

    @property
    def price_decimals(self) -> int:
        return 8 - round(math.log10(self.tick_e8))


@functools.lru_cache(maxsize=1024)
def symbol_model(seed: int, symbol: str) -> SymbolModel:
    """Constants of ``symbol`` under ``seed`` (level 10 .. ~31,600, tick 1e-2 .. 1e-5)."""
    key = stable_key("qmtl-sim/v1", seed, symbol)
    u = uniform(key, 0, np.arange(4, dtype=np.int64))
    level = float(10.0 ** (1.0 + 3.5 * u[0]))
    decimals = min(8, max(2, 6 - math.floor(math.log10(level))))
    phases = (float(2 * math.pi * u[1]), float(2 * math.pi * u[2]), float(2 * math.pi * u[3]))
    return SymbolModel(key=key, level=level, phases=phases, tick_e8=10 ** (8 - decimals))


@dataclass(frozen=True, slots=True, eq=False)
class Bars:
    """Columns of Binance klines. Prices/volumes are e8 ints; ``open_time`` is epoch ms."""

    interval_ms: int
    open_time: I64
    open: I64
    high: I64
    low: I64
    close: I64
    volume: I64
    quote_volume: I64
    trades: I64
    taker_base: I64
    taker_quote: I64

    def __len__(self) -> int:
        return int(self.open_time.shape[0])

    @property
    def close_time(self) -> I64:
        """Binance's closeTime: the last millisecond of the bar (``open + interval - 1``)."""
        return self.open_time + (self.interval_ms - 1)

    def take(self, index: I64) -> Bars:
        """Rows at ``index`` (any order, repeats allowed: used to inject duplicates)."""
        return Bars(self.interval_ms, *(getattr(self, n)[index] for n in _COLUMNS))

    @staticmethod
    def concat(parts: list[Bars], interval_ms: int) -> Bars:
        if not parts:
            empty = np.empty(0, np.int64)
            return Bars(interval_ms, *(empty for _ in _COLUMNS))
        return Bars(
            interval_ms, *(np.concatenate([getattr(p, n) for p in parts]) for n in _COLUMNS)
        )

    def ohlcv(self) -> F64:
        """``(n, 6)`` float array ``[ts_ms, open, high, low, close, volume]``, the ccxt shape."""
        out = np.empty((len(self), 6), np.float64)
        out[:, 0] = self.open_time
        for j, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
            out[:, j] = getattr(self, name) / E8
        return out

    def frame(self) -> pd.DataFrame:
        """These bars as a canonical OHLCV frame (:mod:`qmtl.runtime.sdk.bars`: ``ts`` in
        epoch seconds), valued exactly as a client parsing the wire rows gets them — what a
        store holds after fetching them, for tests to compare with. Rows stay in this
        object's order (duplicates included)."""
        values = self.ohlcv()
        columns: BarColumns = {"ts": self.open_time // 1000}
        columns.update({name: values[:, j] for j, name in enumerate(PRICE_COLUMNS, start=1)})
        return frame_from_columns(columns)

    def wire_rows(self) -> list[list[object]]:
        """Binance rows as Python values (reference encoder; slow, for tests and faults)."""
        cols = {n: getattr(self, n).tolist() for n in _COLUMNS}
        close_time = self.close_time.tolist()
        return [
            [
                cols["open_time"][i],
                *(format_e8(cols[n][i]) for n in ("open", "high", "low", "close", "volume")),
                close_time[i],
                format_e8(cols["quote_volume"][i]),
                cols["trades"][i],
                format_e8(cols["taker_base"][i]),
                format_e8(cols["taker_quote"][i]),
                "0",
            ]
            for i in range(len(self))
        ]


_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trades",
    "taker_base",
    "taker_quote",
)


def format_e8(value: int) -> str:
    """``123450000`` → ``"1.23450000"`` (Binance's 8-decimal strings; value ≥ 0)."""
    return f"{value // E8}.{value % E8:08d}"


def _sigma(interval_s: int) -> float:
    return min(0.05, 0.0015 * math.sqrt(interval_s / 60.0))


def _quantise(values_e8: NDArray[np.floating[Any]], step_e8: int) -> I64:
    """``max(rint(values / step), 1) * step`` as int64 (e8 units)."""
    steps = values_e8 / step_e8
    np.rint(steps, out=steps)
    out = np.empty(steps.shape, np.int64)
    np.maximum(steps, 1.0, out=out, casting="unsafe")  # integral floats: the cast is exact
    out *= step_e8
    return out


def _rint_int(values: NDArray[np.floating[Any]]) -> I64:
    """``rint(values).astype(int64)`` in one pass."""
    out = np.empty(values.shape, np.int64)
    np.rint(values, out=out, casting="unsafe")
    return out


@dataclass(frozen=True, slots=True)
class _Series:
    """Constants of one ``(seed, symbol, interval)`` series, computed once."""

    model: SymbolModel
    interval_s: int
    origin_s: int  # bar ``i`` opens at ``origin_s + i * interval_s``
    sigma: float
    wick: float
    base_volume: float
    salts: NDArray[np.uint64]  # hash salts of streams 1..6, shape (6, 1)
    wave_freq: F64  # (3, 1): radians per second
    wave_phase: F64  # (3, 1)
    wave_amp: F64  # (3, 1)


@functools.lru_cache(maxsize=1024)
def _series(seed: int, symbol: str, interval_s: int) -> _Series:
    model = symbol_model(seed, symbol)
    key = stable_key("qmtl-sim/v1/bars", seed, symbol, interval_s)
    sigma = _sigma(interval_s)
    column = (len(_WAVES), 1)
    return _Series(
        model=model,
        interval_s=interval_s,
        origin_s=alignment_origin(interval_s),
        sigma=sigma,
        wick=0.5 * sigma + 0.0002,
        base_volume=2e5 / model.level * (interval_s / 60.0),
        salts=stream_salts(key, (1, 2, 3, 4, 5, 6)),
        wave_freq=np.array([2.0 * math.pi / period for period, _ in _WAVES]).reshape(column),
        wave_phase=np.array(model.phases).reshape(column),
        wave_amp=np.array([amp for _, amp in _WAVES]).reshape(column),
    )


def _log_price(s: _Series, tau: F64, noise_u: F64) -> F64:
    """``log(price / level)`` at boundary times ``tau`` (seconds): the slow sines, summed
    in the order of :data:`_WAVES`, plus the boundary's jitter."""
    angle = s.wave_freq * tau  # (3, m)
    angle += s.wave_phase
    np.sin(angle, out=angle)
    angle *= s.wave_amp
    log_p: F64 = angle[0] + angle[1]
    log_p += angle[2]
    log_p += s.sigma * (2.0 * noise_u - 1.0)
    return log_p


def _times(s: _Series, index: I64) -> F64:
    """Boundary ``index`` as epoch seconds (float; exact below 2**53)."""
    tau = index.astype(np.float64)
    tau *= float(s.interval_s)
    if s.origin_s:
        tau += float(s.origin_s)
    return tau


def _boundary_quotes(s: _Series, tau: F64, noise_u: F64) -> I64:
    """Prices (e8, on the tick) at boundary times ``tau``."""
    prices = np.exp(_log_price(s, tau, noise_u))
    prices *= s.model.level
    return _quantise(prices * E8, s.model.tick_e8)


def generate_bars(seed: int, symbol: str, interval_s: int, open_time_ms: I64) -> Bars:
    """Closed bars opening at ``open_time_ms`` (aligned open times, any order).

    Aligned means ``(t - alignment_origin(interval)) % interval == 0`` (ms): multiples of
    the interval from the epoch, except ``1w`` (Mondays, see
    :func:`~qmtl.runtime.sdk.node_id.alignment_origin`). Vectorised: a contiguous window
    (the usual page) costs about seventy numpy calls, whatever its length, and so do several
    windows at once; a bar's values never depend on what else is generated with it.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    s = _series(seed, symbol, interval_s)
    interval_ms = interval_s * 1000
    origin_ms = s.origin_s * 1000
    open_time_ms = np.asarray(open_time_ms, dtype=np.int64)
    n = len(open_time_ms)
    contiguous = n > 0 and bool((np.diff(open_time_ms) == interval_ms).all())
    # a contiguous window is aligned when its first bar is
    checked = open_time_ms[:1] if contiguous else open_time_ms
    if (
        bool(np.any(checked < 0))
        or bool(np.any(checked % 1000))
        or bool(misaligned(checked // 1000, interval_s).any())
    ):
        raise ValueError(
            "open times must be non-negative multiples of the interval from its "
            "alignment origin (ms)"
        )
    if contiguous:
        # n + 1 boundaries serve as opens and closes; one hash pass draws every stream
        first = int(open_time_ms[0])
        i0 = (first - origin_ms) // interval_ms
        index: I64 = np.arange(i0, i0 + n + 1, dtype=np.int64)
        u = uniform_streams(s.salts, index)  # (6, n + 1)
        quotes = _boundary_quotes(s, _times(s, index), u[0])
        o, c = quotes[:-1], quotes[1:]
        bar_u = u[1:, :n]
    else:
        # maximal runs of consecutive bars share boundaries: a run of k bars needs k + 1
        index = (open_time_ms - origin_ms) // interval_ms
        run_starts = np.zeros(n, np.int64)
        run_starts[1:] = np.diff(index) != 1
        open_at = np.cumsum(run_starts)  # bar j's open boundary is slot j + (its run number)
        open_at += np.arange(n)
        boundary = np.empty(int(open_at[-1]) + 2 if n else 0, np.int64)
        boundary[open_at] = index
        boundary[open_at + 1] = index + 1
        noise_u = uniform_streams(s.salts[:1], boundary)[0]
        quotes = _boundary_quotes(s, _times(s, boundary), noise_u)
        o, c = quotes[open_at], quotes[open_at + 1]
        bar_u = uniform_streams(s.salts[1:], index)
    return _bars(s, open_time_ms, o, c, bar_u)


def _bars(s: _Series, open_time_ms: I64, o: I64, c: I64, u: F64) -> Bars:
    """OHLCV from quantised opens/closes and the uniforms of streams 2..6 (rows of ``u``)."""
    n = len(o)
    tick = s.model.tick_e8
    extremes = np.empty((2, n), np.int64)  # top, bottom of the body
    np.maximum(o, c, out=extremes[0])
    np.minimum(o, c, out=extremes[1])
    wicks_f = extremes * s.wick
    wicks_f *= u[:2]
    wicks_f /= tick
    wicks = _rint_int(wicks_f)
    wicks *= tick
    high = extremes[0] + wicks[0]
    low = extremes[1] - wicks[1]
    np.maximum(low, tick, out=low)
    vol_f = 1.9 * u[2]
    vol_f += 0.1
    vol_f *= s.base_volume
    vol_f *= E8
    volume = _quantise(vol_f, _VOLUME_STEP_E8)
    total = o + high
    total += low
    total += c
    mean_price = np.divide(total, 4.0 * E8)  # int64 → float64 on the fly, as astype does
    quote_f = np.divide(volume, float(E8))
    quote_f *= mean_price
    quote = _rint_int(quote_f * E8)
    ratio = 0.4 * u[3]
    ratio += 0.3
    taker_base = _quantise(volume * ratio, _VOLUME_STEP_E8)
    np.minimum(taker_base, volume, out=taker_base)
    taker_quote = _rint_int(quote * ratio)
    activity = u[4] + 0.5
    trades_f = quote_f / 1000.0
    trades_f *= activity
    trades = trades_f.astype(np.int64)
    trades += 1
    return Bars(
        s.interval_s * 1000,
        open_time_ms,
        o,
        high,
        low,
        c,
        volume,
        quote,
        trades,
        taker_base,
        taker_quote,
    )


def forming_bar(seed: int, symbol: str, interval_s: int, open_time_ms: int, now_ms: int) -> Bars:
    """The still-forming bar opening at ``open_time_ms`` as seen at ``now_ms``.

    With ``f = (now - open) / interval`` in ``[0, 1)``: close drifts from open towards the
    final close with jitter that changes every second and fades as ``f → 1``; high/low widen
    towards their final values; volumes and trades grow ∝ ``f``. OHLC stays valid. A bar
    whose interval has ended is returned final (same as :func:`generate_bars`).
    """
    final = generate_bars(seed, symbol, interval_s, np.array([open_time_ms], np.int64))
    interval_ms = interval_s * 1000
    if not open_time_ms <= now_ms < open_time_ms + interval_ms:
        if now_ms < open_time_ms:
            raise ValueError("the bar has not opened yet at now_ms")
        return final
    f = (now_ms - open_time_ms) / interval_ms
    model = symbol_model(seed, symbol)
    tick = model.tick_e8
    jitter_u = uniform(
        stable_key("qmtl-sim/v1/forming", seed, symbol, interval_s),
        7,
        np.array([now_ms // 1000], np.int64),
    )
    o = final.open.astype(np.float64)
    wick = 0.5 * _sigma(interval_s) + 0.0002
    c_f = o + (final.close - o) * f + (2.0 * jitter_u - 1.0) * wick * o * (1.0 - f)
    c = _quantise(c_f, tick)
    h = np.maximum(np.maximum(final.open, c), _quantise(o + (final.high - o) * f, tick))
    low_path = _quantise(np.maximum(o - (o - final.low) * f, float(tick)), tick)
    low = np.minimum(np.minimum(final.open, c), low_path)
    volume = _quantise(final.volume * f, _VOLUME_STEP_E8) * (f > 0)
    return Bars(
        interval_ms,
        final.open_time,
        final.open,
        h,
        low,
        c,
        volume,
        np.rint(final.quote_volume * f).astype(np.int64),
        (final.trades * f).astype(np.int64),
        np.minimum(_quantise(final.taker_base * f, _VOLUME_STEP_E8) * (f > 0), volume),
        np.rint(final.taker_quote * f).astype(np.int64),
    )
