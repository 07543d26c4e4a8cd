"""Deterministic, random-access kline generation (pure: no I/O, no clock, no global state).

The bar opening at ``t`` is a pure function of ``(seed, symbol, interval, t)``: every random
quantity comes from a counter-based hash (splitmix64) of the bar index, so any window is
generated directly, in one vectorised pass, without walking from the epoch.

Price model (realism is not the point; determinism and speed are): a per-symbol level ``P0``
times ``exp`` of a few slow sines of absolute time plus per-boundary jitter. The price *at a
bar boundary* is defined once, so a bar's open equals the previous bar's close exactly.

Conventions:

- Times are epoch **milliseconds**; open times are multiples of the interval counted from the
  epoch for every interval, ``1w`` included (real Binance opens weekly bars on Mondays; the
  simulator keeps the project's ``ts % interval == 0`` convention instead).
- Prices and volumes are ``int64`` fixed point in units of ``1e-8`` ("e8"), the precision of
  Binance's decimal strings. ``e8 / 1e8`` is the correctly rounded double of the decimal
  string, so floats from :meth:`Bars.ohlcv` equal what a JSON client parses, bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

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

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
_DAY_S = 86_400.0
# slow sines of absolute time: (period seconds, amplitude in log-price)
_WAVES = ((30 * _DAY_S, 0.25), (3 * _DAY_S, 0.06), (6 * 3600.0, 0.015))
_VOLUME_STEP_E8 = 1_000  # volumes are quantised to 1e-5 of the base asset


@functools.lru_cache(maxsize=4096)
def _key(*parts: object) -> int:
    """A stable 64-bit key (sha256, never Python's salted ``hash``)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    # splitmix64 finaliser; uint64 array arithmetic wraps silently, which is what we want
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _uniforms(key: int, streams: tuple[int, ...], index: I64) -> F64:
    """U[0, 1), shape ``(len(streams), len(index))``: one independent draw per stream and
    index, all streams hashed in a single pass."""
    salts = np.array([(key ^ (s * 0xD1B54A32D192ED03)) & _MASK64 for s in streams], np.uint64)
    x = _mix(index.astype(np.uint64)[None, :] * _GOLDEN + salts[:, None])
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _uniform(key: int, stream: int, index: I64) -> F64:
    """U[0, 1) per element of ``index``, independent across ``stream`` values."""
    out: F64 = _uniforms(key, (stream,), index.reshape(-1))[0].reshape(index.shape)
    return out


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
    key = _key("qmtl-sim/v1", seed, symbol)
    u = _uniform(key, 0, np.arange(4, dtype=np.int64))
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


def _boundary_price(model: SymbolModel, noise_key: int, interval_s: int, index: I64) -> F64:
    """Price at the boundaries ``index * interval`` (float, before quantisation)."""
    tau = index.astype(np.float64) * float(interval_s)
    log_p = np.zeros(index.shape, np.float64)
    for (period, amp), phase in zip(_WAVES, model.phases, strict=True):
        log_p += amp * np.sin(tau * (2.0 * math.pi / period) + phase)
    log_p += _sigma(interval_s) * (2.0 * _uniform(noise_key, 1, index) - 1.0)
    return model.level * np.exp(log_p)


def _quantise(values_e8: NDArray[np.floating[Any]], step_e8: int) -> I64:
    steps = np.maximum(np.rint(values_e8 / step_e8), 1.0)
    return steps.astype(np.int64) * step_e8


def generate_bars(seed: int, symbol: str, interval_s: int, open_time_ms: I64) -> Bars:
    """Closed bars opening at ``open_time_ms`` (multiples of the interval, any order).

    Vectorised: cost is a few dozen numpy passes over ``len(open_time_ms)``.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    interval_ms = interval_s * 1000
    open_time_ms = np.asarray(open_time_ms, dtype=np.int64)
    if open_time_ms.size and (np.any(open_time_ms % interval_ms) or np.any(open_time_ms < 0)):
        raise ValueError("open times must be non-negative multiples of the interval (ms)")
    model = symbol_model(seed, symbol)
    noise_key = _key("qmtl-sim/v1/bars", seed, symbol, interval_s)
    index = open_time_ms // interval_ms
    n = len(index)
    if n and int(index[-1]) - int(index[0]) == n - 1 and bool(np.all(np.diff(index) == 1)):
        # a contiguous window (the usual page): n + 1 boundaries serve as opens and closes
        prices = _boundary_price(model, noise_key, interval_s, np.arange(index[0], index[-1] + 2))
        p_open, p_close = prices[:-1], prices[1:]
    else:
        prices = _boundary_price(model, noise_key, interval_s, np.concatenate([index, index + 1]))
        p_open, p_close = prices[:n], prices[n:]
    tick = model.tick_e8
    o = _quantise(p_open * E8, tick)
    c = _quantise(p_close * E8, tick)
    u = _uniforms(noise_key, (2, 3, 4, 5, 6), index)
    wick = 0.5 * _sigma(interval_s) + 0.0002
    top = np.maximum(o, c)
    bottom = np.minimum(o, c)
    up = np.rint(top * wick * u[0] / tick).astype(np.int64) * tick
    down = np.rint(bottom * wick * u[1] / tick).astype(np.int64) * tick
    high = top + up
    low = np.maximum(bottom - down, tick)
    base_volume = 2e5 / model.level * (interval_s / 60.0)
    vol_f = base_volume * (0.1 + 1.9 * u[2])
    volume = _quantise(vol_f * E8, _VOLUME_STEP_E8)
    mean_price = (o + high + low + c).astype(np.float64) / (4.0 * E8)
    quote_f = volume.astype(np.float64) / E8 * mean_price
    quote = np.rint(quote_f * E8).astype(np.int64)
    ratio = 0.3 + 0.4 * u[3]
    taker_base = _quantise(volume * ratio, _VOLUME_STEP_E8)
    taker_base = np.minimum(taker_base, volume)
    taker_quote = np.rint(quote * ratio).astype(np.int64)
    trades = (quote_f / 1000.0 * (0.5 + u[4])).astype(np.int64) + 1
    return Bars(
        interval_ms, open_time_ms, o, high, low, c, volume, quote, trades, taker_base, taker_quote
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
    jitter_u = _uniform(
        _key("qmtl-sim/v1/forming", seed, symbol, interval_s),
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
