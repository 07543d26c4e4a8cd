"""Counter-based random numbers for the bar generator (pure, vectorised, no state).

A draw is ``splitmix64(index * golden + salt)``: the same ``(key, stream, index)`` gives the
same number on every machine and in any order, which is what makes bars random-access. Salts
separate streams (``key ^ stream * c``); keys come from :func:`stable_key` (sha256, never
Python's salted ``hash``). uint64 array arithmetic wraps silently, which the finaliser needs.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from numpy.typing import NDArray

__all__ = ["stable_key", "stream_salts", "uniform", "uniform_streams"]

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
U64 = NDArray[np.uint64]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ROUNDS = ((30, np.uint64(0xBF58476D1CE4E5B9)), (27, np.uint64(0x94D049BB133111EB)))
_LAST_SHIFT = np.uint64(31)
_STREAM = 0xD1B54A32D192ED03
_MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=4096)
def stable_key(*parts: object) -> int:
    """A stable 64-bit key of ``parts`` (their ``str`` joined by ``|``)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def stream_salts(key: int, streams: tuple[int, ...]) -> U64:
    """The salts of ``streams`` under ``key``, shape ``(len(streams), 1)``."""
    salts = [(key ^ (s * _STREAM)) & _MASK64 for s in streams]
    return np.array(salts, np.uint64).reshape(-1, 1)


def uniform_streams(salts: U64, index: I64) -> F64:
    """U[0, 1) of shape ``(len(salts), len(index))``: one draw per stream and index, every
    stream hashed in one pass (53 random bits, so ``u * 2**53`` is an exact integer)."""
    x = index.astype(np.uint64) * _GOLDEN + salts
    shifted = np.empty_like(x)
    for shift, mult in _ROUNDS:
        np.right_shift(x, np.uint64(shift), out=shifted)
        x ^= shifted
        x *= mult
    np.right_shift(x, _LAST_SHIFT, out=shifted)
    x ^= shifted
    x >>= np.uint64(11)
    out: F64 = x.astype(np.float64)
    out *= 1.0 / (1 << 53)
    return out


def uniform(key: int, stream: int, index: I64) -> F64:
    """U[0, 1) per element of ``index`` (any shape), independent across ``stream`` values."""
    flat = uniform_streams(stream_salts(key, (stream,)), index.reshape(-1))
    out: F64 = flat[0].reshape(index.shape)
    return out
